"""Projected electrostatic potential of many rotated copies of a model, on one fine 2-D grid.

Projection approximation: every atom of an element, over all copies, is deposited into one
2-D histogram (bilinear, ``np.bincount`` over all atoms of a band of rows: the fast pattern, in
bounded memory), whose spectrum is multiplied by that element's effective form factor:
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

from hydrapicker.simulate import blocks
from hydrapicker.simulate.structure import AtomicModel

__all__ = [
    "POTENTIAL_CONSTANT",
    "BandedDeposit",
    "FineGrid",
    "Particle",
    "deposit",
    "form_factor",
    "water_form_factor",
    "particle_spectrum",
    "phase_from_spectrum",
    "radial_rows",
    "radial_table",
]

#: h^2 / (2 pi m0 e) in V Å^2: projected potential = this x inverse FT of the form factor.
POTENTIAL_CONSTANT: float = 6.62607015e-34**2 / (2 * np.pi * 9.1093837015e-31 * 1.602176634e-19) * 1e20

_HYDROGEN_MASS = 1.008


@dataclass(frozen=True)
class FineGrid:
    """The periodic 2-D grid the potential and exit wave live on.

    Maps over its ``rfft2`` layout are made a block of rows at a time (:meth:`row_blocks`,
    :mod:`.blocks`); nothing of the grid's size is cached.
    """

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

    def row_blocks(self) -> list[slice]:
        """Row slices covering the grid; they index the full and the rfft2 layout alike."""
        return blocks.row_blocks(self.shape[0], self.shape[1])

    def rfft_q2(self, rows: slice) -> np.ndarray:
        """q^2 (1/Å^2), float64, on ``rows`` of the rfft2 layout."""
        qy, qx = self.rfft_freqs
        return (qy[rows] ** 2 + qx**2).astype(np.float64)

    def rfft_q(self, rows: slice) -> np.ndarray:
        """|q| (1/Å), float32, on ``rows`` of the rfft2 layout."""
        return np.sqrt(self.rfft_q2(rows)).astype(np.float32)

    @cached_property
    def rfft_q_max(self) -> float:
        """The largest |q| of the rfft2 layout, exactly as the whole map's ``max()`` gives it.

        Rounding is monotonic, so the largest q^2 lies in the row of the largest |qy|.
        """
        row = int(np.argmax(np.abs(self.rfft_freqs[0][:, 0])))
        return float(self.rfft_q(slice(row, row + 1)).max())


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


def radial_table(grid: FineGrid, profile) -> tuple[np.ndarray, np.ndarray]:
    """A radial function ``profile(q)`` (q in 1/Å) tabulated from 0 to the grid's largest |q|.

    :func:`radial_rows` interpolates it: the per-pixel cost is one ``np.interp``, not a handful
    of exponentials, and the table (64 kB) is what is worth caching, not the map (400 MB at K3).
    """
    table_q = np.linspace(0.0, grid.rfft_q_max * 1.0001, 8192)
    return table_q, profile(table_q)


def radial_rows(grid: FineGrid, table: tuple[np.ndarray, np.ndarray], rows: slice) -> np.ndarray:
    """A :func:`radial_table` on ``rows`` of the grid's rfft2 layout, float32."""
    return np.interp(grid.rfft_q(rows), *table).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _element_table(
    grid: FineGrid, element: str, hydrogens: float, solvent_density: float, volume_per_da: float, b_factor: float
) -> tuple[np.ndarray, np.ndarray]:
    # Cached because every micrograph of a dataset shares the grid.
    return radial_table(
        grid, lambda q: effective_form_factor(element, q**2, hydrogens, solvent_density, volume_per_da, b_factor)
    )


def _element_transfer(grid: FineGrid, table: tuple[np.ndarray, np.ndarray], rows: slice) -> np.ndarray:
    # Everything that multiplies an element's atom histogram, including undoing bilinear deposition.
    return radial_rows(grid, table, rows) * _deposit_correction(grid, rows)


