"""Run the end-to-end demo on the real micrographs bundled with the package.

Zero-shot picking of the bundled real micrographs with the shipped generic model, few-shot
fine-tuning of a new head on two β-galactosidase micrographs, picking the held-out third with
it, and scoring both against the labels. Writes STAR files, overlays, PR/ROC curves and a
short REPORT.md into --out and prints where they are. Needs nothing but the installed package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None, help="base checkpoint (default: the shipped generic model)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: finetune's)")
    parser.add_argument(
        "--batches-per-epoch", type=int, default=None, help="fine-tuning batches per epoch (default: finetune's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.apps.demo import caveat, format_figure, run_demo
    from hydrapicker.cli._common import write_run_record
    from hydrapicker.errors import HydraPickerError

    if args.out.is_file():  # before minutes of picking and fine-tuning, not after
        raise HydraPickerError(f"--out {args.out}: is a file, not a folder")
    result = run_demo(
        args.out, model_path=args.model, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch, seed=args.seed
    )
    write_run_record(args.out, args)
    print()
    for dataset, evaluation in result.zero_shot.items():
        print(
            f"zero-shot  {dataset:24s} AP {format_figure(evaluation.ap)}  AUROC {format_figure(evaluation.auroc)}  "
            f"{result.zero_shot_picks[dataset]} picks"
        )
        if caveat(dataset):
            print(f"           ({caveat(dataset)})")
    print(f"held-out {result.held_out}:")
    print(f"  generic head (zero-shot)  AP {format_figure(result.held_out_generic.ap)}")
    print(f"  fine-tuned head (2 mics)  AP {format_figure(result.held_out_finetuned.ap)}")
    print(f"Report: {result.report.resolve()}")
    return 0
