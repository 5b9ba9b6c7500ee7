"""Speed of hydrapicker.boxes.nms (greedy, KD-tree candidate pairs) against a brute-force greedy NMS.

Candidates are anchor-grid picks of a rescaled micrograph: one per 16 px cell with random
sub-cell offsets and scores, box 40 px, IoU threshold 0.3 (defaults). A 4096² rescaled
micrograph has 65,536 anchors; above a typical score threshold only a few thousand remain.

Usage: .venv/bin/python benchmarks/nms_speed.py
"""

from __future__ import annotations

import time

import numpy as np

from hydrapicker.boxes import nms
from hydrapicker.defaults import NMS_IOU, PARTICLE_DIAMETER_PX


def brute_force(xy: np.ndarray, score: np.ndarray, box: float, thr: float) -> np.ndarray:
    order = np.argsort(-score, kind="stable")
    xy = xy[order]
    suppressed = np.zeros(len(xy), dtype=bool)
    for i in range(len(xy)):
        if suppressed[i]:
            continue
        d = np.abs(xy[i + 1 :] - xy[i])
        inter = np.prod(np.clip(box - d, 0, None), axis=1)
        suppressed[i + 1 :] |= inter / (2 * box * box - inter) > thr
    return order[~suppressed]


def main() -> None:
    rng = np.random.default_rng(0)
    nms(rng.random((10, 2)), rng.random(10), 40.0, 0.3)  # import scipy.spatial outside the timing
    for side in (64, 128, 256):
        n = side * side
        cells = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 16 + 7.5
        xy = cells + rng.uniform(-8, 8, (n, 2))
        score = rng.random(n)
        t = time.perf_counter()
        keep = nms(xy, score, PARTICLE_DIAMETER_PX, NMS_IOU)
        fast = time.perf_counter() - t
        line = f"{n:6d} candidates ({side * 16}^2 px): nms {fast * 1e3:7.1f} ms, kept {len(keep)}"
        if n <= 16384:
            t = time.perf_counter()
            ref = brute_force(xy, score, PARTICLE_DIAMETER_PX, NMS_IOU)
            line += f"; brute force {(time.perf_counter() - t) * 1e3:7.1f} ms, same: {np.array_equal(np.sort(ref), np.sort(keep))}"
        print(line)


if __name__ == "__main__":
    main()