def deposit(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear histogram of points (fine pixels, x = col, y = row), float64.

    Points beyond the grid are clamped onto its edge (the field's margin is cut away later).
    """
    rows, cols = shape
    x = np.clip(x, 0.0, cols - 1.01)  # 1.01: x may be float32, whose spacing near 4096 is 5e-4
    y = np.clip(y, 0.0, rows - 1.01)
    return _bilinear(x, y, cols, 0, rows).reshape(rows, cols)


def _bilinear(x: np.ndarray, y: np.ndarray, cols: int, first_row: int, n_rows: int) -> np.ndarray:
    # Flat float64 histogram of rows first_row .. first_row + n_rows - 1 of clamped points whose
    # four corners all fall in those rows.
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    index = (y0.astype(np.int64) - first_row) * cols + x0.astype(np.int64)
    n = n_rows * cols
    gx = 1.0 - fx
    hist = np.bincount(index, weights=gx * (1.0 - fy), minlength=n)
    hist += np.bincount(index + 1, weights=fx * (1.0 - fy), minlength=n)
    hist += np.bincount(index + cols, weights=gx * fy, minlength=n)
    hist += np.bincount(index + cols + 1, weights=fx * fy, minlength=n)
    return hist


class BandedDeposit:
    """:func:`deposit` of points handed over in pieces, made one band of rows at a time, float32.

    :meth:`histogram` equals ``deposit(shape, concatenate(xs), concatenate(ys)).astype(np.float32)``
    bit for bit, where ``xs``, ``ys`` are the pieces given to :meth:`add` cast to ``dtype``:
    each of deposit's four bincounts sums a bin's weights in input order, and a bin receives
    points of one row only (of the row above for the last two), so regrouping the points by
    row band, stably, changes no sum. What is held is the points themselves (8 bytes each as
    float32), never a float64 histogram of the whole grid (800 MB at K3) nor the temporaries of
    all points at once.
    """

    def __init__(self, shape: tuple[int, int], dtype: type, band_rows: int | None = None) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.band_rows = band_rows or max(1, blocks.BLOCK_PIXELS // self.shape[1])
        self.n_bands = -(-self.shape[0] // self.band_rows)
        self.size = 0
        self._pieces: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.n_bands)]

    def _clamp(self, values: np.ndarray, axis: int) -> np.ndarray:
        # deposit()'s clamp (axis 0: y, 1: x), in the dtype the concatenated points would have had.
        return np.clip(values.astype(self.dtype, copy=False), 0.0, self.shape[axis] - 1.01)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add points (fine pixels); they keep their dtype until :meth:`histogram`."""
        x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
        if x.size == 0:
            return
        band = (self._clamp(y, 0).astype(np.int64) // self.band_rows).astype(np.min_scalar_type(self.n_bands))
        order = np.argsort(band, kind="stable")  # a radix sort of small integers
        counts = np.bincount(band, minlength=self.n_bands)
        x, y = x[order], y[order]
        start = 0
        for b in np.flatnonzero(counts):
            stop = start + int(counts[b])
            self._pieces[b].append((x[start:stop], y[start:stop]))
            start = stop
        self.size += x.size

    def histogram(self) -> np.ndarray:
        """The float32 ``[rows, cols]`` histogram; the points are let go band by band."""
        rows, cols = self.shape
        out = np.empty(self.shape, dtype=np.float32)
        carry_x = carry_y = np.empty(0, dtype=self.dtype)  # points of the previous band's last row
        for b in range(self.n_bands):
            r0, r1 = b * self.band_rows, min((b + 1) * self.band_rows, rows)
            pieces, self._pieces[b] = self._pieces[b], []
            if not pieces and carry_x.size == 0:
                out[r0:r1] = 0.0
                continue
            x = self._clamp(np.concatenate([carry_x, *(p[0] for p in pieces)]), 1)
            y = self._clamp(np.concatenate([carry_y, *(p[1] for p in pieces)]), 0)
            del pieces
            # Local rows r0 - 1 .. r1: the carried points reach row r0, this band's last row reaches r1.
            hist = _bilinear(x, y, cols, r0 - 1, r1 - r0 + 2).reshape(-1, cols)
            out[r0:r1] = hist[1:-1].astype(np.float32)
            last = np.floor(y) == r1 - 1
            carry_x, carry_y = x[last], y[last]
        self.size = 0
        return out


def _deposit_correction(grid: FineGrid, rows: slice) -> np.ndarray:
    # Bilinear deposition is a convolution with a triangle (sinc^2 in Fourier); undo it, capped
    # where it would amplify the fine grid's own Nyquist corner.
    qy, qx = grid.rfft_freqs
    fy = np.sinc(qy[rows] * grid.spacing) ** 2
    fx = np.sinc(qx * grid.spacing) ** 2
    return (1.0 / np.maximum(fy * fx, 1.0 / 3.0)).astype(np.float32)


#: Atoms projected at once: bounds the temporaries of projection and deposition (~50 bytes an atom).
_ATOMS_PER_PIECE = 1 << 21


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
        # Rows 0 and 1 of every rotation, stacked: one BLAS product projects many copies.
        rot = (np.concatenate([p.rotation[:2] for p in whole]) / grid.spacing).astype(np.float32)  # [2P, 3]
        centres = np.asarray([p.centre for p in whole], dtype=np.float32).reshape(-1, 1)  # [2P, 1]
    # Whole copies are projected in float32, cut ones in float64; all are deposited in the wider.
    dtype = np.float64 if cut else np.float32
    for element, coords in model.coords.items():
        points = BandedDeposit(grid.shape, dtype)
        if whole:
            atoms = coords.T.astype(np.float32)
            step = 2 * max(1, _ATOMS_PER_PIECE // max(1, len(coords)))
            for start in range(0, len(rot), step):
                # x of copy p in row 2p, y in row 2p + 1
                xy = rot[start : start + step] @ atoms + centres[start : start + step]
                points.add(xy[0::2], xy[1::2])
            del xy
        xs, ys, n_pending = [], [], 0
        for p in cut:
            normal, offset = p.cut
            kept = coords[coords @ normal < offset]
            xy = kept @ p.rotation[:2].T / grid.spacing + np.asarray(p.centre)
            xs.append(xy[:, 0])
            ys.append(xy[:, 1])
            n_pending += len(xy)
            if n_pending >= _ATOMS_PER_PIECE:
                points.add(np.concatenate(xs), np.concatenate(ys))
                xs, ys, n_pending = [], [], 0
        if xs:
            points.add(np.concatenate(xs), np.concatenate(ys))
        if points.size == 0:
            continue
        spectrum = scipy.fft.rfft2(points.histogram(), workers=workers)
        del points
        table = _element_table(
            grid,
            element,
            float(hydrogens_per_atom.get(element, 0.0)),
            float(solvent_density),
            float(volume_per_da),
            float(atom_b_factor),
        )
        for rows in grid.row_blocks():
            total[rows] += spectrum[rows] * _element_transfer(grid, table, rows)
        del spectrum
    return total


def phase_from_spectrum(spectrum: np.ndarray, grid: FineGrid, sigma: float, workers: int = 1) -> np.ndarray:
    """Phase (rad) on the fine grid from a potential spectrum; ``sigma`` is the interaction constant (rad / V Å)."""
    projected = scipy.fft.irfft2(spectrum, s=grid.shape, workers=workers)  # Å x atoms per pixel
    projected *= np.float32(sigma * POTENTIAL_CONSTANT / grid.pixel_area)
    return projected
