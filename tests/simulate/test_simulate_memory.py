"""Simulation in bounded memory: a few fine-grid maps at most, and the same numbers as whole-array code.

A K3-size micrograph's fine grid is about 8640 x 12000 pixels (400 MB per float32 map), so the
simulation makes its maps a block of rows at a time (:mod:`hydrapicker.simulate.blocks`). These
tests pin the memory bound and that blocking changes no bit of the result.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from hydrapicker.simulate import SimulationConfig, load_model, particle_diameter, simulate_micrograph
from hydrapicker.simulate.config import RENDERINGS
from hydrapicker.simulate.render import render

STRUCTURES = Path(__file__).resolve().parents[2] / "data" / "structures"


@pytest.fixture(scope="module")
def hvr():
    return load_model(STRUCTURES / "1hvr.pdb.gz")


def busy_config(**changes) -> SimulationConfig:
    """Every full-field map in use: ice with texture and roughness, carbon, contamination,
    aggregates, broken particles and fragments, motion, MTF, shot noise and hot pixels."""
    base = dict(
        carbon_probability=1.0,
        contamination_probability=1.0,
        aggregate_probability=1.0,
        ice_roughness=(0.05, 0.05),
        ice_texture=(20.0, 20.0),
        broken_fraction=(0.1, 0.1),
        fragment_fraction=(0.5, 0.5),
        motion=(1.5, 1.5),
        hot_pixels=(1e-4, 1e-4),
    )
    return SimulationConfig(**{**base, **changes})


def small_blocks(monkeypatch) -> None:
    """Blocks of a few rows and projection pieces of a few copies."""
    import hydrapicker.simulate.blocks
    import hydrapicker.simulate.potential

    monkeypatch.setattr(hydrapicker.simulate.blocks, "BLOCK_PIXELS", 1 << 12)
    monkeypatch.setattr(hydrapicker.simulate.potential, "_ATOMS_PER_PIECE", 1000)


@pytest.mark.parametrize(
    ("rendering", "shape", "particles", "maps"),
    [
        # The exit wave (two float32 maps' worth) and one map more at a time.
        ("float", (1024, 1440), 300, 4),
        # Binned 2x: the detector grid is the fine grid, and its float64 image and that image's
        # spectrum (two maps each) are held together.
        ("denoised-png", (512, 720), 75, 5),
    ],
)
def test_a_large_micrograph_holds_a_few_fine_grid_maps_at_once(hvr, monkeypatch, rendering, shape, particles, maps):
    # The old whole-array code peaked at about 20 maps (9.4 GB RSS for two K3-size micrographs).
    # numpy's allocations are traced; pocketfft's internal buffers are not.
    import hydrapicker.simulate.blocks

    monkeypatch.setattr(hydrapicker.simulate.blocks, "BLOCK_PIXELS", 1 << 16)
    config = busy_config(shape=shape, rendering=RENDERINGS[rendering], particles_per_micrograph=(particles, particles))
    rows, cols = ((s + 2 * config.margin_px) * max(config.oversample, config.rendering.bin) for s in shape)
    fine_map = rows * cols * 4  # one float32 map of the padded fine grid
    block = 64 * hydrapicker.simulate.blocks.BLOCK_PIXELS  # a few float64 and complex temporaries of one block
    diameter = particle_diameter(hvr)  # once per dataset, as simulate_dataset does: not measured
    tracemalloc.start()
    try:
        simulate_micrograph(hvr, config, 1, diameter=diameter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < maps * fine_map + block, f"peak {peak / fine_map:.2f} fine-grid maps"


@pytest.mark.parametrize("rendering", ["float", "denoised-png"])  # oversampled 2x, and by the detector grid
def test_simulated_and_rendered_micrograph_do_not_depend_on_the_block_size(hvr, monkeypatch, rendering):
    config = busy_config(shape=(160, 200), rendering=RENDERINGS[rendering], particles_per_micrograph=(12, 12))

    def simulate_and_render():
        rng = np.random.default_rng(4)
        sim = simulate_micrograph(hvr, config, rng)
        return sim, render(sim, config.rendering, rng)[0]

    whole, whole_rendered = simulate_and_render()  # the default block is larger than this grid
    small_blocks(monkeypatch)
    blocked, blocked_rendered = simulate_and_render()
    assert blocked.counts.tobytes() == whole.counts.tobytes()
    assert blocked.expected.tobytes() == whole.expected.tobytes()
    assert blocked_rendered.data.tobytes() == whole_rendered.data.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_banded_deposit_equals_whole_field_deposit_bit_for_bit(dtype):
    from hydrapicker.simulate.potential import BandedDeposit, deposit

    shape = (37, 23)
    rng = np.random.default_rng(0)
    # Points beyond the grid (clamped onto its edge), on band boundaries and piled on one pixel.
    pieces = [
        (rng.uniform(-3, 26, 500).astype(np.float32), rng.uniform(-3, 40, 500).astype(np.float32)),
        (np.full(50, 11.25, dtype=np.float32), np.full(50, 5.5, dtype=np.float32)),
        (rng.uniform(0, 22, 300), np.repeat(np.arange(0.0, 36.0, 3.0), 25)[:300] - 1e-3),
    ]
    points = BandedDeposit(shape, dtype, band_rows=3)
    for x, y in pieces:
        points.add(x, y)
    x = np.concatenate([p[0] for p in pieces]).astype(dtype)
    y = np.concatenate([p[1] for p in pieces]).astype(dtype)
    expected = deposit(shape, x, y).astype(np.float32)
    assert points.histogram().tobytes() == expected.tobytes()


@pytest.mark.parametrize("shape", [(64, 96), (63, 95), (50, 81)])
def test_largest_frequency_is_that_of_the_whole_map(shape):
    from hydrapicker.simulate.potential import FineGrid

    grid = FineGrid(shape, 0.75)
    assert grid.rfft_q_max == float(grid.rfft_q(slice(None)).max())


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_intensity_fourier_crop_equals_cropping_the_whole_intensitys_spectrum(monkeypatch, factor):
    from hydrapicker.simulate.detector import intensity_fourier_crop

    rng = np.random.default_rng(1)
    wave = (rng.normal(size=(48, 66)) + 1j * rng.normal(size=(48, 66))).astype(np.complex64)
    intensity = (wave.real**2 + wave.imag**2).astype(np.float64)
    if factor == 1:
        expected = intensity
    else:
        rows, cols = intensity.shape
        out_rows, out_cols = rows // factor, cols // factor
        spectrum = scipy.fft.rfft2(intensity)[:, : out_cols // 2 + 1]
        half = out_rows // 2
        cropped = np.concatenate([spectrum[: out_rows - half], spectrum[rows - half :]])
        expected = scipy.fft.irfft2(cropped, s=(out_rows, out_cols)) / factor**2
    small_blocks(monkeypatch)
    assert intensity_fourier_crop(wave, factor).tobytes() == expected.tobytes()


def test_wave_transfer_is_the_half_plane_mirrored(monkeypatch):
    from hydrapicker.simulate.optics import Optics, apply_wave_transfer, wave_transfer

    optics = Optics(defocus_u=15200.0, defocus_v=14500.0, astigmatism_angle=33.0, b_factor=60.0, focal_spread=40.0)
    rows, cols = 40, 54
    qy = np.fft.fftfreq(rows, d=0.75)[:, None]
    qx = np.fft.rfftfreq(cols, d=0.75)[None, :]
    half = wave_transfer(optics, qy, qx).astype(np.complex64)
    # Column j > cols/2 holds -qx of column cols - j, and T(q) = T(-q): row -i, column cols - j.
    expected = np.concatenate([half, half[(-np.arange(rows)) % rows][:, cols - np.arange(half.shape[1], cols)]], axis=1)
    small_blocks(monkeypatch)
    spectrum = np.ones((rows, cols), dtype=np.complex64)
    apply_wave_transfer(spectrum, optics, 0.75)
    assert spectrum.tobytes() == expected.tobytes()
