"""Train trunk + one head per dataset + the generic head from a project file of labelled datasets.

Stage 1 trains a single head on all datasets pooled (Adam, cosine annealing with warm restarts);
stage 2 starts every dataset head and the generic head from it and trains them together (SGD
with momentum), the generic head tied to the others by the head-similarity loss. Each stage
writes OUT/stageN/{best,last}.pt, log.csv, log.json and loss.png; OUT/model.pt is the final
model (the best checkpoint of the last stage run) for `hydrapicker pick --model`.

A killed run continues with --resume from the last finished epoch.

Under torchrun (`torchrun --nproc-per-node N --no-python hydrapicker train ...`) the N processes
train one model with DistributedDataParallel: each draws its own batches, so an optimiser step
averages N x --accumulate batches; rank 0 writes the checkpoints and logs.

Example:
  hydrapicker train project.toml --out run/ --preset small --epochs 120 --stage2-epochs 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hydrapicker.presets import PRESETS
    from hydrapicker.training.config import STAGES, TrainConfig

    defaults = TrainConfig()
    parser.add_argument("project", type=Path, help="project TOML listing the labelled datasets")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    group = parser.add_argument_group("model and schedule")
    group.add_argument(
        "--preset", choices=sorted(PRESETS), default=defaults.preset, help="network size (default: %(default)s)"
    )
    group.add_argument(
        "--stage", choices=STAGES, default=defaults.stage, help="which stage(s) to run (default: %(default)s)"
    )
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="stage-1 epochs (default: %(default)s)")
    group.add_argument(
        "--stage2-epochs", type=int, default=defaults.stage2_epochs, help="stage-2 epochs (default: %(default)s)"
    )
    group.add_argument(
        "--batches-per-epoch",
        type=int,
        default=defaults.batches_per_epoch,
        help="mini-batches per epoch (default: %(default)s)",
    )
    group.add_argument(
        "--val-batches",
        type=int,
        default=defaults.val_batches,
        help="validation mini-batches measured after each epoch (default: %(default)s)",
    )
    group.add_argument(
        "--t0-epochs",
        type=int,
        default=defaults.t0_epochs,
        help="stage-1 epochs between warm restarts of the learning rate (default: %(default)s)",
    )
    group.add_argument(
        "--accumulate",
        type=int,
        default=defaults.accumulate,
        metavar="N",
        help="batches averaged per optimiser step, per process (default: %(default)s)",
    )
    group.add_argument(
        "--scale-jitter",
        type=float,
        nargs=2,
        default=defaults.scale_jitter,
        metavar=("LO", "HI"),
        help="extra rescale of each training crop, log-uniform in [LO, HI] (default: %(default)s)",
    )
    group.add_argument(
        "--size-head",
        action="store_true",
        help="also train a size head, which lets `pick` correct a wrong particle diameter (wants a wide --scale-jitter)",
    )
    group = parser.add_argument_group("run")
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    group.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    group.add_argument(
        "--device",
        default=defaults.device,
        choices=("cpu", "cuda"),
        help="where the network trains (default: %(default)s)",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep prepared micrographs here on disk between epochs and runs (default: none)",
    )


def main(args: argparse.Namespace) -> int:
    from hydrapicker import distributed

    with distributed.session(args.device):  # several processes under torchrun: one DDP model
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from hydrapicker import distributed
    from hydrapicker.cli._common import write_run_record
    from hydrapicker.data.project import load_project
    from hydrapicker.training.config import TrainConfig
    from hydrapicker.training.stages import train

    config = TrainConfig(
        preset=args.preset,
        stage=args.stage,
        epochs=args.epochs,
        stage2_epochs=args.stage2_epochs,
        batches_per_epoch=args.batches_per_epoch,
        val_batches=args.val_batches,
        t0_epochs=args.t0_epochs,
        scale_jitter=tuple(args.scale_jitter),
        size_head=args.size_head,
        seed=args.seed,
        accumulate=args.accumulate,
        threads=args.threads,
        device=args.device,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
    )
    if args.out.is_file():
        from hydrapicker.errors import HydraPickerError

        raise HydraPickerError(f"--out {args.out}: is a file, not a folder")
    datasets = load_project(args.project)
    # The record is written once train() has found the folder fit to start in (not over a run already there).
    model = train(datasets, args.out, config, resume=args.resume, on_start=lambda: write_run_record(args.out, args))
    if distributed.is_main():
        print(f"Model: {model.resolve()}")
    return 0
