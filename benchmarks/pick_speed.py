"""Picking speed and memory: side by side with Topaz, against the conv FLOP floor; per preset; peak RSS.

Usage:
  python benchmarks/pick_speed.py vs-topaz [--model CKPT] [--copies 3] [--rounds 2] [--threads 2]
  python benchmarks/pick_speed.py memory [--model CKPT] [--sizes 1024x1024,4096x4096,4092x5760]
  python benchmarks/pick_speed.py speed [--presets paper,small,tiny] [--model CKPT] [--repeats 2] [--size 1024]

``vs-topaz`` (issue 21's measure): the bundled EMPIAR-10017 frames (1024², 7.08 Å/px, 191 Å
particles; ``--copies`` of each under other names, so a run holds several micrographs), picked
in one run by ``hydrapicker pick`` at its defaults (the size read once for the run), with
``--fixed-diameter``, and by Topaz's pretrained resnet16 at its documented settings
(``benchmarks/peers/topaz_pick.py``; needs ``bash benchmarks/peers/topaz_setup.sh``). Each is a
fresh process with ``OMP_NUM_THREADS`` = ``--threads``, timed as a user waits for it (start-up
included), alternating over ``--rounds`` so load on a shared machine hits all alike. Prints
seconds per micrograph (best round), the ratio to Topaz, each command's peak RSS, and the FLOP
floor: the model's conv FLOPs on the micrograph as the network sees it, at the conv rate this
machine reaches in the same run.

``memory``: peak RSS of ``hydrapicker pick`` (the shipped model unless ``--model``, default
settings) on one noise micrograph of each size (MRC, float32, a 40 px particle so the network
sees it at its stored size), a fresh process each.

``speed`` measures, in one process (so the ratios compare like with like on a shared machine):
- the conv rate: a 64->64 3x3 conv on a 1024² map, NCHW fp32, channels-last fp32, channels-last
  under bf16 autocast (DESIGN.md's "FLOP floor" reference);
- each preset's conv FLOPs for a 1024² input (trunk + one head, counted from the layers);
- the seconds :func:`hydrapicker.picking.inference.head_outputs` takes on a 1024² prepared micrograph (timed
  on a --size² one and scaled by pixels when the machine is too busy for 1024²)
  (random weights: the cost does not depend on them) under inference_mode, NCHW vs channels-last
  fp32 vs bf16 autocast, with 1 and with all threads; and the ratio to the floor (FLOPs / conv
  rate of the same layout and precision, all threads);
- the bf16 score error: max |score(bf16) - score(fp32)| over every anchor (--model: a trained
  checkpoint, whose scores mean something; else a random-weight tiny model perturbed so that
  scores spread over (0, 1)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hydrapicker.checkpoint import load_checkpoint, load_model
from hydrapicker.io.micrograph import read_micrograph, write_mrc
from hydrapicker.model import HydraPicker
from hydrapicker.picking.inference import head_outputs
from hydrapicker.preprocess import prepare_micrograph
from hydrapicker.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
BGAL = ROOT / "src" / "hydrapicker" / "assets" / "real" / "empiar10017_bgal_bin4"
BGAL_PIXEL_A, BGAL_DIAMETER_A = 7.08, 191.0
TOPAZ_PYTHON = ROOT / "benchmarks" / "peers" / ".topaz-venv" / "bin" / "python"


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_rate(layout: str, repeats: int) -> float:
    """GFLOP/s of a 64->64 3x3 conv (padding 1) on a [1, 64, 1024, 1024] map."""
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 64, 1024, 1024)
    if layout != "nchw":
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=layout == "bf16")

    def run():
        with torch.inference_mode(), autocast:
            conv(x)

    flops = 2 * 64 * 64 * 9 * 1024 * 1024
    return flops / _best_time(run, repeats) / 1e9


def conv_flops(model: HydraPicker, size: int | tuple[int, int] = 1024) -> float:
    """Multiply-adds x 2 of every conv in trunk + generic head on a size² (or rows x cols) input."""
    total = 0.0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels // module.groups * k * output.shape[1] * output.shape[2] * output.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        rows, cols = (size, size) if isinstance(size, int) else size
        model(torch.zeros(1, 1, rows, cols))
    for h in handles:
        h.remove()
    return total


def speed(args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads; machine shared with other jobs: absolute times are noisy, "
        f"ratios are measured in this one run"
    )
    rates = {layout: conv_rate(layout, args.repeats) for layout in ("nchw", "channels_last", "bf16")}
    print("conv 64->64 3x3 on 1024²: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    size = args.size
    per_1024 = (1024 / size) ** 2  # the cost is linear in pixels: seconds per 1024² micrograph
    image = np.random.default_rng(0).normal(size=(size, size)).astype(np.float32)
    configs = [
        ("nchw_fp32", torch.contiguous_format, False, threads),
        ("cl_fp32", torch.channels_last, False, threads),
        ("cl_bf16", torch.channels_last, True, threads),
        ("cl_fp32_1thread", torch.channels_last, False, 1),
    ]
    configs = [c for c in configs if c[0] in args.configs.split(",")]
    rows = []
    for name in args.presets.split(","):
        torch.manual_seed(0)
        model = HydraPicker(get_preset(name)).eval()
        flops = conv_flops(model)
        row = {"preset": name, "gflop": flops / 1e9}
        for label, layout, bf16, n_threads in configs:
            torch.set_num_threads(n_threads)
            model = model.to(memory_format=layout)
            row[label] = per_1024 * _best_time(lambda: head_outputs(model, image, bf16=bf16), args.repeats)
            torch.set_num_threads(threads)
        floors = {
            "nchw_fp32": rates["nchw"],
            "cl_fp32": rates["channels_last"],
            "cl_bf16": rates["bf16"],
            "cl_fp32_1thread": rates["channels_last"],
        }
        parts = []
        for label, *_ in configs:
            floor = flops / (floors[label] * 1e9)
            row[f"ratio_{label}"] = row[label] / floor
            parts.append(f"{label} {row[label]:.2f} s (floor {floor:.2f} s, ratio {row[f'ratio_{label}']:.2f})")
        rows.append(row)
        print(f"{name:6s} {row['gflop']:8.1f} GFLOP per 1024² | " + "; ".join(parts), flush=True)
    print(json.dumps({"conv_gflops": rates, "presets": rows}, indent=1))
    bf16_error(args)


def bf16_error(args: argparse.Namespace) -> None:
    if args.model:
        model, _ = load_checkpoint(args.model)
        source = args.model
    else:
        torch.manual_seed(0)
        model = HydraPicker(get_preset("tiny")).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
            nn.init.normal_(model.generic.predict.weight, std=0.05)
        source = "random tiny model"
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1024, 1024)).astype(np.float32)
    fp32 = torch.sigmoid(head_outputs(model, image)[2])
    bf16 = torch.sigmoid(head_outputs(model, image, bf16=True)[2])
    print(
        f"bf16 vs fp32 scores ({source}, 1024² noise): max |diff| {float((bf16 - fp32).abs().max()):.4f}, "
        f"mean {float((bf16 - fp32).abs().mean()):.5f}"
    )


def _run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock seconds and peak RSS (MiB) of one command, as a user would run it."""
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest child's so far
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"failed ({child.returncode}): {' '.join(command)}\n{errors.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def _model(path: str | None) -> tuple[HydraPicker, object]:
    return load_checkpoint(path) if path else load_model(None)


