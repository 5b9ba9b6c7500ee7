"""The input transform: what a micrograph goes through before the network, and how picks come back.

Conventions, stated once:

- A micrograph is a float32 array ``[row, col]`` as stored; a particle centre is ``(x, y)``
  = (column, row), pixel centres at integers (see :mod:`hydrapicker.io.picks`).
- Rescaling maps the pixel-*edge* frame linearly, so a feature at ``x`` in the stored
  micrograph sits at ``x' = (x + 0.5) * scale - 0.5`` in the rescaled one
  (:func:`to_rescaled`); images (:func:`rescale_image`) and coordinates agree on it.
- Every micrograph is rescaled so that its particle is the model's ``target_diameter_px``
  across (:meth:`hydrapicker.particle_size.ParticleSize.scale`), then locally normalised (:func:`normalise_micrograph`).
  Training (:mod:`hydrapicker.data.batches`) and picking (:mod:`hydrapicker.picking`) both call
  :func:`prepare_micrograph`, so the network sees the same input in both.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from hydrapicker.defaults import LOCAL_NORM_WINDOW, MAX_RESCALED_PIXELS, MAX_UPSCALE
from hydrapicker.errors import HydraPickerError

__all__ = [
    "antialias_sigma",
    "check_rescale",
    "from_rescaled",
    "normalise_micrograph",
    "prepare_micrograph",
    "rescale_image",
    "to_rescaled",
]


def prepare_micrograph(image: np.ndarray, scale: float, target_diameter_px: float, name: str = "") -> np.ndarray:
    """The micrograph as the model sees it: rescaled by ``scale``, locally normalised (float32 ``[row, col]``).

    Errors name ``name`` (the micrograph) when given.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise HydraPickerError(f"{name or 'micrograph'}: expected a 2-D image, got shape {image.shape}")
    check_rescale(image.shape, scale, target_diameter_px, name)
    try:
        return _normalise_in_place(rescale_image(image, scale), target_diameter_px)  # a new array: ours to overwrite
    except HydraPickerError as exc:
        raise HydraPickerError(f"{name}: {exc}" if name else str(exc)) from exc


# --- rescaling ----------------------------------------------------------------------------------


def check_rescale(shape: tuple[int, ...], scale: float, target_diameter_px: float, name: str = "") -> None:
    """Refuse a rescale that cannot be right, before any array is made: enlarging by more than
    ``MAX_UPSCALE``, more than ``MAX_RESCALED_PIXELS`` pixels, or less than one particle across.

    Raises:
        HydraPickerError: names ``name`` (the micrograph), the particle size in stored px and what to check.
    """
    where = f"{name}: " if name else ""
    if not (math.isfinite(scale) and scale > 0):
        raise HydraPickerError(f"{where}rescale factor must be positive, got {scale!r}")
    particle = f"the particle is {target_diameter_px / scale:.3g} px across"
    rows, cols = (max(1, round(n * scale)) for n in shape[:2])
    if scale > MAX_UPSCALE:
        raise HydraPickerError(
            f"{where}{particle}: it would be enlarged {scale:.3g}x to the model's {target_diameter_px:g} px, "
            f"more than {MAX_UPSCALE:g}x (check the diameter and the pixel size)"
        )
    if rows * cols > MAX_RESCALED_PIXELS:
        raise HydraPickerError(
            f"{where}{particle}: rescaled to {rows} x {cols} px, more than {MAX_RESCALED_PIXELS / 1e6:g} megapixels "
            "(check the diameter and the pixel size)"
        )
    if min(shape[0] * scale, shape[1] * scale) < target_diameter_px:
        raise HydraPickerError(
            f"{where}{particle}: the micrograph ({shape[0]} x {shape[1]} px) is smaller than one particle "
            "(check the diameter and the pixel size)"
        )


