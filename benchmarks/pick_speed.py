"""Picking speed per 1024² (rescaled) micrograph for each preset, against the conv FLOP floor; peak memory.

Usage:
  python benchmarks/pick_speed.py speed [--presets paper,small,tiny] [--model CKPT] [--repeats 2] [--size 1024]
  python benchmarks/pick_speed.py memory [--sizes 4096,8192] [--preset paper] [--tile 2048]

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
``memory`` picks a random SIZE² micrograph at 1 rescaled px per stored px (so SIZE² rescaled px,
tiles of --tile px) in a fresh subprocess per size and reports its peak RSS: with the micrograph
in memory, after preparing it (rescale + normalisation, whole-micrograph NumPy arrays), after
the network (tiles), after decoding.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from hydrapicker.model import HydraPicker
from hydrapicker.picking.inference import head_outputs
from hydrapicker.presets import get_preset


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


def conv_flops(model: HydraPicker, size: int = 1024) -> float:
    """Multiply-adds x 2 of every conv in trunk + generic head on a size² input."""
    total = 0.0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels // module.groups * k * output.shape[1] * output.shape[2] * output.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
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
        from hydrapicker.checkpoint import load_checkpoint

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


def _memory_child(size: int, preset: str, tile: int) -> None:
    from hydrapicker.checkpoint import ModelMeta
    from hydrapicker.picking.decode import picks_from_outputs
    from hydrapicker.preprocess import prepare_micrograph

    def peak() -> int:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    torch.manual_seed(0)
    model = HydraPicker(get_preset(preset)).eval().to(memory_format=torch.channels_last)
    meta = ModelMeta(preset=model.preset, head_names=(), target_diameter_px=40.0, anchor_stride=model.stride)
    image = np.random.default_rng(0).normal(size=(size, size)).astype(np.float32)
    row = {"size": size, "preset": preset, "tile": tile, "rss_with_micrograph_mib": peak()}
    t0 = time.perf_counter()
    prepared = prepare_micrograph(image, 1.0, meta.target_diameter_px)
    row["peak_after_prepare_mib"] = peak()
    outputs = head_outputs(model, prepared, tile_size=tile)
    row["peak_after_network_mib"] = peak()
    picks = picks_from_outputs(outputs, meta, 1.0, image.shape, 0.5)
    row.update(peak_total_mib=peak(), seconds=round(time.perf_counter() - t0, 1), picks=len(picks))
    print(json.dumps(row))


def memory(args: argparse.Namespace) -> None:
    for size in map(int, args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "_memory_child", str(size), args.preset, str(args.tile)],
            check=True,
            capture_output=True,
            text=True,
        )
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_memory_child":
        _memory_child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--presets", default="paper,small,tiny")
    s.add_argument("--model")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--size", type=int, default=1024, help="micrograph edge timed (seconds are scaled to 1024²)")
    s.add_argument("--configs", default="nchw_fp32,cl_fp32,cl_bf16,cl_fp32_1thread")
    m = sub.add_parser("memory")
    m.add_argument("--sizes", default="4096,8192")
    m.add_argument("--preset", default="paper")
    m.add_argument("--tile", type=int, default=2048)
    args = parser.parse_args()
    speed(args) if args.what == "speed" else memory(args)
