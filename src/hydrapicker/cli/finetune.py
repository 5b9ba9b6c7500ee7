"""Few-shot: add a head for a new dataset from a few labelled micrographs, trunk and other heads frozen.

The new head NAME starts as a copy of the generic head and is the only part trained (Adam, one
cosine schedule); the checkpoint kept is the epoch with the lowest validation loss, measured on
--val-micrographs, or else on fixed crops of the training micrographs (the log says which).
Pick with it: `hydrapicker pick ... --model OUT --head NAME`.

Coordinate files are matched to micrographs by file stem (mic_001.mrc <- mic_001.star), or one
file (a RELION STAR, a cryoSPARC .cs) holds them all. Labels may be partial (the default
assumption): unlabelled particles are not taught as background, the loss treats every anchor
without a label as unlabelled, given how many particles a micrograph holds (--expected-particles,
else estimated from the generic head's picks). Use --labels complete when every particle is
labelled.

The run's logs, loss plot and best/last checkpoints go to OUT without .pt plus .finetune/
(e.g. bgal.finetune/ for --out bgal.pt); --resume continues a killed run.

Example:
  hydrapicker finetune --model run/model.pt --name bgal --micrographs mics/a.mrc mics/b.mrc \\
      --coords labels/a.star labels/b.star --diameter-A 190 --pixel-size 7.08 --out bgal.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hydrapicker.defaults import COORDINATE_FORMATS
    from hydrapicker.training.config import LABELS, FinetuneConfig

    defaults = FinetuneConfig(name="x")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--model", type=Path, metavar="CKPT", help="base checkpoint (default: the shipped generic model)"
    )
    inputs.add_argument("--name", required=True, help="name of the new head (the dataset)")
    inputs.add_argument(
        "--micrographs", nargs="+", required=True, metavar="MIC", help="labelled micrographs: files, folders or globs"
    )
    inputs.add_argument("--coords", nargs="+", required=True, metavar="FILE", help="their coordinate files (or globs)")
    inputs.add_argument(
        "--coords-format",
        choices=sorted(COORDINATE_FORMATS),
        metavar="F",
        help=f"coordinate format, one of {', '.join(COORDINATE_FORMATS)} (default: from the suffix)",
    )
    inputs.add_argument(
        "--val-micrographs", nargs="+", default=[], metavar="MIC", help="labelled micrographs to validate on"
    )
    inputs.add_argument("--val-coords", nargs="+", default=[], metavar="FILE", help="their coordinate files")
    inputs.add_argument("--out", type=Path, required=True, metavar="CKPT", help="the checkpoint to write (.pt)")
    add_particle_size_arguments(parser, "Å per pixel of the micrographs")
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--labels",
        choices=LABELS,
        default=defaults.labels,
        help="partial: unlabelled particles may remain (positive-unlabelled loss); "
        "complete: every unlabelled place is background (default: %(default)s)",
    )
    labels.add_argument(
        "--expected-particles",
        type=float,
        metavar="N",
        help="particles per micrograph, labelled or not (default: estimated from the generic head's picks)",
    )
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs (default: %(default)s)")
    schedule.add_argument(
        "--batches-per-epoch",
        type=int,
        default=defaults.batches_per_epoch,
        help="mini-batches per epoch (default: %(default)s)",
    )
    schedule.add_argument(
        "--val-batches",
        type=int,
        default=defaults.val_batches,
        help="validation mini-batches after each epoch (default: %(default)s)",
    )
    schedule.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue a killed run from its last finished epoch")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the checkpoint at --out and start its run afresh"
    )
    run.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.cli._common import particle_size, write_run_record
    from hydrapicker.training.config import FinetuneConfig
    from hydrapicker.training.finetune import finetune, labelled_micrographs, run_folder

    config = FinetuneConfig(
        name=args.name,
        epochs=args.epochs,
        batches_per_epoch=args.batches_per_epoch,
        val_batches=args.val_batches,
        lr=args.lr,
        labels=args.labels,
        expected_particles=args.expected_particles,
        seed=args.seed,
        threads=args.threads,
    )
    data = labelled_micrographs(
        args.name,
        args.micrographs,
        args.coords,
        coords_format=args.coords_format,
        val_micrographs=args.val_micrographs,
        val_coordinates=args.val_coords,
        size=particle_size(args),
    )
    out = finetune(data, args.out, config, model_path=args.model, resume=args.resume, overwrite=args.overwrite)
    write_run_record(run_folder(args.out), args)
    print(f"Model: {out.resolve()} (pick with --model {out} --head {args.name}); logs in {run_folder(args.out)}")
    return 0
