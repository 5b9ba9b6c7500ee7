"""Training-step time with glibc's default allocator and with the one `train` sets (hydrapicker.memory).

Runs benchmarks/train_step.py twice in fresh processes, once with HYDRAPICKER_DEFAULT_MALLOC=1
(the reference) and once as `train` runs, and prints each layout's median step time, the
processes' kernel (system) time and minor page faults, and the ratio.

Usage: .venv/bin/python benchmarks/allocator.py [--presets tiny] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

from hydrapicker.memory import OPT_OUT

STEP_SCRIPT = Path(__file__).with_name("train_step.py")


def run(extra_env: dict[str, str], argv: list[str]) -> tuple[dict[tuple[str, str], float], float, int]:
    """Step seconds per (preset, layout), kernel seconds and minor page faults of one train_step.py process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT} | extra_env
    out = subprocess.run(
        [sys.executable, str(STEP_SCRIPT), *argv], env=env, capture_output=True, text=True, check=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    steps = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[1] in ("NCHW", "channels-last"):
            steps[(fields[0], fields[1])] = float(fields[2])
    return steps, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    argv = ["--presets", *args.presets, "--steps", str(args.steps), "--threads", str(args.threads)]
    print(f"{args.threads} thread(s), {args.steps} timed steps, load average {os.getloadavg()}")
    reference, ref_sys, ref_faults = run({OPT_OUT: "1"}, argv)
    tuned, tuned_sys, tuned_faults = run({}, argv)
    print(f"{'preset':7s} {'layout':13s} {'default s':>10s} {'tuned s':>8s} {'speed-up':>9s}")
    for key, seconds in reference.items():
        print(f"{key[0]:7s} {key[1]:13s} {seconds:10.3f} {tuned[key]:8.3f} {seconds / tuned[key]:8.2f}x")
    print(
        f"kernel time of the process: {ref_sys:.1f} s -> {tuned_sys:.1f} s; minor page faults {ref_faults:,} -> {tuned_faults:,}"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