def to_rescaled(xy: np.ndarray, scale: float) -> np.ndarray:
    """Map ``(x, y)`` from the stored frame to the rescaled one: ``x' = (x + 0.5) * scale - 0.5``."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5


def from_rescaled(xy: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`to_rescaled`: ``x = (x' + 0.5) / scale - 0.5``."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) / scale - 0.5


def antialias_sigma(scale: float) -> float:
    # Gaussian that, added in quadrature to the ~0.5-px footprint of an output pixel,
    # widens it to 0.5 output px measured in input px: attenuates what would alias.
    return 0.5 * math.sqrt(1.0 / scale**2 - 1.0) if scale < 1 else 0.0


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resample ``image`` by ``scale`` (new px per old px), consistent with :func:`to_rescaled`.

    The output has ``round(rows * scale) x round(cols * scale)`` pixels. Linear
    interpolation; shrinking averages over each output pixel's footprint (torch's
    anti-aliased bilinear resize, a triangle filter as wide as 2/scale input px), so
    detail finer than the new sampling does not alias. Edges clamp. Chosen over Gaussian +
    scipy resampling and over a Fourier crop for speed (benchmarks/data_speed.py measures them).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise HydraPickerError(f"rescale factor must be positive, got {scale!r}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise HydraPickerError(f"expected a 2-D micrograph, got shape {image.shape}")
    if scale == 1.0:
        return image.copy()
    rows, cols = image.shape
    shape = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    # torch makes floor(n * scale) pixels: clamp-pad the far edges (which leaves the
    # mapping from the top-left corner unchanged) so that it makes enough to cut round().
    extra = [math.ceil(1.0 / scale) + 1 if math.floor(n * scale) < size else 0 for n, size in zip(image.shape, shape)]
    tensor = torch.from_numpy(image)[None, None]
    if any(extra):
        tensor = torch.nn.functional.pad(tensor, (0, extra[1], 0, extra[0]), mode="replicate")
    with torch.no_grad():
        # Output pixel o samples input (o + 0.5) / scale - 0.5: align_corners=False with
        # the scale factor itself, not one recomputed from the sizes.
        out = torch.nn.functional.interpolate(
            tensor,
            scale_factor=scale,
            mode="bilinear",
            align_corners=False,
            antialias=scale < 1,
            recompute_scale_factor=False,
        )
    return np.ascontiguousarray(out[0, 0, : shape[0], : shape[1]].numpy())


# --- normalisation ---------------------------------------------------------------------


def _smooth(image: np.ndarray, window: int) -> np.ndarray:
    """Broad local mean over a ``window``-px neighbourhood.

    Two passes of a box ``window / sqrt(2)`` wide: a triangle kernel as spread out (same
    std) as a ``window``-wide box, without a box's hard edges. Box filters cost the same
    at any width (a wide Gaussian costs far more), and a kernel this broad loses nothing
    when computed on a grid binned ``window // 12``-fold and interpolated back.
    """
    bin_ = max(1, window // 12)
    rows, cols = image.shape
    if bin_ > 1:
        padded = np.pad(image, ((0, -rows % bin_), (0, -cols % bin_)), mode="edge")
        image = padded.reshape(padded.shape[0] // bin_, bin_, padded.shape[1] // bin_, bin_).mean(axis=(1, 3))
    half = max(1, round(window / (math.sqrt(2) * bin_)))
    for axis in (0, 1, 0, 1):
        image = ndimage.uniform_filter1d(image, half, axis=axis, mode="reflect")
    if bin_ > 1:
        image = rescale_image(image, float(bin_))[:rows, :cols]
    return image


def _sample(image: np.ndarray, target: int = 250_000) -> np.ndarray:
    # A regular subsample is plenty for global robust statistics, at a fraction of the cost.
    step = max(1, int(math.sqrt(image.size / target)))
    return image[::step, ::step]


def normalise_micrograph(image: np.ndarray, diameter_px: float) -> np.ndarray:
    """Local normalisation: subtract a broad local background, divide by the local RMS.

    The window spans ``LOCAL_NORM_WINDOW`` (3) particle diameters, which beat a global
    z-score on real micrographs. Outliers (hot pixels, saturated
    8-bit stretches) are first clipped at ±20 robust σ, and the local RMS is floored at a
    tenth of its median so flat regions (padding stripes, clipped areas) stay flat
    instead of blowing up. The result is then shifted and scaled to zero mean and unit
    RMS over the whole micrograph.

    Returns:
        float32 array of ``image``'s shape.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise HydraPickerError(f"expected a 2-D micrograph, got shape {x.shape}")
    return _normalise_in_place(x.copy(), diameter_px)


def _normalise_in_place(x: np.ndarray, diameter_px: float) -> np.ndarray:
    """:func:`normalise_micrograph` of the float32 array ``x``, overwriting it: the same
    operations in the same order (the same numbers), with a few full-size arrays alive at a
    time instead of a dozen, which bounds the memory that preparing a large micrograph takes."""
    if not (math.isfinite(diameter_px) and diameter_px > 0):
        raise HydraPickerError(f"particle diameter must be a positive number of pixels, got {diameter_px!r}")
    if x.ndim != 2:
        raise HydraPickerError(f"expected a 2-D micrograph, got shape {x.shape}")
    sample = _sample(x)
    centre = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - centre)))
    if spread == 0:  # more than half the pixels equal: an 8-bit export with flat areas
        spread = float(x.std())
    if spread == 0:
        raise HydraPickerError("the micrograph is constant: nothing to normalise")
    np.clip(x, centre - 20 * spread, centre + 20 * spread, out=x)
    x -= centre  # well-scaled float32 before the running sums
    x /= spread
    window = max(3, int(round(LOCAL_NORM_WINDOW * diameter_px)))
    x -= _smooth(x, window)  # x is now the residual
    rms = _smooth(np.square(x), window)
    np.maximum(rms, 0, out=rms)
    np.sqrt(rms, out=rms)
    floor = max(0.1 * float(np.median(_sample(rms))), 1e-6)
    np.maximum(rms, floor, out=rms)
    x /= rms
    del rms
    x -= x.mean()
    std = float(x.std())
    if std > 0:
        x /= std
    return x
