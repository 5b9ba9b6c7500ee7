"""Zero-label adaptation: a new head for a new dataset from its unlabelled micrographs.

The generic head scores every place of the micrographs averaged over their four quarter turns (a
better picker than its single pass, at four times the cost); head NAME, started from the generic
head (trunk and generic head frozen), learns to give those scores and offsets in one pass. More
rounds let the new head teach the next one the same way. Each round prints how many particles
the teacher taught and how the picks changed. Pick with it: `hydrapicker pick ... --model OUT --head NAME`.

The run record (settings, per-round numbers) goes to OUT without .pt plus .adapt/adapt.json.

Example:
  hydrapicker adapt mics/*.mrc --name mysample --diameter-A 150 --out mysample.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hydrapicker.training.config import AdaptConfig

    defaults = AdaptConfig(name="x")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "micrographs", nargs="+", metavar="MICROGRAPHS", help="unlabelled micrographs: files, folders or globs"
    )
    inputs.add_argument(
        "--model", type=Path, metavar="CKPT", help="base checkpoint (default: the shipped generic model)"
    )
    inputs.add_argument("--name", required=True, help="name of the new head (the dataset)")
    inputs.add_argument("--out", type=Path, required=True, metavar="CKPT", help="the checkpoint to write (.pt)")
    add_particle_size_arguments(parser, "Å per pixel (default: from the MRC header)")
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="teach / train rounds (default: %(default)s)"
    )
    teacher.add_argument(
        "--turns",
        type=int,
        default=defaults.turns,
        choices=(1, 2, 3, 4),
        help="quarter turns the teacher's scores are averaged over; each costs a trunk pass (default: %(default)s)",
    )
    teacher.add_argument(
        "--teacher-threshold",
        type=float,
        default=defaults.teacher_threshold,
        help="teacher picks scoring at least this are the particles it teaches, as reported (default: %(default)s)",
    )
    teacher.add_argument(
        "--max-micrographs",
        type=int,
        default=defaults.max_micrographs,
        help="adapt on at most this many micrographs, evenly spaced (default: %(default)s)",
    )
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument(
        "--steps", type=int, default=defaults.steps, help="mini-batches per round (default: %(default)s)"
    )
    schedule.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    run.add_argument("--overwrite", action="store_true", help="replace the checkpoint at --out")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.cli._common import particle_size, write_run_record
    from hydrapicker.training.adapt import adapt, run_folder
    from hydrapicker.training.config import AdaptConfig

    config = AdaptConfig(
        name=args.name,
        rounds=args.rounds,
        turns=args.turns,
        teacher_threshold=args.teacher_threshold,
        max_micrographs=args.max_micrographs,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
    )
    report = adapt(
        args.micrographs, args.out, config, model_path=args.model, size=particle_size(args), overwrite=args.overwrite
    )
    write_run_record(run_folder(args.out), args)
    print(
        f"Model: {Path(report.checkpoint).resolve()} (pick with --model {args.out} --head {args.name}); "
        f"{report.seconds:.0f} s; record in {run_folder(args.out)}"
    )
    return 0
