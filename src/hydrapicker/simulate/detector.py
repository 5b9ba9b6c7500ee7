"""Detector: Fourier crop to the detector pixel, residual motion, pixel MTF, shot noise.

The intensity computed on the fine grid is band-limited to the detector's Nyquist by cropping
its spectrum (ideal anti-aliasing, and pixel ``i`` of the result sits exactly on fine pixel
``i * oversample``), blurred by residual motion and by the counting detector's pixel response
(``sinc`` in both axes), then turned into electron counts: Poisson(dose x pixel area x I).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from hydrapicker.simulate.blocks import row_blocks

__all__ = ["fourier_crop", "intensity_fourier_crop", "detector_blur", "expected_counts", "shot_noise"]


def fourier_crop(image: np.ndarray, factor: int, workers: int = 1) -> np.ndarray:
    """Downsample a real periodic image by an integer ``factor`` by cropping its spectrum.

    The mean is preserved; ``image.shape`` must be divisible by ``factor``.
    """
    if factor == 1:
        return image.astype(np.float64, copy=True)
    return _crop(image.shape, lambda rows: image[rows], factor, None, workers)


def intensity_fourier_crop(wave: np.ndarray, factor: int, workers: int = 1) -> np.ndarray:
    """``fourier_crop(|wave|^2 as float64, factor)`` made in ``wave``'s memory: ``wave`` is lost.

    ``wave`` is complex64 and C-contiguous. Neither the intensity of the whole grid nor its
    spectrum (800 MB each at K3 size) is made: each block of rows is squared, transformed along
    its rows and cropped into rows of ``wave``'s buffer that have already been read. The result
    is the same bit for bit.
    """
    assert wave.dtype == np.complex64 and wave.flags.c_contiguous, (wave.dtype, wave.flags)
    rows, cols = wave.shape

    def intensity(block: slice) -> np.ndarray:
        w = wave[block]
        return (w.real**2 + w.imag**2).astype(np.float64)

    if factor == 1:
        out = wave.view(np.float64)  # row r of out is the 8 cols bytes of row r of wave
        for block in row_blocks(rows, cols):
            out[block] = intensity(block)
        return out
    # Row r of the complex128 row spectra ends at byte 16 keep (r + 1), at or before the end of
    # row r of wave, 8 cols (r + 1), since 2 keep <= cols: no row is written before it is read.
    return _crop(wave.shape, intensity, factor, wave.reshape(-1).view(np.complex128), workers)


def _crop(shape: tuple[int, int], rows_of, factor: int, scratch: np.ndarray | None, workers: int) -> np.ndarray:
    # rfft2 is an rfft along rows followed by an fft along columns: the first made a block of
    # rows at a time (rows_of(block) gives them), keeping only the columns the crop keeps, gives
    # rfft2's numbers from a fraction of its memory. scratch (1-D complex, or None) holds the
    # row spectra and then the cropped spectrum after them.
    rows, cols = shape
    assert rows % factor == 0 and cols % factor == 0, (shape, factor)
    out_rows, out_cols = rows // factor, cols // factor
    keep = out_cols // 2 + 1
    row_spectra = cropped = None
    if scratch is not None:
        assert scratch.size >= (rows + out_rows) * keep, (scratch.size, shape, factor)
        row_spectra = scratch[: rows * keep].reshape(rows, keep)
        cropped = scratch[rows * keep : (rows + out_rows) * keep].reshape(out_rows, keep)
    for block in row_blocks(rows, cols):
        spectrum = scipy.fft.rfft(rows_of(block), axis=1, workers=workers)
        if row_spectra is None:
            row_spectra = np.empty((rows, keep), dtype=spectrum.dtype)
        row_spectra[block] = spectrum[:, :keep]
    del spectrum
    row_spectra = scipy.fft.fft(row_spectra, axis=0, workers=workers, overwrite_x=True)
    half = out_rows // 2
    cropped = np.concatenate([row_spectra[: out_rows - half], row_spectra[rows - half :]], out=cropped)
    del row_spectra
    out = scipy.fft.irfft2(cropped, s=(out_rows, out_cols), workers=workers)
    out /= factor**2
    return out


def detector_blur(image: np.ndarray, motion_path_px: np.ndarray | None, mtf: bool, workers: int = 1) -> np.ndarray:
    """Apply residual motion (a path of ``[k, 2]`` (x, y) shifts in pixels, averaged) and the
    pixel MTF ``sinc(fx) sinc(fy)`` (f in cycles per detector pixel).

    The result is written into ``image`` (float, C-contiguous) and returned: besides it, only
    its half-plane spectrum is held, with the filters made a block of rows at a time.
    """
    if motion_path_px is None and not mtf:
        return image
    assert image.dtype in (np.float32, np.float64) and image.flags.c_contiguous, (image.dtype, image.flags)
    rows, cols = image.shape
    fy = scipy.fft.fftfreq(rows)[:, None]
    fx = scipy.fft.rfftfreq(cols)[None, :]
    spectrum = scipy.fft.rfft2(image, workers=workers)
    shifts = motion_path_px is not None and len(motion_path_px) > 0
    for block in row_blocks(rows, cols):
        transfer = np.ones((block.stop - block.start, cols // 2 + 1))
        if mtf:
            transfer = transfer * np.sinc(fy[block]) * np.sinc(fx)
        spectrum[block] *= transfer
        if shifts:
            kernel = np.zeros_like(spectrum[block])
            for dx, dy in motion_path_px:
                # A shift's phase ramp is separable: an outer product of two 1-D ramps.
                kernel += np.exp(-2j * np.pi * fy[block] * dy) * np.exp(-2j * np.pi * fx * dx)
            spectrum[block] *= kernel / len(motion_path_px)
    _inverse_rfft2_into(spectrum, image, workers)
    return image


def _inverse_rfft2_into(spectrum: np.ndarray, out: np.ndarray, workers: int) -> None:
    # irfft2(spectrum, s=out.shape) written into out a block of rows at a time, bit for bit:
    # irfft2 is an ifft along columns followed by an irfft along rows that applies the
    # 1 / (rows cols) of both as one factor, rounded from long double (pocketfft's norm_fct).
    # Holds no copy of the spectrum (irfft2 makes one); the spectrum is overwritten.
    rows, cols = out.shape
    spectrum = scipy.fft.ifft(spectrum, axis=0, norm="forward", workers=workers, overwrite_x=True)
    scale = out.dtype.type(np.longdouble(1) / np.longdouble(rows * cols))
    for block in row_blocks(rows, cols):
        out[block] = scipy.fft.irfft(spectrum[block], n=cols, axis=1, norm="forward", workers=workers) * scale


def expected_counts(intensity: np.ndarray, dose: float, pixel_size: float) -> np.ndarray:
    """Mean electron count per pixel: dose (e/Å^2) x pixel area x relative intensity."""
    counts = np.clip(intensity, 0.0, None)
    counts *= dose * pixel_size**2
    return counts


def shot_noise(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts with the given means, as float32."""
    return rng.poisson(expected).astype(np.float32)
