"""Few-shot fine-tuning on the real β-gal micrographs: generic head vs fine-tuned heads, full vs 10 % labels.

Fine-tunes heads on two of the three bundled EMPIAR-10017 micrographs and picks the third with
each, scoring AP (hydrapicker.evaluate) against the third's full labels:

- ``generic``: the base model's generic head, before fine-tuning (zero-shot on β-gal only if
  the base model never saw β-gal: name the base model honestly when quoting the figure);
- ``full``: every label of the two micrographs, ``--labels complete``;
- ``plain10``: a random 10 % of their labels, every unlabelled anchor background (plain focal loss);
- ``pu10``: the same 10 %, positive-unlabelled loss, particles per micrograph estimated from the
  generic head's picks (what a user gets by default);
- ``pu10-true``: the same, with the true particle count per micrograph given (--expected-particles).

Besides AP (a ranking measure), each head's picks at the default threshold are scored: recall
and precision there show what the scale of its scores does for a user. Each run's wall time is
printed; a run whose checkpoint exists in OUT is evaluated again, not retrained (--retrain). Validation (no val micrograph: the third is the test) uses fixed
crops of the training micrographs.

Usage:
  .venv/bin/python benchmarks/finetune_partial_labels.py --model /tmp/ft/base/model.pt --out /tmp/ft/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hydrapicker.bundled import bundled_datasets
from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.defaults import GENERIC, PICK_THRESHOLD
from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks, read_micrograph, write_picks
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.picker import PickSettings, pick_micrograph
from hydrapicker.training.config import FinetuneConfig
from hydrapicker.training.finetune import finetune, labelled_micrographs

RUNS = ("generic", "full", "plain10", "pu10", "pu10-true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="base checkpoint (not trained on β-gal)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="labels kept in the partial runs (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batches-per-epoch", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument(
        "--retrain", action="store_true", help="fine-tune again where OUT/RUN.pt exists (default: evaluate it)"
    )
    parser.add_argument(
        "--results", default="results.json", help="file name of the summary in OUT (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    bgal = next(d for d in bundled_datasets() if d.name == "empiar10017_bgal_bin4")
    mics = bgal.micrographs()
    train_mics, test_mic = mics[:2], mics[2]
    truth = bgal.labels()
    diameter_A = bgal.box_size * bgal.pixel_size
    args.out.mkdir(parents=True, exist_ok=True)

    # The partial labels: one random subset per micrograph, the same for every partial run.
    rng = np.random.default_rng(args.seed)
    partial_dir = args.out / "labels10"
    partial_dir.mkdir(exist_ok=True)
    for mic in train_mics:
        full = truth[mic.stem]
        keep = np.sort(rng.choice(len(full), size=max(1, round(args.fraction * len(full))), replace=False))
        write_picks(
            partial_dir / f"{mic.stem}.csv", Picks(mic.stem, full.x[keep], full.y[keep], np.ones(len(keep))), "csv"
        )
    full_coords = [m.with_suffix(".csv") for m in train_mics]
    partial_coords = [partial_dir / f"{m.stem}.csv" for m in train_mics]

    test_image = read_micrograph(test_mic).data
    test_truth = {test_mic.stem: truth[test_mic.stem]}

    def scores(checkpoint: Path, head: str) -> dict:
        # AP ranks every pick; at the default threshold a user sees what the scores' scale does.
        model, meta = load_checkpoint(checkpoint)
        picks = pick_micrograph(
            model,
            meta,
            test_image,
            PickSettings(ParticleSize(diameter_A=diameter_A, pixel_size=bgal.pixel_size), head=head, threshold=0.001),
            name=test_mic.stem,
        )
        kept = picks.score >= PICK_THRESHOLD
        at_default = evaluate(
            {test_mic.stem: Picks(test_mic.stem, picks.x[kept], picks.y[kept], picks.score[kept])},
            test_truth,
            bgal.box_size,
        )
        return {
            "ap": evaluate({test_mic.stem: picks}, test_truth, bgal.box_size).ap,
            "picks_at_default_threshold": int(kept.sum()),
            "recall_at_default_threshold": at_default.tp / max(at_default.n_true, 1),
            "precision_at_default_threshold": at_default.tp / max(int(kept.sum()), 1),
        }

    results: dict[str, dict] = {}
    for run in args.runs:
        if run == "generic":
            results[run] = {**scores(args.model, GENERIC), "seconds": 0.0}
            print(f"{run:10s} AP {results[run]['ap']:.3f}", flush=True)
            continue
        coords = full_coords if run == "full" else partial_coords
        data = labelled_micrographs(
            run.replace("-", "_"),
            train_mics,
            coords,
            size=ParticleSize(diameter_A=diameter_A, pixel_size=bgal.pixel_size),
        )
        expected = None
        if run == "pu10-true":
            expected = float(np.mean([len(truth[m.stem]) for m in train_mics]))
        config = FinetuneConfig(
            name=data.spec.name,
            epochs=args.epochs,
            batches_per_epoch=args.batches_per_epoch,
            val_batches=args.val_batches,
            lr=args.lr,
            labels="partial" if run.startswith("pu") else "complete",
            expected_particles=expected,
            seed=args.seed,
            threads=args.threads,
        )
        out = args.out / f"{run}.pt"
        t0 = time.perf_counter()
        if out.exists() and not args.retrain:
            seconds = None  # finished earlier: evaluated again, not retrained
        else:
            finetune(
                data,
                out,
                config,
                model_path=args.model,
                resume=(out.parent / f"{run}.finetune" / "last.pt").exists(),
                overwrite=args.retrain,
                say=lambda line: print(f"  [{run}] {line}", flush=True),
            )
            seconds = time.perf_counter() - t0
        record = json.loads((out.parent / f"{run}.finetune" / "finetune.json").read_text())
        results[run] = {
            **scores(out, data.spec.name),
            "seconds": seconds,
            "expected_particles": record["expected_particles"],
            "labelled": record["labelled_particles"],
        }
        print(f"{run:10s} AP {results[run]['ap']:.3f}  ({seconds or float('nan'):.0f} s)", flush=True)

    summary = {
        "base_model": str(args.model),
        "test_micrograph": test_mic.stem,
        "train_micrographs": [m.stem for m in train_mics],
        "true_particles": {m.stem: len(truth[m.stem]) for m in mics},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    (args.out / args.results).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\non {test_mic.stem} (full labels): AP; at the default threshold {PICK_THRESHOLD}: picks, recall, precision"
    )
    for run, r in results.items():
        print(
            f"  {run:10s} AP {r['ap']:.3f}   {r['picks_at_default_threshold']:4d} picks, recall {r['recall_at_default_threshold']:.3f}, "
            f"precision {r['precision_at_default_threshold']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
