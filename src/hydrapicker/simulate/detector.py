"""Detector: Fourier crop to the detector pixel, residual motion, pixel MTF, shot noise.

The intensity computed on the fine grid is band-limited to the detector's Nyquist by cropping
its spectrum (ideal anti-aliasing, and pixel ``i`` of the result sits exactly on fine pixel
``i * oversample``), blurred by residual motion and by the counting detector's pixel response
(``sinc`` in both axes), then turned into electron counts: Poisson(dose x pixel area x I).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["fourier_crop", "detector_blur", "expected_counts", "shot_noise"]


def fourier_crop(image: np.ndarray, factor: int, workers: int = 1) -> np.ndarray:
    """Downsample a real periodic image by an integer ``factor`` by cropping its spectrum.

    The mean is preserved; ``image.shape`` must be divisible by ``factor``.
    """
    rows, cols = image.shape
    assert rows % factor == 0 and cols % factor == 0, (image.shape, factor)
    if factor == 1:
        return image.astype(np.float64, copy=True)
    out_rows, out_cols = rows // factor, cols // factor
    spectrum = scipy.fft.rfft2(image, workers=workers)
    half = out_rows // 2
    cropped = np.concatenate(
        [spectrum[: out_rows - half, : out_cols // 2 + 1], spectrum[rows - half :, : out_cols // 2 + 1]]
    )
    return scipy.fft.irfft2(cropped, s=(out_rows, out_cols), workers=workers) / factor**2


def detector_blur(image: np.ndarray, motion_path_px: np.ndarray | None, mtf: bool, workers: int = 1) -> np.ndarray:
    """Apply residual motion (a path of ``[k, 2]`` (x, y) shifts in pixels, averaged) and the
    pixel MTF ``sinc(fx) sinc(fy)`` (f in cycles per detector pixel)."""
    if motion_path_px is None and not mtf:
        return image
    rows, cols = image.shape
    fy = scipy.fft.fftfreq(rows)[:, None]
    fx = scipy.fft.rfftfreq(cols)[None, :]
    transfer = np.ones((rows, cols // 2 + 1))
    if mtf:
        transfer = transfer * np.sinc(fy) * np.sinc(fx)
    spectrum = scipy.fft.rfft2(image, workers=workers) * transfer
    if motion_path_px is not None and len(motion_path_px):
        kernel = np.zeros_like(spectrum)
        for dx, dy in motion_path_px:
            # A shift's phase ramp is separable: an outer product of two 1-D ramps.
            kernel += np.exp(-2j * np.pi * fy * dy) * np.exp(-2j * np.pi * fx * dx)
        spectrum *= kernel / len(motion_path_px)
    return scipy.fft.irfft2(spectrum, s=image.shape, workers=workers)


def expected_counts(intensity: np.ndarray, dose: float, pixel_size: float) -> np.ndarray:
    """Mean electron count per pixel: dose (e/Å^2) x pixel area x relative intensity."""
    return np.clip(intensity, 0.0, None) * (dose * pixel_size**2)


def shot_noise(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts with the given means, as float32."""
    return rng.poisson(expected).astype(np.float32)
