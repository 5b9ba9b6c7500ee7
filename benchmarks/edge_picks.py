"""What dropping edge picks (the default since issue 20) does to AP: each labelled set picked with and without
``--keep-edge-picks`` and scored against all its labels, edge particles included.

The sets are benchmarks/threshold_rule.py's (bundled β-gal and T20S, five small simulated sets); the
default-run picks are shared with it (``--work`` the same folder).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edge_picks.py --work /tmp/threshold_rule
"""

from __future__ import annotations

import argparse
from pathlib import Path

from threshold_rule import labelled_sets, model_hash, pick

from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks
from hydrapicker.threshold import read_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    rows = [
        f"generic = the shipped model, git hash-object {model_hash(None)}; AP over every candidate (>= 0.01)",
        "",
        "| set | particles | within half a box of the edge | AP, edge picks dropped (default) | AP, --keep-edge-picks | "
        "same, edge particles out of the truth (dropped / kept) | candidates dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for sets in labelled_sets(args.work):
        scored = {}
        for label, extra in (("drop", ()), ("keep", ("--keep-edge-picks",))):
            out = pick(
                sets,
                None,
                args.work / f"generic-{sets.name}" if label == "drop" else args.work / f"keep-{sets.name}",
                *extra,
            )
            candidates = read_candidates(out)
            scored[label] = (evaluate(candidates, {s: sets.truth[s] for s in candidates}, sets.box), candidates)
        near, inner = 0, {}
        for stem, truth in sets.truth.items():
            rows_, cols = scored["keep"][1][stem].shape
            h = sets.box / 2
            edge = (
                (truth.x - h < -0.5) | (truth.y - h < -0.5) | (truth.x + h > cols - 0.5) | (truth.y + h > rows_ - 0.5)
            )
            near += int(edge.sum())
            inner[stem] = Picks(stem, truth.x[~edge], truth.y[~edge], truth.score[~edge], truth.box_size, truth.shape)
        without = {k: evaluate(scored[k][1], {s: inner[s] for s in scored[k][1]}, sets.box).ap for k in scored}
        n_drop = sum(len(p) for p in scored["drop"][1].values())
        n_keep = sum(len(p) for p in scored["keep"][1].values())
        rows.append(
            f"| {sets.name} | {sum(len(t) for t in sets.truth.values())} | {near} | {scored['drop'][0].ap:.3f} | "
            f"{scored['keep'][0].ap:.3f} | {without['drop']:.3f} / {without['keep']:.3f} | {n_keep - n_drop} of {n_keep} |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
