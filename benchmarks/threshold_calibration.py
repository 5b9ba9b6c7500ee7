"""Experiment for issue 20: a threshold suggestion from a score calibration measured on other sets.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_calibration.py --work /tmp/threshold_rule

1. Calibration: the shipped model picks the validation suite's simulated sets
   (benchmarks/validate.py: unseen 1jnb / 6msm, seven targets, packed 4v1w; made into
   data-generated/validation if missing) at default settings, and each candidate is matched to
   the truth (IoU 0.6). Pooled over those sets: the share of true candidates per score bin of
   0.02, made non-decreasing in the score (running maximum).
2. On each set of benchmarks/threshold_rule.py (picked there into ``--work``; run it first),
   which the calibration never saw: every candidate's calibrated probability ``p``, and the
   threshold that maximises the expected F1, ``2 sum(p of kept) / (kept + sum(p of all))``.
   Once as calibrated, once after a prior shift (Saerens et al. 2002: the set's share of true
   candidates found by EM, each ``p`` re-weighted from the calibration sets' share to it).
3. Prints each set's gap: best F1 - F1 at that threshold (the measure of threshold_rule.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from threshold_rule import f1_at, labelled_sets
from validate import _pick_all, _picker, simulated_sets

from hydrapicker import checkpoint
from hydrapicker.evaluate import evaluate
from hydrapicker.io import read_picks
from hydrapicker.threshold import expected_f1_threshold, read_candidates

EDGES = np.linspace(0.0, 1.0, 51)
CENTRES = (EDGES[:-1] + EDGES[1:]) / 2


def calibration(model_path: Path | None) -> tuple[np.ndarray, float]:
    """Share of true candidates per score bin (non-decreasing), and the overall share, on the suite's simulated sets."""
    model, meta = checkpoint.load_checkpoint(model_path) if model_path else checkpoint.load_model(None)
    true_per_bin, picks_per_bin = np.zeros(len(CENTRES)), np.zeros(len(CENTRES))
    for labelled in simulated_sets():
        picker = _picker(model, meta, diameter_A=labelled.diameter_A, pixel_size=labelled.pixel_size)
        picks, _ = _pick_all(picker, list(labelled.micrographs))
        truth = {}
        for path in labelled.truth:
            truth.update(read_picks(path, "star", micrograph=path.stem))
        scored = evaluate(picks, {name: truth[name] for name in picks if name in truth}, labelled.box_px)
        # The curve's counts at each distinct score, back to per-score increments.
        n_true = sum(len(truth[name]) for name in picks if name in truth)
        true_kept = scored.recall * n_true
        kept = np.where(scored.precision > 0, true_kept / np.maximum(scored.precision, 1e-12), 0.0)
        bins = np.clip(np.digitize(scored.thresholds, EDGES) - 1, 0, len(CENTRES) - 1)
        np.add.at(true_per_bin, bins, np.diff(true_kept, prepend=0.0))
        np.add.at(picks_per_bin, bins, np.diff(kept, prepend=0.0))
        print(f"  calibration set {labelled.name}: AP {scored.ap:.3f}", flush=True)
    share = np.where(picks_per_bin > 0, true_per_bin / np.maximum(picks_per_bin, 1e-9), 0.0)
    return np.maximum.accumulate(share), float(true_per_bin.sum() / picks_per_bin.sum())


def prior_shifted(p: np.ndarray, prior: float, iterations: int = 100) -> np.ndarray:
    share = prior
    for _ in range(iterations):
        true, false = share / prior * p, (1 - share) / (1 - prior) * (1 - p)
        posterior = true / np.maximum(true + false, 1e-12)
        share = float(posterior.mean())
    return posterior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="benchmarks/threshold_rule.py's --work folder")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped generic model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    share, prior = calibration(args.model)
    print("calibration (score: share true):", " ".join(f"{c:.2f}:{s:.2f}" for c, s in zip(CENTRES[::5], share[::5])))
    print(f"share of true candidates over the calibration sets: {prior:.3f}")
    print("\n| set | best F1 | at | calibrated: threshold | gap | prior-shifted: threshold | gap |")
    print("|---|---|---|---|---|---|---|")
    worst = [0.0, 0.0]
    for labelled in labelled_sets(args.work):
        candidates = read_candidates(args.work / f"generic-{labelled.name}")
        scored = evaluate(candidates, {name: labelled.truth[name] for name in candidates}, labelled.box)
        scores = np.concatenate([c.score for c in candidates.values()])
        p = np.interp(scores, CENTRES, share)
        row = f"| {labelled.name} | {scored.best_f1:.3f} | {scored.best_threshold:.3f} |"
        for i, probabilities in enumerate((p, prior_shifted(p, prior))):
            threshold = expected_f1_threshold(scores, probabilities)
            gap = scored.best_f1 - f1_at(scored, threshold)
            worst[i] = max(worst[i], gap)
            row += f" {threshold:.3f} | {gap:.3f} |"
        print(row)
    print(f"\nlargest gap: calibrated {worst[0]:.3f}, prior-shifted {worst[1]:.3f}")


if __name__ == "__main__":
    main()
