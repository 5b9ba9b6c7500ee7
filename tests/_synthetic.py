"""Synthetic micrographs for tests: Gaussian spots at known centres on white noise."""

from __future__ import annotations

import numpy as np


def gaussian_spots(
    shape: tuple[int, int], xy: np.ndarray, sigma: float, *, contrast: float = 1.0, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """float32 ``[row, col]`` image: white noise of std ``noise`` plus ``contrast`` x a Gaussian of
    std ``sigma`` px at each ``(x, y)`` (x = column, y = row); negative contrast = dark particles."""
    rows, cols = np.indices(shape)
    image = np.random.default_rng(seed).normal(0.0, noise, shape)
    for x, y in xy:
        image += contrast * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)
