"""Projected electrostatic potential of many rotated copies of a model, on one fine 2-D grid.

Projection approximation: every atom of an element, over all copies, is deposited into one
2-D histogram (bilinear, one ``np.bincount`` per element for the whole field: the fast
pattern), whose spectrum is multiplied by that element's effective form factor:
Peng et al. (1996) 5-Gaussian electron form factor (``gemmi.Element(el).c4322``), plus
implicit hydrogens, minus the solvent the atom displaces (a Gaussian of the atom's volume,
Fraser et al. 1978), times an atomic displacement factor. The sum of these spectra is the
projected potential's spectrum; :func:`phase_from_spectrum` turns it into a phase (rad).

Grid convention: a fine-grid pixel ``[row, col]`` has its centre at ``(x, y) = (col, row) *
spacing`` Å; positions given in fine pixels are ``x = col``, ``y = row``. The FFTs make the field periodic;
particles are kept inside it (deposition clamps stray atoms onto its edge, in the cut-away margin).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.fft

from hydrapicker.simulate.structure import AtomicModel

__all__ = [
    "POTENTIAL_CONSTANT",
    "FineGrid",
    "Particle",
    "deposit",
    "form_factor",
    "water_form_factor",
    "particle_spectrum",
    "phase_from_spectrum",
    "radial_on_grid",
]

#: h^2 / (2 pi m0 e) in V Å^2: projected potential = this x inverse FT of the form factor.
POTENTIAL_CONSTANT: float = 6.62607015e-34**2 / (2 * np.pi * 9.1093837015e-31 * 1.602176634e-19) * 1e20

_HYDROGEN_MASS = 1.008


@dataclass(frozen=True)
class FineGrid:
    """The periodic 2-D grid the potential and exit wave live on."""

    shape: tuple[int, int]  # rows, cols
    spacing: float  # Å per fine pixel

    @property
    def pixel_area(self) -> float:
        return self.spacing**2

    @cached_property
    def rfft_freqs(self) -> tuple[np.ndarray, np.ndarray]:
        """(qy ``[rows, 1]``, qx ``[1, cols//2+1]``) in 1/Å for the rfft2 layout."""
        qy = scipy.fft.fftfreq(self.shape[0], d=self.spacing)[:, None]
        qx = scipy.fft.rfftfreq(self.shape[1], d=self.spacing)[None, :]
        return qy, qx

    @cached_property
    def rfft_q2(self) -> np.ndarray:
        qy, qx = self.rfft_freqs
        return (qy**2 + qx**2).astype(np.float64)

    @cached_property
    def rfft_q(self) -> np.ndarray:
        return np.sqrt(self.rfft_q2).astype(np.float32)


@dataclass(frozen=True)
class Particle:
    """One copy of the model in the field.

    Attributes:
        rotation: ``[3, 3]`` matrix taking model coordinates to the field frame (x = column,
            y = row, z = beam direction).
        centre: ``(x, y)`` in fine pixels.
        cut: optional ``(normal[3], offset)``: keep only atoms with ``normal . r < offset`` (Å,
            model frame): a broken or partial particle.
    """

    rotation: np.ndarray
    centre: tuple[float, float]
    cut: tuple[np.ndarray, float] | None = None


def form_factor(element: str, q2: np.ndarray) -> np.ndarray:
    """Peng 5-Gaussian electron form factor (Å) at squared spatial frequency ``q2`` (1/Å^2, q = 1/d)."""
    import gemmi

    coefs = gemmi.Element(element).c4322.get_coefs()
    a, b = coefs[:5], coefs[5:]
    # Peng's s is sin(theta)/lambda = q/2.
    s2 = np.asarray(q2, dtype=np.float64) / 4.0
    out = np.zeros_like(s2)
    for ai, bi in zip(a, b):
        out += ai * np.exp(-bi * s2)
    return out


def water_form_factor(q2: np.ndarray) -> np.ndarray:
    """Form factor of one water molecule (O + 2 H, independent atoms), Å."""
    return form_factor("O", q2) + 2.0 * form_factor("H", q2)


def effective_form_factor(
    element: str,
    q2: np.ndarray,
    hydrogens: float,
    solvent_density: float,
    volume_per_da: float,
    b_factor: float,
) -> np.ndarray:
    """Form factor of an atom with its implicit hydrogens, minus the solvent it displaces."""
    import gemmi

    f = form_factor(element, q2) + hydrogens * form_factor("H", q2)
    if solvent_density > 0:
        volume = volume_per_da * (gemmi.Element(element).weight + hydrogens * _HYDROGEN_MASS)
        f_w0 = float(water_form_factor(np.zeros(1))[0])
        f = f - solvent_density * volume * f_w0 * np.exp(-np.pi * volume ** (2.0 / 3.0) * q2)
    return f * np.exp(-b_factor * q2 / 4.0)


def radial_on_grid(grid: FineGrid, profile) -> np.ndarray:
    """Evaluate a radial function ``profile(q)`` (q in 1/Å) on the grid's rfft layout, float32.

    Tabulated on a fine 1-D grid and interpolated: the per-pixel cost is one ``np.interp``,
    not a handful of exponentials.
    """
    q = grid.rfft_q
    table_q = np.linspace(0.0, float(q.max()) * 1.0001, 8192)
    return np.interp(q, table_q, profile(table_q)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _element_transfer(
    grid: FineGrid, element: str, hydrogens: float, solvent_density: float, volume_per_da: float, b_factor: float
) -> np.ndarray:
    # Everything that multiplies an element's atom histogram, including undoing bilinear
    # deposition; cached because every micrograph of a dataset shares the grid.
    factor = radial_on_grid(
        grid, lambda q: effective_form_factor(element, q**2, hydrogens, solvent_density, volume_per_da, b_factor)
    )
    return factor * _deposit_correction(grid)


def deposit(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear histogram of points (fine pixels, x = col, y = row).

    Points beyond the grid are clamped onto its edge (the field's margin is cut away later).
    """
    rows, cols = shape
    x = np.clip(x, 0.0, cols - 1.01)  # 1.01: x may be float32, whose spacing near 4096 is 5e-4
    y = np.clip(y, 0.0, rows - 1.01)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    index = y0.astype(np.int64) * cols + x0.astype(np.int64)
    n = rows * cols
    gx = 1.0 - fx
    hist = np.bincount(index, weights=gx * (1.0 - fy), minlength=n)
    hist += np.bincount(index + 1, weights=fx * (1.0 - fy), minlength=n)
    hist += np.bincount(index + cols, weights=gx * fy, minlength=n)
    hist += np.bincount(index + cols + 1, weights=fx * fy, minlength=n)
    return hist.reshape(rows, cols)


def _deposit_correction(grid: FineGrid) -> np.ndarray:
    # Bilinear deposition is a convolution with a triangle (sinc^2 in Fourier); undo it, capped
    # where it would amplify the fine grid's own Nyquist corner.
    qy, qx = grid.rfft_freqs
    fy = np.sinc(qy * grid.spacing) ** 2
    fx = np.sinc(qx * grid.spacing) ** 2
    return (1.0 / np.maximum(fy * fx, 1.0 / 3.0)).astype(np.float32)


def particle_spectrum(
    model: AtomicModel,
    particles: list[Particle],
    grid: FineGrid,
    *,
    hydrogens_per_atom: dict[str, float],
    solvent_density: float,
    volume_per_da: float,
    atom_b_factor: float,
    workers: int = 1,
) -> np.ndarray:
    """rfft2 spectrum (Å x atoms per fine pixel) of the particles' projected potential.

    ``phase_from_spectrum`` of the result is the particles' phase; ``solvent_density`` (water
    molecules / Å^3, 0 in vacuum) sets how much solvent each atom displaces.
    """
    total = np.zeros((grid.shape[0], grid.shape[1] // 2 + 1), dtype=np.complex64)
    if not particles:
        return total
    whole = [p for p in particles if p.cut is None]
    cut = [p for p in particles if p.cut is not None]
    if whole:
        # Rows 0 and 1 of every rotation, stacked: one BLAS product projects all copies.
        rot = (np.concatenate([p.rotation[:2] for p in whole]) / grid.spacing).astype(np.float32)  # [2P, 3]
        centres = np.asarray([p.centre for p in whole], dtype=np.float32).reshape(-1, 1)  # [2P, 1]
    for element, coords in model.coords.items():
        xs, ys = [], []
        if whole:
            xy = rot @ coords.T.astype(np.float32) + centres  # [2P, atoms]: x of copy p in row 2p, y in 2p+1
            xs.append(xy[0::2].ravel())
            ys.append(xy[1::2].ravel())
        for p in cut:
            normal, offset = p.cut
            kept = coords[coords @ normal < offset]
            xy = kept @ p.rotation[:2].T / grid.spacing + np.asarray(p.centre)
            xs.append(xy[:, 0])
            ys.append(xy[:, 1])
        x = np.concatenate(xs)
        if x.size == 0:
            continue
        hist = deposit(grid.shape, x, np.concatenate(ys))
        transfer = _element_transfer(
            grid,
            element,
            float(hydrogens_per_atom.get(element, 0.0)),
            float(solvent_density),
            float(volume_per_da),
            float(atom_b_factor),
        )
        total += scipy.fft.rfft2(hist.astype(np.float32), workers=workers) * transfer
    return total


def phase_from_spectrum(spectrum: np.ndarray, grid: FineGrid, sigma: float, workers: int = 1) -> np.ndarray:
    """Phase (rad) on the fine grid from a potential spectrum; ``sigma`` is the interaction constant (rad / V Å)."""
    projected = scipy.fft.irfft2(spectrum, s=grid.shape, workers=workers)  # Å x atoms per pixel
    projected *= np.float32(sigma * POTENTIAL_CONSTANT / grid.pixel_area)
    return projected
