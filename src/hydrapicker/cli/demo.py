"""Run the end-to-end demo on the real micrographs bundled with the package.

Writes evaluations, PR/ROC curves, STAR files and a short REPORT.md into --out and prints
where they are. Needs nothing but the installed package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.cli._common import write_run_record
    from hydrapicker.demo import format_figure, run_demo

    results = run_demo(args.out, seed=args.seed)
    write_run_record(args.out, args)
    for dataset, runs in results.items():
        for label, evaluation in runs.items():
            print(f"{dataset:24s} {label:9s} AP {format_figure(evaluation.ap)}  AUROC {format_figure(evaluation.auroc)}")
    print(f"Report: {(args.out / 'REPORT.md').resolve()}")
    print("Coming next: zero-shot picking with the shipped generic model and few-shot fine-tuning.")
    return 0
