"""Microscope optics: wavelength, interaction constant, wave aberration and envelopes.

Sign convention (Kirkland): ``chi(q) = pi lambda q^2 (Cs lambda^2 q^2 / 2 - defocus)`` with
defocus > 0 for underfocus, and the image wave is ``FT^-1[FT(psi) exp(-i chi)]``. With this
sign a weak phase object is dark at low frequencies in underfocus, as particles are in real
micrographs (checked by ``tests/test_simulate.py``). Astigmatism follows RELION: defocus U along
``angle`` (degrees from the x axis), V perpendicular.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hydrapicker.simulate.blocks import row_blocks

__all__ = ["Optics", "electron_wavelength", "interaction_constant", "wave_transfer", "apply_wave_transfer", "ctf_1d"]

_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
_C = 299792458.0


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (0.01969 Å at 300 kV)."""
    v = voltage_kv * 1e3
    return _H / np.sqrt(2 * _M0 * _E * v * (1 + _E * v / (2 * _M0 * _C**2))) * 1e10


def interaction_constant(voltage_kv: float) -> float:
    """sigma_e in rad / (V Å): phase shift per projected potential (6.52e-4 at 300 kV)."""
    v = voltage_kv * 1e3
    lam = electron_wavelength(voltage_kv)
    rest = _M0 * _C**2
    return 2 * np.pi / (lam * v) * (rest + _E * v) / (2 * rest + _E * v)


@dataclass(frozen=True)
class Optics:
    """Imaging conditions of one micrograph (lengths in Å)."""

    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_u: float = 15000.0
    defocus_v: float = 15000.0
    astigmatism_angle: float = 0.0  # degrees
    b_factor: float = 0.0
    focal_spread: float = 0.0
    illumination_aperture_mrad: float = 0.0
    aberration_free: bool = False  # in focus, Cs = 0: for geometry checks

    @property
    def wavelength(self) -> float:
        return electron_wavelength(self.voltage_kv)

    def defocus_at(self, angle: np.ndarray) -> np.ndarray:
        mean = 0.5 * (self.defocus_u + self.defocus_v)
        half = 0.5 * (self.defocus_u - self.defocus_v)
        return mean + half * np.cos(2 * (angle - np.deg2rad(self.astigmatism_angle)))

    def chi(self, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
        """Wave aberration (rad) on a frequency grid (1/Å)."""
        if self.aberration_free:
            return np.zeros(np.broadcast_shapes(qy.shape, qx.shape))
        lam = self.wavelength
        q2 = qy**2 + qx**2
        # cos(2 (theta - angle)) from the components, without arctan2 and cos on the grid.
        a = np.deg2rad(self.astigmatism_angle)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos2 = np.where(q2 > 0, ((qx**2 - qy**2) * np.cos(2 * a) + 2 * qx * qy * np.sin(2 * a)) / q2, 0.0)
        defocus = 0.5 * (self.defocus_u + self.defocus_v) + 0.5 * (self.defocus_u - self.defocus_v) * cos2
        cs = self.cs_mm * 1e7
        return np.pi * lam * q2 * (0.5 * cs * lam**2 * q2 - defocus)


def wave_transfer(optics: Optics, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    """Complex transfer function for the exit wave's spectrum: exp(-i chi) x envelopes."""
    qy = np.asarray(qy, dtype=np.float32)
    qx = np.asarray(qx, dtype=np.float32)
    q2 = qy**2 + qx**2
    transfer = np.exp(-1j * optics.chi(qy, qx).astype(np.float32))
    if optics.aberration_free:
        return transfer * np.exp(-optics.b_factor * q2 / 4.0)
    lam = optics.wavelength
    cs = optics.cs_mm * 1e7
    mean_defocus = 0.5 * (optics.defocus_u + optics.defocus_v)
    # Envelopes act on the scattered wave (the unscattered beam at q = 0 is untouched), so the
    # image's linear term is damped by exactly these factors.
    alpha = optics.illumination_aperture_mrad * 1e-3
    exponent = optics.b_factor / 4.0 * q2
    exponent += 0.5 * (np.pi * lam * optics.focal_spread) ** 2 * q2**2
    exponent += (np.pi * alpha) ** 2 * q2 * (cs * lam**2 * q2 - mean_defocus) ** 2
    transfer *= np.exp(-exponent)
    return transfer


def apply_wave_transfer(spectrum: np.ndarray, optics: Optics, spacing: float) -> None:
    """Multiply a full ``fft2`` spectrum (complex64 ``[rows, cols]``, fine pixel ``spacing`` Å)
    by :func:`wave_transfer`, in place.

    The transfer is even (``T(q) = T(-q)``: defocus depends on 2 theta, everything else on
    ``|q|``), so it is evaluated on the ``rfft2`` half-plane (half the transcendental work on
    the largest array of the simulation) and mirrored into one block of rows at a time: the
    full transfer (800 MB at K3 size) never exists.
    """
    rows, cols = spectrum.shape
    qy = np.fft.fftfreq(rows, d=spacing)[:, None]
    qx = np.fft.rfftfreq(cols, d=spacing)[None, :]
    half = np.empty((rows, qx.shape[1]), dtype=np.complex64)
    blocks = row_blocks(rows, cols)
    for block in blocks:
        half[block] = wave_transfer(optics, qy[block], qx).astype(np.complex64)
    # Columns j > cols/2 hold q_x < 0: T(qy, qx) = T(-qy, -qx), and -qy is row (-i) mod rows.
    n_neg = cols - half.shape[1]
    mirror_cols = np.arange(cols - n_neg, cols)
    for block in blocks:
        full = np.empty((block.stop - block.start, cols), dtype=np.complex64)
        full[:, : half.shape[1]] = half[block]
        if n_neg > 0:
            mirror_rows = (-np.arange(block.start, block.stop)) % rows
            full[:, mirror_cols] = half[mirror_rows][:, cols - mirror_cols]
        spectrum[block] *= full


def ctf_1d(
    q: np.ndarray, defocus: float, *, voltage_kv: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.07
) -> np.ndarray:
    """Rotationally averaged contrast transfer ``-sin(chi) + w cos(chi)`` sign-flipped so that
    particles are negative: the image's linear response is ``-2 CTF`` in this convention.

    Its zeros are the Thon-ring minima a micrograph of this defocus shows.
    """
    lam = electron_wavelength(voltage_kv)
    cs = cs_mm * 1e7
    chi = np.pi * lam * q**2 * (0.5 * cs * lam**2 * q**2 - defocus)
    w = amplitude_contrast / np.sqrt(1 - amplitude_contrast**2)
    return -(np.sin(chi) - w * np.cos(chi))
