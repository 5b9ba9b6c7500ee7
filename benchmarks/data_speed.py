"""How long the training data pipeline (hydrapicker.data) takes, per step and per batch.

Usage: .venv/bin/python benchmarks/data_speed.py [--repeats 3]

Prints median wall times for: rescaling a 4096² float micrograph to ~1100² (ours: torch's
anti-aliased bilinear resize; against Gaussian + scipy linear resampling and a Fourier crop,
for reference), local normalisation, preparing one bundled 1024² micrograph, and
making one batch of 4 crops with the stream's cache cold and warm.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hydrapicker import preprocess
from hydrapicker.data import batches
from hydrapicker.defaults import PARTICLE_DIAMETER_PX

ASSETS = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets" / "real"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fourier_crop(image: np.ndarray, scale: float) -> np.ndarray:
    """Reference only: band-limited resize by cropping the spectrum (periodic edges)."""
    rows, cols = image.shape
    out_r, out_c = round(rows * scale), round(cols * scale)
    spectrum = np.fft.rfft2(image)
    keep = np.concatenate([spectrum[: out_r // 2], spectrum[rows - (out_r - out_r // 2) :]], axis=0)[
        :, : out_c // 2 + 1
    ]
    return np.fft.irfft2(keep, s=(out_r, out_c)) * (out_r * out_c) / (rows * cols)


def scipy_resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Reference only: Gaussian anti-alias then scipy linear resampling (same geometry)."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(image, 0.5 * np.sqrt(1 / scale**2 - 1), mode="nearest")
    shape = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    return ndimage.affine_transform(blurred, [1 / scale] * 2, offset=0.5 / scale - 0.5, output_shape=shape, order=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    r = args.repeats
    rng = np.random.default_rng(0)
    print(f"torch threads: {torch.get_num_threads()}")

    big = rng.normal(0, 1, (4096, 4096)).astype(np.float32)
    scale = 0.27  # e.g. 1 Å/px micrographs, 150 Å particles, 40-px target
    print(
        f"rescale 4096² -> {round(4096 * scale)}², ours (torch anti-aliased bilinear): {timed(lambda: preprocess.rescale_image(big, scale), r):.3f} s"
    )
    print(f"rescale 4096² reference, Gaussian + scipy linear:     {timed(lambda: scipy_resize(big, scale), r):.3f} s")
    print(f"rescale 4096² reference, Fourier crop:                {timed(lambda: fourier_crop(big, scale), r):.3f} s")

    for size in (1024, 1518):
        image = rng.normal(0, 1, (size, size)).astype(np.float32)
        t = timed(lambda: preprocess.normalise_micrograph(image, PARTICLE_DIAMETER_PX), r)
        print(f"normalise {size}²: {t:.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "bgal.toml"
        folder = ASSETS / "empiar10017_bgal_bin4"
        project.write_text(
            "[[dataset]]\nname = 'bgal'\n"
            f"micrographs = '{folder}/*.png'\ncoordinates = '{folder}/*.csv'\n"
            "pixel_size = 7.08\ndiameter = 191.0\n"
        )
        specs = project.load_project(project)
        stem = specs[0].splits["train"][0]
        t = timed(lambda: batches._prepare(specs[0], stem, PARTICLE_DIAMETER_PX), r)
        print(
            f"prepare one 1024² PNG at {PARTICLE_DIAMETER_PX:g}-px particles (read, rescale x1.48, normalise, background): {t:.3f} s"
        )
        cache = Path(tmp) / "cache"
        batches._prepare_via_disk(specs[0], stem, PARTICLE_DIAMETER_PX, cache)
        t = timed(lambda: batches._prepare_via_disk(specs[0], stem, PARTICLE_DIAMETER_PX, cache), r)
        print(f"the same, read back from the disk cache (cache_dir): {t * 1e3:.1f} ms")
        for rotate, jitter in ((False, (1.0, 1.0)), (True, (1.0, 1.0)), (True, (0.5, 2.0))):

            def cold() -> None:
                batches.CropBatches(specs, rotate=rotate, scale_jitter=jitter, batches_per_epoch=1).batch(0)

            stream = batches.CropBatches(specs, rotate=rotate, scale_jitter=jitter, batches_per_epoch=50)
            for index in range(len(stream)):  # fill the cache
                stream.batch(index)
            warm = timed(lambda: [stream.batch(i) for i in range(len(stream))], 1) / len(stream)
            print(
                f"batch of 4 crops 368², rotate={rotate}, jitter={jitter}: cold {timed(cold, r):.3f} s, warm {warm * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