def flop_floor(args: argparse.Namespace) -> tuple[float, float, tuple[int, int]]:
    """(seconds, GFLOP) the network needs per bundled frame at the conv rate of this machine, and the shape it sees."""
    torch.set_num_threads(args.threads)
    model, meta = _model(args.model)
    frame = read_micrograph(sorted(BGAL.glob("*.png"))[0])
    scale = meta.target_diameter_px / (BGAL_DIAMETER_A / BGAL_PIXEL_A)
    shape = prepare_micrograph(frame.data, scale, meta.target_diameter_px).shape
    flops = conv_flops(model.eval(), shape)
    rate = conv_rate("nchw", 2)
    return flops / (rate * 1e9), flops / 1e9, shape


def vs_topaz(args: argparse.Namespace) -> None:
    if not TOPAZ_PYTHON.exists():
        raise SystemExit(f"no Topaz venv at {TOPAZ_PYTHON}: run bash benchmarks/peers/topaz_setup.sh")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mics"
        folder.mkdir()
        for k in range(args.copies):
            for path in sorted(BGAL.glob("*.png")):
                shutil.copy(path, folder / f"c{k}_{path.name}")
        n = len(list(folder.iterdir()))
        model = ["--model", str(args.model)] if args.model else []
        size = ["--pixel-size", f"{BGAL_PIXEL_A:g}", "--diameter-A", f"{BGAL_DIAMETER_A:g}"]
        hp = [sys.executable, "-m", "hydrapicker", "pick", str(folder), *size, *model]
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
                f"{BGAL_DIAMETER_A / BGAL_PIXEL_A:.0f}",
                "--pixel-size",
                f"{BGAL_PIXEL_A:g}",
            ],
        }
        best: dict[str, float] = {}
        rss: dict[str, float] = {}
        for r in range(args.rounds):
            for name, command in commands.items():
                seconds, peak = _run_measured(command(r), env)
                best[name] = min(best.get(name, float("inf")), seconds)
                rss[name] = max(rss.get(name, 0.0), peak)
                print(f"  round {r + 1}: {name}: {seconds:.1f} s for {n} micrographs", file=sys.stderr, flush=True)
    floor, gflop, shape = flop_floor(args)
    topaz = best["Topaz resnet16"]
    print(
        f"{n} micrographs of 1024² (the network sees {shape[0]}x{shape[1]}), {args.threads} threads, "
        f"best of {args.rounds} rounds, whole commands; model: {args.model or 'shipped generic.pt'}"
    )
    print("| picker | s per micrograph | vs Topaz | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds / n:.2f} | {seconds / topaz:.2f}x | {rss[name]:.0f} |")
    print(f"| FLOP floor: {gflop:.1f} GFLOP at this machine's conv rate | {floor:.2f} | {floor * n / topaz:.2f}x | |")


