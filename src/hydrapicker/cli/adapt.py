"""Zero-label adaptation: a new head for a new dataset from its unlabelled micrographs.

Each round picks the micrographs (first with the generic head, then with the head of the round
before), takes the confident picks as particles and the confidently empty places as background,
leaves everything else unlabelled, and trains head NAME from the generic head (trunk and generic
head frozen) with a positive-unlabelled loss. Each round prints how many pseudo-labels it used and
how the picks changed. Pick with it: `hydrapicker pick ... --model OUT --head NAME`.

The run record (settings, per-round numbers) goes to OUT without .pt plus .adapt/adapt.json.

Example:
  hydrapicker adapt mics/*.mrc --name mysample --diameter-A 150 --out mysample.pt --rounds 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hydrapicker.adapt import AdaptConfig

    defaults = AdaptConfig(name="x")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("micrographs", nargs="+", metavar="MICROGRAPHS", help="unlabelled micrographs: files, folders or globs")
    inputs.add_argument("--model", type=Path, metavar="CKPT", help="base checkpoint (default: the shipped generic model)")
    inputs.add_argument("--name", required=True, help="name of the new head (the dataset)")
    inputs.add_argument("--out", type=Path, required=True, metavar="CKPT", help="the checkpoint to write (.pt)")
    add_particle_size_arguments(parser, "Å per pixel (default: from the MRC header)")
    labels = parser.add_argument_group("pseudo-labels")
    labels.add_argument("--rounds", type=int, default=defaults.rounds, help="pick / pseudo-label / train rounds (default: %(default)s)")
    labels.add_argument("--prior-threshold", type=float, default=defaults.prior_threshold,
                        help="picks scoring at least this are the particles a micrograph is taken to hold (default: %(default)s)")  # fmt: skip
    labels.add_argument("--positive-quantile", type=float, default=defaults.positive_quantile,
                        help="positives: those picks scoring at or above this quantile of their scores (default: %(default)s)")  # fmt: skip
    labels.add_argument("--negative-quantile", type=float, default=defaults.negative_quantile,
                        help="negatives: anchors in this lowest share of scores, far from every particle pick (default: %(default)s)")  # fmt: skip
    labels.add_argument("--max-micrographs", type=int, default=defaults.max_micrographs,
                        help="adapt on at most this many micrographs, evenly spaced (default: %(default)s)")  # fmt: skip
    labels.add_argument("--turns", type=int, default=defaults.turns, choices=(1, 2, 3, 4),
                        help="quarter turns the teacher's picks are averaged over; 4 costs about 4x the picking (default: %(default)s)")  # fmt: skip
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--steps", type=int, default=defaults.steps, help="mini-batches per round (default: %(default)s)")
    schedule.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.adapt import AdaptConfig, adapt, run_folder
    from hydrapicker.cli._common import write_run_record

    config = AdaptConfig(
        name=args.name, rounds=args.rounds, prior_threshold=args.prior_threshold, positive_quantile=args.positive_quantile,
        negative_quantile=args.negative_quantile, max_micrographs=args.max_micrographs, turns=args.turns, steps=args.steps, lr=args.lr,
        seed=args.seed, threads=args.threads,
    )  # fmt: skip
    report = adapt(args.micrographs, args.out, config, diameter_px=args.diameter_px, diameter_A=args.diameter_A,
                   pixel_size=args.pixel_size, model_path=args.model)  # fmt: skip
    write_run_record(run_folder(args.out), args)
    print(f"Model: {Path(report.checkpoint).resolve()} (pick with --model {args.out} --head {args.name}); "
          f"{report.seconds:.0f} s; record in {run_folder(args.out)}")  # fmt: skip
    return 0
