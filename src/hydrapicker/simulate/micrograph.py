"""One simulated micrograph: specimen -> phase -> exit wave -> optics -> detector, with its truth.

Pipeline on one padded, oversampled, periodic field (docs/simulation.md, *Physics*): projected potential
of every particle plus ice and carbon (mean potential in real space, fluctuations shaped by a
water structure factor), full phase-object exit wave ``A exp((i - w) phi)`` (w from the
amplitude contrast, A the inelastic loss), multiplied in Fourier space by ``exp(-i chi)`` and
envelopes, intensity, Fourier crop to the detector pixel, motion and MTF, Poisson counts.

Coordinates in the result are detector pixels of the returned image: x = column, y = row,
pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from hydrapicker.simulate.blocks import row_blocks
from hydrapicker.simulate.config import SimulationConfig
from hydrapicker.simulate.detector import detector_blur, expected_counts, intensity_fourier_crop, shot_noise
from hydrapicker.simulate.optics import Optics, apply_wave_transfer, interaction_constant
from hydrapicker.simulate.potential import FineGrid, Particle, particle_spectrum, phase_from_spectrum
from hydrapicker.simulate.specimen import background, layout_specimen
from hydrapicker.simulate.structure import AtomicModel, particle_diameter

__all__ = ["MicrographParams", "SimulatedMicrograph", "draw_params", "simulate_micrograph", "relion_euler"]


@dataclass(frozen=True)
class MicrographParams:
    """What was drawn for one micrograph (recorded in its truth)."""

    defocus_u: float  # Å, underfocus positive
    defocus_v: float
    astigmatism_angle: float  # degrees
    b_factor: float
    dose: float
    motion: float
    ice_thickness: float
    ice_gradient: float
    ice_roughness: float
    n_particles: int  # wanted inside the image
    min_distance: float
    clustering: float
    carbon_thickness: float | None
    n_contaminants: int
    n_aggregates: int
    broken_fraction: float
    fragment_fraction: float
    ice_texture: float
    dqe: float
    hot_pixels: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedMicrograph:
    """A simulated micrograph at the detector pixel, before rendering.

    Attributes:
        counts: float32 ``[rows, cols]`` electron counts (the motion-corrected sum).
        expected: float32 ``[rows, cols]`` noiseless expected counts.
        pixel_size: Å per pixel of ``counts``.
        particles: column arrays ``x``, ``y`` (pixels), ``rot``, ``tilt``, ``psi`` (degrees,
            RELION convention) of the true particles whose centre lies in the image.
        decoys: column arrays ``x``, ``y`` (pixels), ``kind`` (str), ``diameter`` (pixels).
        params: the imaging conditions drawn.
    """

    counts: np.ndarray
    expected: np.ndarray
    pixel_size: float
    particles: dict[str, np.ndarray]
    decoys: dict[str, np.ndarray]
    params: MicrographParams


def _draw(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def draw_params(config: SimulationConfig, diameter: float, rng: np.random.Generator) -> MicrographParams:
    """Draw one micrograph's conditions from the config's ranges."""
    defocus = _draw(rng, config.defocus_um) * 1e4
    astig = _draw(rng, config.astigmatism)
    angle = float(rng.uniform(0, 180))
    rows, cols = config.shape
    if config.particles_per_micrograph is not None:
        lo, hi = config.particles_per_micrograph
        n = int(rng.integers(int(lo), int(hi) + 1))
        rng.random()  # keep the stream aligned with the coverage branch
    else:
        coverage = float(
            np.exp(rng.uniform(np.log(max(config.coverage[0], 1e-4)), np.log(max(config.coverage[1], 1e-4))))
        )
        if config.coverage[1] == 0:
            coverage = 0.0
        area = rows * cols * config.pixel_size**2
        n = int(round(coverage * area / (np.pi * diameter**2 / 4)))
        rng.random()
    carbon = _draw(rng, config.carbon_thickness) if rng.random() < config.carbon_probability else None
    n_contaminants = int(rng.integers(1, 4)) if rng.random() < config.contamination_probability else 0
    n_aggregates = int(rng.integers(1, 4)) if rng.random() < config.aggregate_probability else 0
    return MicrographParams(
        defocus_u=defocus + 0.5 * astig,
        defocus_v=defocus - 0.5 * astig,
        astigmatism_angle=angle,
        b_factor=_draw(rng, config.b_factor),
        dose=_draw(rng, config.dose),
        motion=_draw(rng, config.motion),
        ice_thickness=_draw(rng, config.ice_thickness),
        ice_gradient=_draw(rng, config.ice_gradient),
        ice_roughness=_draw(rng, config.ice_roughness),
        n_particles=n,
        min_distance=_draw(rng, config.min_distance),
        clustering=_draw(rng, config.clustering),
        carbon_thickness=carbon,
        n_contaminants=n_contaminants,
        n_aggregates=n_aggregates,
        broken_fraction=_draw(rng, config.broken_fraction),
        fragment_fraction=_draw(rng, config.fragment_fraction),
        ice_texture=_draw(rng, config.ice_texture),
        dqe=_draw(rng, config.dqe),
        hot_pixels=_draw(rng, config.hot_pixels),
    )


def relion_euler(rotation: np.ndarray) -> tuple[float, float, float]:
    """(rot, tilt, psi) in degrees such that RELION's ``Euler_angles2matrix`` gives ``rotation``.

    RELION's matrix A maps a model point r to ``A r`` in the image frame (x = column, y = row,
    projection along z), which is how ``rotation`` is used here; A = Rz(-psi) Ry(-tilt) Rz(-rot)
    as active rotations, so A^T is scipy's intrinsic ZYZ with angles (rot, tilt, psi).
    """
    rot, tilt, psi = Rotation.from_matrix(rotation.T).as_euler("ZYZ", degrees=True)
    return float(rot), float(tilt), float(psi)


def _fast_even(n: int, factor: int) -> int:
    size = scipy.fft.next_fast_len(n, real=True)
    while size % 2 or not scipy.fft.next_fast_len(size * factor) == size * factor:
        size = scipy.fft.next_fast_len(size + 1, real=True)
    return size


def simulate_micrograph(
    model: AtomicModel,
    config: SimulationConfig,
    seed: int | np.random.SeedSequence | np.random.Generator,
    *,
    diameter: float | None = None,
    params: MicrographParams | None = None,
    positions: np.ndarray | None = None,
    workers: int = 1,
) -> SimulatedMicrograph:
    """Simulate one micrograph of ``model`` (before rendering).

    Args:
        model: the particle.
        config: settings; ``config.shape`` x ``config.rendering.bin`` detector pixels are made.
        seed: everything random comes from this (same seed, same arrays).
        diameter: particle diameter in Å (default :func:`particle_diameter`), sets spacing.
        params: fixed conditions instead of drawing them (tests, benchmarks).
        positions: ``[n, 2]`` particle centres (x = column, y = row, detector pixels of the
            returned image) instead of drawn ones.
        workers: threads for scipy.fft.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    diameter = particle_diameter(model) if diameter is None else float(diameter)
    if params is None:
        params = draw_params(config, diameter, rng)

    pixel = config.detector_pixel_size
    rows, cols = (s * config.rendering.bin for s in config.shape)
    # A binned rendering already samples the wave finer than the stored pixel: its detector
    # grid does the oversampling, so the cost stays that of an unbinned micrograph.
    k = max(1, config.oversample // config.rendering.bin)
    margin = config.margin_px * config.rendering.bin
    pad_rows, pad_cols = _fast_even(rows + 2 * margin, k), _fast_even(cols + 2 * margin, k)
    off_r, off_c = (pad_rows - rows) // 2, (pad_cols - cols) // 2
    grid = FineGrid((pad_rows * k, pad_cols * k), pixel / k)
    extent = (pad_cols * pixel, pad_rows * pixel)
    image_box = (
        (off_c - 0.5) * pixel,
        (off_r - 0.5) * pixel,
        (off_c + cols - 0.5) * pixel,
        (off_r + rows - 0.5) * pixel,
    )

    n_field = int(round(params.n_particles * pad_rows * pad_cols / (rows * cols)))
    n_broken = int(round(params.broken_fraction * params.n_particles))
    layout = layout_specimen(
        model,
        diameter,
        extent,
        image_box,
        n_field,
        rng,
        min_distance=params.min_distance,
        clustering=params.clustering,
        ice_thickness=params.ice_thickness,
        ice_gradient=params.ice_gradient,
        ice_roughness=params.ice_roughness,
        carbon=params.carbon_thickness,
        n_contaminants=params.n_contaminants,
        n_aggregates=params.n_aggregates,
        n_broken=n_broken,
        n_fragments=int(round(params.fragment_fraction * n_field)),
        ice_texture=params.ice_texture,
        positions=None
        if positions is None
        else (np.asarray(positions, dtype=np.float64).reshape(-1, 2) + (off_c, off_r)) * pixel,
    )

    sigma = interaction_constant(config.voltage_kv)
    particles = [Particle(p.rotation, (p.x / grid.spacing, p.y / grid.spacing), p.cut) for p in layout.particles]
    spectrum = particle_spectrum(
        model,
        particles,
        grid,
        hydrogens_per_atom=config.hydrogens_per_atom,
        solvent_density=config.water_density if params.ice_thickness > 0 else 0.0,
        volume_per_da=config.solvent_volume_per_da,
        atom_b_factor=config.atom_b_factor,
        workers=workers,
    )
    bg = background(layout, grid, config, sigma)
    spectrum += bg.noise_spectrum(rng, workers=workers)
    phase = phase_from_spectrum(spectrum, grid, sigma, workers=workers)
    del spectrum

    # The exit wave (complex64, 800 MB at K3 size) is held through the optics and into the
    # detector's crop, which reuses its memory; what makes and filters it comes a block of rows at a time.
    w = config.amplitude_contrast / np.sqrt(1.0 - config.amplitude_contrast**2)
    wave = np.empty(grid.shape, dtype=np.complex64)
    for block in grid.row_blocks():
        bg_phase, amplitude = bg.maps(block)
        total_phase = phase[block] + bg_phase
        wave[block] = (amplitude * np.exp(-w * total_phase)).astype(np.complex64) * np.exp(1j * total_phase).astype(
            np.complex64
        )
    del phase, bg_phase, amplitude, total_phase
    optics = Optics(
        voltage_kv=config.voltage_kv,
        cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast,
        defocus_u=params.defocus_u,
        defocus_v=params.defocus_v,
        astigmatism_angle=params.astigmatism_angle,
        b_factor=params.b_factor if config.ctf else 0.0,
        focal_spread=config.focal_spread,
        illumination_aperture_mrad=config.illumination_aperture_mrad,
        aberration_free=not config.ctf,
    )
    wave = scipy.fft.fft2(wave, workers=workers, overwrite_x=True)
    apply_wave_transfer(wave, optics, grid.spacing)
    wave = scipy.fft.ifft2(wave, workers=workers, overwrite_x=True)
    intensity = intensity_fourier_crop(wave, k, workers=workers)
    del wave
    motion_path = None
    if params.motion > 0:
        steps = rng.normal(0.0, 1.0, size=(8, 2))
        path = np.cumsum(steps, axis=0)
        path -= path.mean(axis=0)  # motion correction leaves residual motion about the mean
        path *= params.motion / max(float(np.sqrt((path**2).sum(axis=1).mean())), 1e-9) / pixel
        motion_path = path
    intensity = detector_blur(intensity, motion_path, config.mtf, workers=workers)
    expected = expected_counts(intensity[off_r : off_r + rows, off_c : off_c + cols], params.dose, pixel)
    del intensity
    if config.shot_noise:
        # Counts with the noise of dose x DQE, scaled back to the dose: mean unchanged, variance / DQE.
        # Drawn a block of rows at a time: the same draws, without int64 counts of the whole image.
        counts = np.empty(expected.shape, dtype=np.float32)
        for block in row_blocks(rows, cols):
            counts[block] = shot_noise(expected[block] * params.dqe, rng) / np.float32(params.dqe)
    else:
        counts = expected.astype(np.float32)
    n_hot = int(rng.poisson(params.hot_pixels * counts.size)) if params.hot_pixels > 0 else 0
    if n_hot:
        # Outliers a real sum carries; they also squeeze min-max 8-bit exports as real ones are.
        hot = rng.integers(0, counts.size, size=n_hot)
        counts.flat[hot] *= rng.uniform(1.5, 4.0, size=n_hot).astype(np.float32)

    def to_image(x: float, y: float) -> tuple[float, float]:
        return x / pixel - off_c, y / pixel - off_r

    def inside(x: float, y: float) -> bool:
        return -0.5 <= x < cols - 0.5 and -0.5 <= y < rows - 0.5

    truth = {key: [] for key in ("x", "y", "rot", "tilt", "psi")}
    for p in layout.particles:
        if p.kind != "particle":
            continue
        x, y = to_image(p.x, p.y)
        if inside(x, y):
            rot, tilt, psi = relion_euler(p.rotation)
            for key, value in zip(truth, (x, y, rot, tilt, psi)):
                truth[key].append(value)
    decoys = {key: [] for key in ("x", "y", "kind", "diameter")}
    for d in layout.decoys:
        x, y = to_image(d.x, d.y)
        if inside(x, y):
            for key, value in zip(decoys, (x, y, d.kind, d.diameter / pixel)):
                decoys[key].append(value)
    return SimulatedMicrograph(
        counts=counts,
        expected=expected.astype(np.float32),
        pixel_size=pixel,
        particles={k2: np.asarray(v, dtype=np.float64) for k2, v in truth.items()},
        decoys={k2: np.asarray(v, dtype=object if k2 == "kind" else np.float64) for k2, v in decoys.items()},
        params=params,
    )