def memory(args: argparse.Namespace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    model = ["--model", str(args.model)] if args.model else []
    print("| micrograph | peak RSS of `hydrapicker pick` (MiB) | seconds |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rows, cols = map(int, size.split("x"))
            path = Path(tmp) / f"noise_{rows}x{cols}.mrc"
            write_mrc(path, np.random.default_rng(0).normal(size=(rows, cols)).astype(np.float32), pixel_size=1.0)
            command = [sys.executable, "-m", "hydrapicker", "pick", str(path), "--diameter-px", "40"]
            seconds, peak = _run_measured([*command, "--out", f"{tmp}/out_{size}", *model], env)
            path.unlink()
            print(f"| {rows} x {cols} | {peak:.0f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("vs-topaz")
    t.add_argument("--model", help="checkpoint (default: the shipped generic model)")
    t.add_argument("--copies", type=int, default=3, help="copies of each of the 3 frames (default: %(default)s)")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--threads", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--model", help="checkpoint (default: the shipped generic model)")
    m.add_argument("--sizes", default="1024x1024,4096x4096,4092x5760")
    m.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("speed")
    s.add_argument("--presets", default="paper,small,tiny")
    s.add_argument("--model")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--size", type=int, default=1024, help="micrograph edge timed (seconds are scaled to 1024²)")
    s.add_argument("--configs", default="nchw_fp32,cl_fp32,cl_bf16,cl_fp32_1thread")
    args = parser.parse_args()
    {"vs-topaz": vs_topaz, "memory": memory, "speed": speed}[args.what](args)
