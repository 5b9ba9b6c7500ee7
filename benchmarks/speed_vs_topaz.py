"""Picking speed side by side with Topaz's pretrained model, as a user runs both: one run, same files.

    .venv/bin/python benchmarks/speed_vs_topaz.py [--model CKPT] [--copies 3] [--rounds 2] [--threads 2]

Needs Topaz's own venv (``bash benchmarks/peers/topaz_setup.sh``). Picks the bundled EMPIAR-10017
frames (1024², 7.08 Å/px, 191 Å particles; ``--copies`` of each under other names, so a run
holds several micrographs) with:

- ``hydrapicker pick`` at its defaults (size read once for the run) and with ``--fixed-diameter``;
- Topaz (``benchmarks/peers/topaz_pick.py``: ``topaz preprocess`` + ``topaz extract``, resnet16,
  its documented settings).

Each is a fresh process with ``OMP_NUM_THREADS`` = ``--threads`` (and ``--threads`` passed where
the tool takes it); wall-clock time of the whole command, process start-up included (what a user
waits for), alternating the tools over ``--rounds`` rounds so that load on a shared machine hits
all alike. Prints seconds per micrograph (best round) and the ratio to Topaz's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BGAL = ROOT / "src" / "hydrapicker" / "assets" / "real" / "empiar10017_bgal_bin4"
TOPAZ_PYTHON = ROOT / "benchmarks" / "peers" / ".topaz-venv" / "bin" / "python"


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped generic model)")
    parser.add_argument("--copies", type=int, default=3, help="copies of each of the 3 frames (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not TOPAZ_PYTHON.exists():
        print(f"no Topaz venv at {TOPAZ_PYTHON}: run bash benchmarks/peers/topaz_setup.sh", file=sys.stderr)
        return 1
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mics"
        folder.mkdir()
        for k in range(args.copies):
            for path in sorted(BGAL.glob("*.png")):
                shutil.copy(path, folder / f"c{k}_{path.name}")
        n = len(list(folder.iterdir()))
        model = ["--model", str(args.model)] if args.model else []
        hp = [
            sys.executable,
            "-m",
            "hydrapicker",
            "pick",
            str(folder),
            "--pixel-size",
            "7.08",
            "--diameter-A",
            "191",
            *model,
        ]
        commands = {
            "hydrapicker (default)": lambda r: [*hp, "--out", f"{tmp}/d{r}"],
            "hydrapicker --fixed-diameter": lambda r: [*hp, "--fixed-diameter", "--out", f"{tmp}/f{r}"],
            "Topaz resnet16": lambda r: [
                sys.executable,  # the wrapper reads with our reader, then runs Topaz from its venv
                str(ROOT / "benchmarks" / "peers" / "topaz_pick.py"),
                *map(str, sorted(folder.iterdir())),
                "--out",
                f"{tmp}/t{r}",
                "--diameter-px",
                "27",
                "--pixel-size",
                "7.08",
            ],
        }
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, command in commands.items():
                seconds = _timed(command(r), env)
                best[name] = min(best.get(name, float("inf")), seconds)
                print(f"  round {r + 1}: {name}: {seconds:.1f} s for {n} micrographs", file=sys.stderr, flush=True)
    topaz = best["Topaz resnet16"]
    print(f"{n} micrographs of 1024², {args.threads} threads, best of {args.rounds} rounds, whole commands")
    print("| picker | s per micrograph | vs Topaz |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds / n:.2f} | {seconds / topaz:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
