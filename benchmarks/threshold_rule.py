"""How good is `hydrapicker threshold`'s suggestion? F1 at the suggested threshold vs the best F1, on labelled micrographs.

For each labelled set (the bundled EMPIAR-10017 β-gal micrographs, 27-px boxes, and the T20S one,
18-px boxes) and each model: ``hydrapicker pick`` at the default threshold (so OUT/candidates/
holds every candidate down to CANDIDATE_FLOOR), then, from the candidates alone, the suggested
threshold (:func:`hydrapicker.threshold.suggest_threshold`) and, against the labels
(:func:`hydrapicker.evaluate.evaluate`, all micrographs of a set pooled): the best F1 and its
threshold, and F1 at the suggestion and at the default PICK_THRESHOLD. The suggestion never
sees the labels. Per micrograph as well, each with its own suggestion.

Usage (about 1 min per model on a busy 2-core machine):
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_rule.py --work /tmp/threshold_rule [--model NAME=CKPT ...]

The shipped generic model is always included ("generic"); a --model trained on β-gal (e.g.
benchmarks/pick_real/train.py's) is scored on β-gal only, and its figures are training-set figures
for the micrographs it was trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hydrapicker.cli import main as cli
from hydrapicker.defaults import PICK_THRESHOLD
from hydrapicker.evaluate import Evaluation, evaluate
from hydrapicker.io import read_picks
from hydrapicker.threshold import read_candidates, suggest_threshold

ASSETS = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets" / "real"
SETS = {  # name: (folder, particle diameter = box, in px)
    "bgal": (ASSETS / "empiar10017_bgal_bin4", 27.0),
    "t20s": (ASSETS / "empiar10025_t20s_1mic", 18.0),
}


def f1_at(evaluation: Evaluation, threshold: float) -> float:
    """F1 of the picks with score >= ``threshold`` (the operating point at or just above it)."""
    kept = np.flatnonzero(evaluation.thresholds >= threshold)
    if not len(kept):
        return 0.0
    p, r = evaluation.precision[kept[-1]], evaluation.recall[kept[-1]]
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def run(name: str, model: Path | None, dataset: str, work: Path) -> list[str]:
    folder, box = SETS[dataset]
    out = work / f"{name}-{dataset}"
    argv = ["pick", str(folder), "--out", str(out), "--diameter-px", f"{box:g}", "--format", "csv", "--workers", "1"]
    if cli(argv + (["--model", str(model)] if model else [])) != 0:
        raise SystemExit(f"picking {dataset} with {name} failed")
    candidates = read_candidates(out)
    truth = {p.stem: read_picks(p, "csv", micrograph=p.stem)[p.stem] for p in sorted(folder.glob("*.csv"))}
    rows = []
    for label, subset in [("all", candidates)] + (
        [(s, {s: c}) for s, c in candidates.items()] if len(candidates) > 1 else []
    ):
        scored = evaluate(subset, {s: truth[s] for s in subset}, box)
        suggested = suggest_threshold(subset)
        rows.append(
            f"| {name} | {dataset} | {label if label == 'all' else label[-20:]} | {scored.ap:.3f} | {scored.best_f1:.3f} | "
            f"{scored.best_threshold:.3f} | {suggested:.3f} | {f1_at(scored, suggested):.3f} | {f1_at(scored, PICK_THRESHOLD):.3f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the pick outputs")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=CKPT", help="another model, scored on β-gal only"
    )
    args = parser.parse_args()
    rows = [
        "| model | set | micrographs | AP | best F1 | at score | suggested | F1 there | F1 at default "
        f"{PICK_THRESHOLD:g} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in SETS:
        rows += run("generic", None, dataset, args.work)
    for spec in args.model:
        name, _, path = spec.partition("=")
        rows += run(name, Path(path), "bgal", args.work)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
