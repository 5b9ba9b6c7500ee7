"""Training-step time of each model preset on this machine, next to its FLOP count and the conv floor.

For each preset: one training step (forward, loss, backward, Adam step) on a batch of 4 crops of
368² px, in plain NCHW and in channels-last fp32, median of --steps timed steps after one
warm-up. FLOPs of a step are counted, not guessed: every Conv2d's forward multiply-adds x 2
(from hooks on a real forward pass), times 3 for forward + backward (GroupNorm, ReLU and the
optimiser are not counted). The floor is a 64->64 3x3 conv on a 1024² map measured in the same
run (DESIGN.md, "Performance figures"): the ratio says how close a step gets to it.

The allocator is tuned as `train` tunes it (hydrapicker.memory); HYDRAPICKER_DEFAULT_MALLOC=1
leaves it alone (benchmarks/allocator.py compares the two).

Usage: .venv/bin/python benchmarks/train_step.py [--presets tiny small paper] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from hydrapicker.defaults import BATCH_SIZE, CROP_SIZE
from hydrapicker.loss import detection_loss
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import HydraPicker
from hydrapicker.presets import PRESETS


def forward_conv_flops(model: HydraPicker, images: torch.Tensor) -> int:
    total = 0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * k * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    return total


def conv_floor_gflops(channels_last: bool, repeats: int = 3) -> float:
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(1, 64, 1024, 1024)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 9 * 64 * 64 * 1024 * 1024
    times = []
    with torch.no_grad():
        conv(x)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t)
    return flops / min(times) / 1e9


def step_seconds(model: HydraPicker, images: torch.Tensor, centres, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = detection_loss(model(images), centres)
        (loss.loc + loss.cls).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    tuned = keep_large_blocks()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, allocator {'tuned' if tuned else 'glibc default'}, load average {os.getloadavg()}"
    )
    floor = {cl: conv_floor_gflops(cl) for cl in (False, True)}
    print(f"floor: 64->64 3x3 conv on 1024^2: NCHW {floor[False]:.0f} GFLOP/s, channels-last {floor[True]:.0f} GFLOP/s")
    images = torch.randn(BATCH_SIZE, 1, CROP_SIZE, CROP_SIZE)
    centres = [torch.rand(15, 2) * CROP_SIZE for _ in range(BATCH_SIZE)]
    print(f"{'preset':7s} {'layout':13s} {'step s':>8s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} {'of floor':>8s}")
    for name in args.presets:
        model = HydraPicker(PRESETS[name])
        flops = 3 * forward_conv_flops(model, images)
        for cl in (False, True):
            m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
            x = images.contiguous(memory_format=torch.channels_last) if cl else images
            sec = step_seconds(m.train(), x, centres, args.steps)
            rate = flops / sec / 1e9
            layout = "channels-last" if cl else "NCHW"
            print(
                f"{name:7s} {layout:13s} {sec:8.3f} {flops / 1e9:11.1f} {rate:8.1f} {rate / floor[cl]:8.2f}", flush=True
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
