"""Renderings: turn a simulated detector image into what a picker is handed.

Real micrographs arrive as float motion-corrected sums, binned, low-pass filtered, denoised
(JANNI / Topaz-Denoise style) or as 8-bit contrast-stretched PNG/JPEG exports, often several of
these at once. :func:`render` applies a :class:`~hydrapicker.simulate.config.Rendering` and maps
the truth coordinates into the stored image's pixel frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from hydrapicker.io.files import atomic_path
from hydrapicker.io.micrograph import write_mrc
from hydrapicker.simulate.blocks import row_blocks
from hydrapicker.simulate.config import Rendering

__all__ = ["Rendered", "render", "render_image", "binned_coordinate", "write_rendered", "random_rendering"]


@dataclass
class Rendered:
    """A stored micrograph: float32 (MRC), uint16 (TIFF) or uint8 (PNG/JPEG) ``[row, col]``."""

    data: np.ndarray
    pixel_size: float
    rendering: Rendering


def binned_coordinate(coordinate: np.ndarray, factor: int) -> np.ndarray:
    """Detector-pixel coordinate -> coordinate after block-mean binning by ``factor``.

    Binned pixel j averages detector pixels ``factor*j .. factor*j + factor-1``, so its centre
    is at detector coordinate ``factor*j + (factor-1)/2``.
    """
    return (np.asarray(coordinate, dtype=np.float64) - (factor - 1) / 2.0) / factor


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = (s // factor * factor for s in image.shape)
    image = image[:rows, :cols]
    return image.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def _lowpass(image: np.ndarray, resolution_A: float, pixel_size: float) -> np.ndarray:
    # Gaussian whose transfer is 1/2 at q = 1/resolution: exp(-2 pi^2 sigma^2 q^2) = 1/2.
    sigma_px = np.sqrt(np.log(2) / 2) / np.pi * resolution_A / pixel_size
    return ndimage.gaussian_filter(image, sigma_px, mode="reflect")


def _stripes(image: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    # Reflected-padding bands, as denoisers that pad their tiles leave at the frame border.
    out = image.copy()
    for axis in (0, 1):
        for side in (0, 1):
            w = int(rng.integers(max(1, width // 2), width + 1))
            if w <= 0 or w * 3 >= image.shape[axis]:
                continue
            index = [slice(None)] * 2
            source = [slice(None)] * 2
            if side == 0:
                index[axis] = slice(0, w)
                source[axis] = slice(2 * w, w, -1)
            else:
                index[axis] = slice(image.shape[axis] - w, image.shape[axis])
                source[axis] = slice(image.shape[axis] - w - 2, image.shape[axis] - 2 * w - 2, -1)
            band = out[tuple(source)]
            # Stripes run perpendicular to the border: smear each band along the border normal.
            out[tuple(index)] = np.repeat(band.mean(axis=axis, keepdims=True), w, axis=axis)
    return out


def to_eight_bit(image: np.ndarray, stretch: tuple[float, float]) -> np.ndarray:
    """Contrast-stretch: the ``stretch`` percentiles map to 0 and 255, clipped, uint8."""
    return _stretch(image, stretch, np.uint8)


def to_sixteen_bit(image: np.ndarray, stretch: tuple[float, float]) -> np.ndarray:
    """Contrast-stretch: the ``stretch`` percentiles map to 0 and 65535, clipped, uint16."""
    return _stretch(image, stretch, np.uint16)


def _stretch(image: np.ndarray, stretch: tuple[float, float], dtype: type) -> np.ndarray:
    top = float(np.iinfo(dtype).max)
    lo, hi = np.percentile(image, stretch)
    if hi <= lo:
        hi = lo + 1.0
    scaled = (image - lo) / (hi - lo) * top
    return np.clip(np.rint(scaled), 0, top).astype(dtype)


def render_image(
    counts: np.ndarray,
    expected: np.ndarray,
    detector_pixel_size: float,
    rendering: Rendering,
    rng: np.random.Generator,
) -> Rendered:
    """Apply ``rendering`` to a detector image (counts) with its noiseless expectation."""
    image = counts.astype(np.float64)
    if rendering.denoise is not None:
        # A learned denoiser returns roughly the noiseless image, a little residual noise and
        # some smoothing; emulate that rather than train one. In place, a block of rows at a
        # time: a binned K3 detector image is 750 MB in float64.
        for block in row_blocks(*image.shape):
            image[block] = expected[block] + rendering.denoise * (image[block] - expected[block])
        ndimage.gaussian_filter(image, 1.0 * rendering.bin, output=image)
    if rendering.bin > 1:
        image = _block_mean(image, rendering.bin)
    pixel = detector_pixel_size * rendering.bin
    if rendering.lowpass_A is not None:
        image = _lowpass(image, rendering.lowpass_A, pixel)
    if rendering.border_stripes_px > 0:
        image = _stripes(image, rendering.border_stripes_px, rng)
    if rendering.eight_bit is not None:
        return Rendered(to_eight_bit(image, rendering.stretch), pixel, rendering)
    if rendering.sixteen_bit:
        return Rendered(to_sixteen_bit(image, rendering.stretch), pixel, rendering)
    return Rendered(image.astype(np.float32), pixel, rendering)


def render(sim, rendering: Rendering, rng: np.random.Generator) -> tuple[Rendered, dict, dict]:
    """Render a :class:`~hydrapicker.simulate.micrograph.SimulatedMicrograph`.

    Returns the stored image and the particle and decoy tables with ``x``, ``y`` (and decoy
    ``diameter``) converted to the stored image's pixels.
    """
    rendered = render_image(sim.counts, sim.expected, sim.pixel_size, rendering, rng)
    rows, cols = rendered.data.shape

    def convert(table: dict) -> dict:
        out = dict(table)
        out["x"] = binned_coordinate(table["x"], rendering.bin)
        out["y"] = binned_coordinate(table["y"], rendering.bin)
        if "diameter" in out:
            out["diameter"] = np.asarray(table["diameter"], dtype=np.float64) / rendering.bin
        # Binning drops a partial last block; keep what still lies on the stored image.
        keep = (out["x"] >= -0.5) & (out["x"] < cols - 0.5) & (out["y"] >= -0.5) & (out["y"] < rows - 0.5)
        return {k: np.asarray(v)[keep] for k, v in out.items()}

    return rendered, convert(sim.particles), convert(sim.decoys)


def write_rendered(path: str | os.PathLike, rendered: Rendered) -> Path:
    """Write to ``path`` (its suffix must match the rendering), atomically."""
    path = Path(path)
    if rendered.rendering.sixteen_bit:
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, rendered.data)
        return path
    if rendered.rendering.eight_bit is None:
        write_mrc(path, rendered.data, rendered.pixel_size)
        return path
    from PIL import Image

    image = Image.fromarray(rendered.data, mode="L")
    with atomic_path(path) as tmp:
        if rendered.rendering.eight_bit == "jpg":
            image.save(tmp, format="JPEG", quality=int(rendered.rendering.jpeg_quality))
        else:
            image.save(tmp, format="PNG")
    return path


def random_rendering(rng: np.random.Generator, plain_probability: float = 0.5) -> Rendering:
    """A rendering for domain randomisation: plain float about half the time (docs/simulation.md
    found all-rendered training cost accuracy on raw-looking frames), otherwise a random mix."""
    if rng.random() < plain_probability:
        return Rendering("float")
    bin_ = int(rng.choice([1, 2], p=[0.6, 0.4]))
    denoise = float(rng.uniform(0.0, 0.4)) if rng.random() < 0.4 else None
    lowpass = float(rng.uniform(10.0, 30.0)) if rng.random() < 0.4 else None
    eight_bit = str(rng.choice(["png", "jpg"])) if rng.random() < 0.6 else None
    stretch = (0.0, 100.0) if rng.random() < 0.3 else (float(rng.uniform(0.1, 2.0)), float(rng.uniform(98.0, 99.9)))
    stripes = int(rng.integers(4, 24)) if (denoise is not None and rng.random() < 0.5) else 0
    parts = (
        [f"bin{bin_}"]
        + (["denoised"] if denoise is not None else [])
        + (["lowpass"] if lowpass else [])
        + ([eight_bit] if eight_bit else [])
    )
    return Rendering(
        name="-".join(parts),
        bin=bin_,
        lowpass_A=lowpass,
        denoise=denoise,
        border_stripes_px=stripes,
        eight_bit=eight_bit,
        stretch=stretch,
        jpeg_quality=int(rng.integers(60, 96)),
    )
