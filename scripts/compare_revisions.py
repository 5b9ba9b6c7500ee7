"""Do two revisions of HydraPicker write the same files? Runs the user-facing verbs at both, diffs the outputs.

    .venv/bin/python scripts/compare_revisions.py OLD NEW [--work DIR] [--demo-epochs N] [--skip-demo]

Checks out each revision (a commit, tag or branch) as a detached git worktree and runs, with
that revision's code on this checkout's virtual environment and one thread (so floating-point
sums run in the same order), from a folder laid out the same way for both:

- ``pick`` of the bundled beta-gal frames (default settings: size correction on), and
  ``--fixed-diameter``, every output format;
- ``evaluate`` of those picks against the bundled labels; ``threshold`` (the suggestion) and
  ``threshold --set 0.3`` on a copy; ``report``;
- ``relion`` as RELION 5 runs an External job, on a small project of MRC files;
- ``demo`` (unless ``--skip-demo``; ``--demo-epochs`` shortens its fine-tuning);
- ``--help`` of every verb.

Then compares every file byte for byte after masking what is expected to differ: dates and
times, durations, the software version and the work folder's path. Prints one line per file
(same / differs / only in one) and the first differing lines; exit status 1 if anything differs.
Used for issue 19 (the redesign changes no output) and issue 21 (picks unchanged).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from hydrapicker.io.micrograph import read_micrograph, write_mrc
from hydrapicker.io.star import write_star

ROOT = Path(__file__).resolve().parents[1]
BGAL = ROOT / "src" / "hydrapicker" / "assets" / "real" / "empiar10017_bgal_bin4"
VERBS = (
    "adapt",
    "benchmark",
    "demo",
    "evaluate",
    "finetune",
    "pick",
    "relion",
    "report",
    "simulate",
    "threshold",
    "train",
)
SIZE = ["--pixel-size", "7.08", "--diameter-A", "191"]
TEXT = {".star", ".cbox", ".box", ".txt", ".csv", ".json", ".md", ".html", ".cs_summary", ".log", ".toml", ""}
_MASKS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<TIME>"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2} on \d{2}/\d{2}/\d{4}"), "<TIME>"),  # starfile's "Created by" line
    (re.compile(r'"seconds": [0-9.]+'), '"seconds": <DURATION>'),  # training logs
    (re.compile(r"\b\d+(\.\d+)?\s?(s|ms|min|seconds|minutes)\b"), "<DURATION>"),
    (re.compile(r"\b\d+(\.\d+)? micrographs?/s\b"), "<RATE>"),
    (re.compile(r"hydrapicker[ -]\d+\.\d+\S*"), "hydrapicker <VERSION>"),
]


def _inputs(folder: Path) -> None:
    """The same inputs for both revisions: the bundled frames and labels, and a RELION project of MRCs."""
    shutil.copytree(BGAL, folder / "bgal", ignore=shutil.ignore_patterns("README*"))
    mics = folder / "relion" / "MotionCorr" / "job002" / "Movies"
    mics.mkdir(parents=True)
    names = []
    for png in sorted(BGAL.glob("*.png")):
        write_mrc(mics / f"{png.stem}.mrc", read_micrograph(png).data, pixel_size=1.0)  # the header is wrong on purpose
        names.append(f"MotionCorr/job002/Movies/{png.stem}.mrc")
    # The two tables of RELION 5's CtfFind/job003/micrographs_ctf.star that the External job reads.
    optics = {
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [1.77],
        "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.1],
        "rlnMicrographPixelSize": [7.08],
    }
    star = folder / "relion" / "CtfFind" / "job003" / "micrographs_ctf.star"
    star.parent.mkdir(parents=True)
    write_star(
        star,
        {
            "optics": pd.DataFrame(optics),
            "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)}),
        },
    )


def _run(label: str, worktree: Path, folder: Path, args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(worktree / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("HYDRAPICKER_DEFAULT_MALLOC", None)
    hp = [sys.executable, "-m", "hydrapicker"]

    def run(*command: str, cwd: Path = folder, out: str | None = None) -> None:
        print(f"  [{label}] hydrapicker {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run([*hp, *command], cwd=cwd, env=env, capture_output=True, text=True)
        if out:
            (folder / out).write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"[{label}] failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")

    labels = [str(p.relative_to(folder)) for p in sorted((folder / "bgal").glob("*.csv"))]
    run("pick", "bgal", *SIZE, "--out", "pick-default", out="pick-default.log")
    run("pick", "bgal", *SIZE, "--fixed-diameter", "--out", "pick-fixed", out="pick-fixed.log")
    run(
        "evaluate",
        "pick-default/picks.csv",
        "--truth",
        *labels,
        "--box",
        "27",
        "--json",
        "evaluate.json",
        "--plots",
        "evaluate-plots",
        out="evaluate.log",
    )
    run("threshold", "pick-default", out="threshold-suggest.log")
    shutil.copytree(folder / "pick-default", folder / "threshold-set")
    run("threshold", "threshold-set", "--set", "0.3", out="threshold-set.log")
    run("report", "pick-default", out="report.log")
    relion = folder / "relion"
    run(
        "relion",
        "--o",
        "External/job005/",
        "--in_mics",
        "CtfFind/job003/micrographs_ctf.star",
        "--diameter-A",
        "191",
        "--j",
        "1",
        cwd=relion,
        out="relion.log",
    )
    if not args.skip_demo:
        epochs = ["--epochs", str(args.demo_epochs)] if args.demo_epochs else []
        run("demo", "--out", "demo", *epochs, out="demo.log")
    (folder / "help").mkdir()
    for verb in VERBS:
        run(verb, "--help", out=f"help/{verb}.txt")


def _masked(path: Path, folder: Path) -> list[str]:
    text = path.read_text(errors="replace").replace(str(folder), "<WORK>")
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    lines = text.splitlines()
    if path.name == "log.csv" and lines and lines[0].split(",")[-1] == "seconds":  # a training log's epoch times
        lines = [line.rsplit(",", 1)[0] for line in lines]
    return lines


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def _same_checkpoint(a: Path, b: Path) -> tuple[bool, list[str]]:
    """Whether two checkpoints hold the same tensors, and the other fields that differ (records, times)."""
    flat_a, flat_b = (_flat(torch.load(p, map_location="cpu", weights_only=False)) for p in (a, b))
    tensors_same, others = True, []
    for key in sorted(set(flat_a) | set(flat_b)):
        x, y = flat_a.get(key), flat_b.get(key)
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            tensors_same &= isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        elif x != y:
            others.append(key)
    return tensors_same, others


def _compare(old: Path, new: Path, verbose_lines: int) -> int:
    """Print one line per file; the number of files that differ or exist on one side only."""
    skip = {"bgal", "relion/MotionCorr", "relion/CtfFind"}
    names: set[Path] = set()
    for side in (old, new):
        for path in side.rglob("*"):
            rel = path.relative_to(side)
            if path.is_file() and not any(str(rel).startswith(s) for s in skip):
                names.add(rel)
    differing = 0
    for rel in sorted(names):
        a, b = old / rel, new / rel
        if not a.exists() or not b.exists():
            print(f"only in {'new' if b.exists() else 'old'}: {rel}")
            differing += 1
            continue
        if a.read_bytes() == b.read_bytes():
            print(f"same (bytes): {rel}")
            continue
        if a.suffix.lower() in TEXT:
            lines_a, lines_b = _masked(a, old), _masked(b, new)
            if lines_a == lines_b:
                print(f"same (masked): {rel}")
                continue
            print(f"DIFFERS: {rel}")
            diff = list(difflib.unified_diff(lines_a, lines_b, "old", "new", n=0, lineterm=""))
            for line in diff[2 : 2 + verbose_lines]:
                print(f"    {line[:200]}")
        elif a.suffix == ".pt":
            tensors_same, others = _same_checkpoint(a, b)
            if tensors_same and not others:
                print(f"same (tensors and fields): {rel}")
                continue
            print(f"{'same tensors, other fields differ' if tensors_same else 'DIFFERS (tensors)'}: {rel}: {others}")
            if tensors_same:
                continue
        else:
            print(f"DIFFERS (binary): {rel}")
        differing += 1
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_revisions"))
    parser.add_argument("--demo-epochs", type=int, help="fine-tuning epochs of the demo (default: the demo's)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--lines", type=int, default=12, help="differing lines shown per file")
    parser.add_argument(
        "--compare-only", action="store_true", help="diff WORK/old and WORK/new of an earlier run again"
    )
    args = parser.parse_args()
    if args.compare_only:
        differing = _compare(args.work / "old", args.work / "new", args.lines)
        print(f"{differing} file(s) differ (masked: times, durations, version, work path)")
        sys.exit(1 if differing else 0)
    if args.work.exists():
        shutil.rmtree(args.work)
    folders = {}
    for label, rev in (("old", args.old), ("new", args.new)):
        worktree = args.work / f"{label}-src"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), rev], check=True)
        # The same path for both runs, so that paths recorded in outputs match.
        folder = args.work / "run"
        folder.mkdir()
        try:
            _inputs(folder)
            _run(label, worktree, folder, args)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=True)
        folders[label] = folder.rename(args.work / label)
    differing = _compare(folders["old"], folders["new"], args.lines)
    print(
        f"{differing} file(s) differ between {args.old} and {args.new} (masked: times, durations, version, work path)"
    )
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
