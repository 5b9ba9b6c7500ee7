"""Zero-label adaptation on the real micrographs: generic head vs adapted head, AP with hydrapicker.evaluate.

Labels are never shown to ``adapt``; they only score. Sets (``src/hydrapicker/assets/real``,
copies of ``shared/data/real``, which holds nothing more):

- ``bgal``: EMPIAR-10017, 3 micrographs. Leave-one-out: adapt on two, pick the third with the
  generic and the adapted head; AP of the three held-out micrographs pooled (each picked by the
  head that did not see it). Also ``bgal-all``: adapt on all three, score all three.
- ``t20s``: EMPIAR-10025, 1 micrograph: adapt on it and score it (nothing to hold out).
  Its labels are partial (283 of the particles), so unlabelled true particles count as false
  positives and AP is a lower bound for both heads (``evaluate --ignore-unlabelled`` is about
  micrographs without a truth file, not about unlabelled particles, so it does not apply).

Scoring as ``scripts/zero_shot_real.sh``: picks down to score 0.001, box 27 px (β-gal) / 18 px
(T20S), IoU 0.6, all-point AP (:func:`hydrapicker.evaluate.evaluate`).

Usage:
  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/adapt_real.py --out /tmp/adapt-real [--rounds 2] [--steps 150] [--sets bgal t20s]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hydrapicker.adapt import AdaptConfig, adapt
from hydrapicker.evaluate import evaluate
from hydrapicker.io import read_micrograph, read_picks
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.model import GENERIC
from hydrapicker.pick import load_picking_model, pick_micrograph

REAL = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets" / "real"
SETS = {
    # name: folder, diameter Å, pixel size Å/px, box px
    "bgal": (REAL / "empiar10017_bgal_bin4", 191.0, 7.08, 27.0),
    "t20s": (REAL / "empiar10025_t20s_1mic", 142.0, 7.9, 18.0),
}


def _truth(folder: Path, paths: list[Path]) -> dict:
    truth = {}
    for path in paths:
        stem = micrograph_stem(path)
        truth.update(read_picks(folder / f"{stem}.csv", "csv", micrograph=stem, shape=read_micrograph(path).shape))
    return truth


def _picks(checkpoint: Path | None, head: str, paths: list[Path], diameter: float, pixel: float) -> dict:
    model, meta = load_picking_model(checkpoint)
    return {
        micrograph_stem(p): pick_micrograph(model, meta, read_micrograph(p).data, pixel, diameter_A=diameter, head=head,
                                            threshold=0.001, name=micrograph_stem(p))  # fmt: skip
        for p in paths
    }


def _adapt(out: Path, paths: list[Path], diameter: float, pixel: float, config: AdaptConfig, model: Path | None) -> tuple[Path, dict]:
    checkpoint = out / f"{config.name}.pt"
    report = adapt(paths, checkpoint, config, diameter_A=diameter, pixel_size=pixel, model_path=model)
    return checkpoint, {"seconds": report.seconds, "rounds": [asdict(r) for r in report.rounds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="base checkpoint (default: the shipped generic model)")
    parser.add_argument("--sets", nargs="+", choices=("bgal", "bgal-all", "t20s"), default=["bgal", "bgal-all", "t20s"])
    parser.add_argument("--rounds", type=int, default=AdaptConfig(name="x").rounds)
    parser.add_argument("--steps", type=int, default=AdaptConfig(name="x").steps)
    parser.add_argument("--positive-quantile", type=float, default=AdaptConfig(name="x").positive_quantile)
    parser.add_argument("--negative-quantile", type=float, default=AdaptConfig(name="x").negative_quantile)
    parser.add_argument("--prior-threshold", type=float, default=AdaptConfig(name="x").prior_threshold)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def config(name: str) -> AdaptConfig:
        return AdaptConfig(name=name, rounds=args.rounds, steps=args.steps, positive_quantile=args.positive_quantile,
                           negative_quantile=args.negative_quantile, prior_threshold=args.prior_threshold,
                           seed=args.seed, threads=args.threads)  # fmt: skip

    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "sets": {}}
    for name in args.sets:
        folder, diameter, pixel, box = SETS[name.split("-")[0]]
        paths = sorted(folder.glob("*.png"))
        truth = _truth(folder, paths)
        t0 = time.perf_counter()
        generic = _picks(args.model, GENERIC, paths, diameter, pixel)
        adapted, runs = {}, {}
        if name == "bgal":  # leave one out
            for held in paths:
                rest = [p for p in paths if p != held]
                stem = micrograph_stem(held)
                checkpoint, runs[stem] = _adapt(args.out / f"bgal-without-{stem}", rest, diameter, pixel, config("bgal"), args.model)
                adapted.update(_picks(checkpoint, "bgal", [held], diameter, pixel))
        else:
            head = name.replace("-", "_")
            checkpoint, runs["all"] = _adapt(args.out / name, paths, diameter, pixel, config(head), args.model)
            adapted = _picks(checkpoint, head, paths, diameter, pixel)
        row = {}
        for label, picks in (("generic", generic), ("adapted", adapted)):
            ev = evaluate(picks, truth, box)
            row[label] = {"ap": ev.ap, "auroc": ev.auroc, "best_f1": ev.best_f1, "picks_at_0.25": int(sum(np.sum(p.score >= 0.25) for p in picks.values())),
                          "per_micrograph_ap": {k: v.ap for k, v in ev.per_micrograph.items()}}  # fmt: skip
        row["adapt_runs"] = runs
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["load_average"] = os.getloadavg()
        results["sets"][name] = row
        g, a = row["generic"]["per_micrograph_ap"], row["adapted"]["per_micrograph_ap"]
        each = ", ".join(f"{g[k]:.3f}->{a[k]:.3f}" for k in truth)
        print(f"{name:9s} generic AP {row['generic']['ap']:.3f}  adapted AP {row['adapted']['ap']:.3f}  "
              f"(per micrograph: {each}; {row['seconds']:.0f} s, load {row['load_average'][0]:.1f})", flush=True)  # fmt: skip
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
