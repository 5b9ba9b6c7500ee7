"""Run the paper's evaluation protocol and write REPORT.md: four tables, baselines, diameter robustness.

CONFIG is a benchmark TOML (the one the project records is benchmarks/protocol.toml): which
structures are sources, targets and unseen proteins, how much to simulate, how long to train,
which baseline scripts to run. The run simulates the datasets, trains the multi-head model, the
single-head target models and the few-shot heads, picks every test micrograph, scores it with
`evaluate` and writes OUT/REPORT.md with PR/ROC figures (OUT/figures) and OUT/results.json.

Every step keeps its result in OUT: run the same command again to continue a killed run.
--quick runs the same code on the config's [quick] subset (minutes on a laptop CPU).

Example:
  hydrapicker benchmark benchmarks/protocol.toml --out runs/benchmark --device cuda
  hydrapicker benchmark benchmarks/protocol.toml --out /tmp/bench --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, metavar="CONFIG", help="benchmark TOML (e.g. benchmarks/protocol.toml)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (a rerun continues it)")
    parser.add_argument("--quick", action="store_true", help="the config's [quick] subset: same code, minutes")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="where the networks run (default: the config's, else cpu)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: the config's, else torch's choice)"
    )
    parser.add_argument(
        "--processes", type=int, metavar="N", help="simulation processes (default: the config's, else 2)"
    )


def main(args: argparse.Namespace) -> int:
    from hydrapicker.apps.benchmark.config import load_config
    from hydrapicker.apps.benchmark.run import run_benchmark
    from hydrapicker.cli._common import write_run_record
    from hydrapicker.errors import HydraPickerError

    if args.out.is_file():
        raise HydraPickerError(f"--out {args.out}: is a file, not a folder")
    config = load_config(
        args.config, quick=args.quick, device=args.device, threads=args.threads, processes=args.processes
    )
    # The record is written once run_benchmark has found the folder to hold this protocol (or none).
    report = run_benchmark(
        config,
        args.out,
        config_path=str(args.config) + (" --quick" if args.quick else ""),
        on_start=lambda: write_run_record(args.out, args),
    )
    print(f"report: {report}")
    return 0
