"""Tests for hydrapicker.simulate: geometry, physics signs and scales, noise, bad input, the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from hydrapicker.errors import HydraPickerError
from hydrapicker.simulate import SimulationConfig, load_model, particle_diameter, simulate_micrograph
from hydrapicker.simulate.config import Rendering
from hydrapicker.simulate.micrograph import draw_params, relion_euler
from hydrapicker.simulate.optics import interaction_constant
from hydrapicker.simulate.potential import (
    POTENTIAL_CONSTANT,
    FineGrid,
    Particle,
    particle_spectrum,
    phase_from_spectrum,
)
from hydrapicker.simulate.render import binned_coordinate, render_image

STRUCTURES = Path(__file__).resolve().parents[2] / "data" / "structures"
HVR = STRUCTURES / "1hvr.pdb.gz"
EMA = STRUCTURES / "1ema.pdb.gz"


@pytest.fixture(scope="module")
def hvr():
    return load_model(HVR)


def quiet_config(**changes) -> SimulationConfig:
    """A 256^2 field in vacuum: no ice, junk, motion, MTF or shot noise, unless asked."""
    base = dict(
        shape=(256, 256),
        pixel_size=1.5,
        margin_px=32,
        ice_thickness=(0.0, 0.0),
        carbon_probability=0.0,
        contamination_probability=0.0,
        aggregate_probability=0.0,
        broken_fraction=(0.0, 0.0),
        motion=(0.0, 0.0),
        mtf=False,
        shot_noise=False,
        particles_per_micrograph=(0, 0),
        defocus_um=(2.0, 2.0),
        astigmatism=(0.0, 0.0),
        dose=(40.0, 40.0),
        b_factor=(50.0, 50.0),
        fragment_fraction=(0.0, 0.0),
        ice_texture=(0.0, 0.0),
        dqe=(1.0, 1.0),
        hot_pixels=(0.0, 0.0),
    )
    base.update(changes)
    return SimulationConfig(**base)


def _particle_signal(sim) -> np.ndarray:
    # Vacuum: the background is exactly dose x pixel area; the particle removes intensity.
    return sim.params.dose * sim.pixel_size**2 - sim.expected.astype(np.float64)


def test_recorded_coordinate_is_projected_centre_of_mass(hvr):
    config = quiet_config(ctf=False)
    position = (101.3, 147.8)  # x = column, y = row
    sim = simulate_micrograph(hvr, config, 1, positions=[position])
    assert len(sim.particles["x"]) == 1
    signal = _particle_signal(sim)
    # CTF-free: the particle only absorbs (amplitude contrast); what is negative is band-limit ringing.
    assert signal.min() > -0.05 * signal.max()
    row, col = ndimage.center_of_mass(signal)
    assert abs(col - sim.particles["x"][0]) < 1.0 and abs(row - sim.particles["y"][0]) < 1.0
    assert abs(sim.particles["x"][0] - position[0]) < 1e-9 and abs(sim.particles["y"][0] - position[1]) < 1e-9


def test_drawn_positions_hit_their_particles(hvr):
    config = quiet_config(ctf=False, particles_per_micrograph=(6, 6), min_distance=(2.0, 2.0))
    sim = simulate_micrograph(hvr, config, 5)
    signal = _particle_signal(sim)
    radius = particle_diameter(hvr) / sim.pixel_size
    rows, cols = np.indices(signal.shape)
    inner = [
        (x, y)
        for x, y in zip(sim.particles["x"], sim.particles["y"])
        if radius < x < signal.shape[1] - radius and radius < y < signal.shape[0] - radius
    ]
    assert inner, "no particle away from the border to check"
    for x, y in inner:
        disc = (cols - x) ** 2 + (rows - y) ** 2 < radius**2
        cy, cx = ndimage.center_of_mass(np.where(disc, signal, 0.0))
        assert abs(cx - x) < 1.0 and abs(cy - y) < 1.0


@pytest.mark.parametrize("amplitude_contrast", [0.07, 0.0])
def test_particles_are_dark_in_underfocus(amplitude_contrast):
    model = load_model(EMA)
    config = quiet_config(amplitude_contrast=amplitude_contrast, defocus_um=(2.0, 2.0))
    sim = simulate_micrograph(model, config, 2, positions=[(128.0, 128.0)])
    image = ndimage.gaussian_filter(sim.expected.astype(np.float64), 3.0)
    radius = particle_diameter(model) / sim.pixel_size / 2
    rows, cols = np.indices(image.shape)
    r = np.hypot(cols - 128.0, rows - 128.0)
    particle = image[r < 0.6 * radius].mean()
    background = image[(r > 3 * radius) & (r < 5 * radius)].mean()
    assert particle < background


def test_integrated_phase_scales_with_atom_count_and_form_factors():
    import gemmi

    grid = FineGrid((256, 256), 0.75)
    sigma = interaction_constant(300.0)
    kwargs = dict(hydrogens_per_atom={}, solvent_density=0.0, volume_per_da=1.21, atom_b_factor=20.0)
    one_chain, two_chains = load_model(HVR, chains="A"), load_model(HVR, chains="AB")
    sums = []
    for model in (one_chain, two_chains):
        spectrum = particle_spectrum(model, [Particle(np.eye(3), (128.0, 128.0))], grid, **kwargs)
        sums.append(phase_from_spectrum(spectrum, grid, sigma).astype(np.float64).sum() * grid.pixel_area)
        # Independent: the q = 0 form factor of an atom is the sum of its five Peng amplitudes.
        expected = (
            sigma
            * POTENTIAL_CONSTANT
            * sum(len(c) * sum(gemmi.Element(el).c4322.get_coefs()[:5]) for el, c in model.coords.items())
        )
        assert sums[-1] == pytest.approx(expected, rel=1e-3)
    assert sums[1] / sums[0] == pytest.approx(two_chains.n_atoms / one_chain.n_atoms, rel=1e-3)


def test_same_seed_gives_the_same_micrograph_and_another_seed_does_not(hvr):
    config = quiet_config(
        shot_noise=True,
        ice_thickness=(200.0, 400.0),
        particles_per_micrograph=(3, 8),
        carbon_probability=0.5,
        contamination_probability=0.5,
        aggregate_probability=0.5,
        motion=(0.0, 2.0),
    )
    a = simulate_micrograph(hvr, config, 7)
    b = simulate_micrograph(hvr, config, 7)
    c = simulate_micrograph(hvr, config, 8)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.particles["x"], b.particles["x"])
    assert not np.array_equal(a.counts, c.counts)


@pytest.mark.parametrize("dqe", [1.0, 0.6])
def test_shot_noise_mean_is_dose_times_pixel_area_and_variance_that_over_dqe(hvr, dqe):
    dose, pixel = 37.0, 1.3
    config = quiet_config(shot_noise=True, dose=(dose, dose), pixel_size=pixel, mtf=True, dqe=(dqe, dqe))
    counts = simulate_micrograph(hvr, config, 3).counts.astype(np.float64)
    mean = dose * pixel**2
    assert abs(counts.mean() - mean) < 4 * np.sqrt(mean / dqe / counts.size)
    assert counts.var() == pytest.approx(mean / dqe, rel=0.03)


def test_ice_gives_particles_lower_contrast_than_vacuum():
    # Displaced solvent: a particle in ice shows the protein-ice difference, not protein-vacuum.
    model = load_model(EMA)
    contrasts = []
    for ice in (0.0, 300.0):
        config = quiet_config(ice_thickness=(ice, ice), ctf=False)
        sim = simulate_micrograph(model, config, 4, positions=[(128.0, 128.0)])
        image = sim.expected.astype(np.float64)
        r = np.hypot(*(np.indices(image.shape) - 128.0))
        contrasts.append(1 - image[r < 5].mean() / image[(r > 40) & (r < 60)].mean())
    assert 0 < contrasts[1] < 0.8 * contrasts[0]


def test_relion_euler_angles_rebuild_the_rotation():
    from scipy.spatial.transform import Rotation

    def relion_matrix(rot, tilt, psi):  # RELION's Euler_angles2matrix, written out
        a, b, g = np.deg2rad([rot, tilt, psi])
        ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
        cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
        return np.array(
            [
                [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                [sc, ss, cb],
            ]
        )

    for matrix in Rotation.random(5, random_state=1).as_matrix():
        np.testing.assert_allclose(relion_matrix(*relion_euler(matrix)), matrix, atol=1e-9)


def test_binned_coordinates_follow_the_binned_image():
    rows, cols = np.indices((64, 64))
    x0, y0 = 37.3, 20.6
    blob = np.exp(-((cols - x0) ** 2 + (rows - y0) ** 2) / (2 * 3.0**2)) * 100 + 10
    rendered = render_image(blob, blob, 1.0, Rendering("b", bin=2), np.random.default_rng(0))
    cy, cx = ndimage.center_of_mass(rendered.data - 10)
    assert cx == pytest.approx(binned_coordinate(x0, 2), abs=0.05)
    assert cy == pytest.approx(binned_coordinate(y0, 2), abs=0.05)
    assert rendered.pixel_size == 2.0


def test_eight_bit_rendering_uses_the_full_range():
    image = np.random.default_rng(0).normal(100, 10, (64, 64))
    out = render_image(
        image, image, 1.0, Rendering("png", eight_bit="png", stretch=(1.0, 99.0)), np.random.default_rng(0)
    )
    assert out.data.dtype == np.uint8 and out.data.min() == 0 and out.data.max() == 255


def test_sixteen_bit_rendering_is_a_stretched_clipped_uint16_tiff(tmp_path):
    from hydrapicker.io import read_micrograph
    from hydrapicker.simulate.render import write_rendered

    image = np.random.default_rng(0).normal(100, 10, (64, 64))
    rendering = Rendering("tif16", sixteen_bit=True, stretch=(2.0, 98.0))
    out = render_image(image, image, 1.0, rendering, np.random.default_rng(0))
    assert out.data.dtype == np.uint16 and out.data.min() == 0 and out.data.max() == 65535
    # clipped at the percentiles: about 2 % of the pixels sit at each end
    assert 0.01 < np.mean(out.data == 0) < 0.03 and 0.01 < np.mean(out.data == 65535) < 0.03
    path = write_rendered(tmp_path / f"m{rendering.suffix}", out)
    assert path.suffix == ".tif"
    np.testing.assert_array_equal(read_micrograph(path).data, out.data.astype(np.float32))


def test_a_rendering_cannot_be_both_eight_and_sixteen_bit():
    with pytest.raises(HydraPickerError, match="sixteen_bit"):
        SimulationConfig(rendering=Rendering("x", eight_bit="png", sixteen_bit=True))


def test_model_without_element_column_falls_back_to_atom_names():
    path = STRUCTURES / "4ake_adk_open.pdb.gz"
    expected: dict[str, int] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith("ATOM"):
                name = line[12:16].strip()
                if not name.startswith("H"):
                    expected[name[0]] = expected.get(name[0], 0) + 1
    model = load_model(path)
    assert {el: len(c) for el, c in model.coords.items()} == expected


def test_multi_copy_asymmetric_unit_keeps_one_copy():
    from hydrapicker.simulate.dataset import plan_dataset

    plan, model = plan_dataset(STRUCTURES / "3wip.cif.gz", "unused", SimulationConfig(), 0)
    whole = load_model(STRUCTURES / "3wip.cif.gz")
    assert plan.chains == "ABCDE"
    assert 0.45 < model.n_atoms / whole.n_atoms < 0.55


def test_particle_diameter_of_a_sphere_is_its_outer_diameter():
    from hydrapicker.simulate.structure import AtomicModel

    points = np.random.default_rng(0).normal(size=(20000, 3))
    points = 50.0 * points / np.linalg.norm(points, axis=1, keepdims=True)  # hollow shell, radius 50 Å
    assert particle_diameter(AtomicModel("shell", {"C": points})) == pytest.approx(100.0, rel=0.02)


# --- bad input: one clear line ------------------------------------------------------------


def test_missing_model_file_names_it(tmp_path):
    with pytest.raises(HydraPickerError, match="nope.pdb: no such atomic model file"):
        load_model(tmp_path / "nope.pdb")


def test_model_with_only_water_has_no_atoms(tmp_path):
    path = tmp_path / "water.pdb"
    path.write_text(
        "HETATM    1  O   HOH A   1      10.000  10.000  10.000  1.00 20.00           O\n"
        "HETATM    2  O   HOH A   2      12.000  10.000  10.000  1.00 20.00           O\nEND\n"
    )
    with pytest.raises(HydraPickerError, match="water.pdb: no protein or nucleic-acid atoms"):
        load_model(path)


def test_unknown_element_in_the_polymer_is_refused(tmp_path):
    path = tmp_path / "odd.pdb"
    path.write_text(
        "ATOM      1  N   GLY A   1      10.000  10.000  10.000  1.00 20.00           N\n"
        "ATOM      2  QX  GLY A   1      11.000  10.000  10.000  1.00 20.00           X\nEND\n"
    )
    with pytest.raises(HydraPickerError, match="odd.pdb: atom 'QX'.*unknown element"):
        load_model(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pixel_size": -1.0}, "pixel_size = -1.0: must be positive"),
        ({"defocus_um": (3.0, 1.0)}, r"defocus_um = \(3.0, 1.0\): min 3.0 is above max 1.0"),
        ({"dose": (0.0, 10.0)}, "dose min = 0.0: must be positive"),
        ({"shape": (8, 1024)}, "shape"),
        ({"amplitude_contrast": 1.5}, "amplitude_contrast"),
    ],
)
def test_impossible_settings_raise_one_line(changes, message):
    with pytest.raises(HydraPickerError, match=message) as info:
        SimulationConfig(**changes)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_input_in_one_line_and_exits_1(tmp_path, capsys):
    from hydrapicker.cli import main

    status = main(["simulate", str(HVR), "--out", str(tmp_path / "o"), "--defocus", "3", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1 and "defocus" in err
    status = main(["simulate", str(tmp_path / "missing.pdb"), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1 and "missing.pdb" in err


# --- the CLI end to end ------------------------------------------------------------------


def test_cli_writes_a_dataset_that_reads_back(tmp_path):
    import mrcfile
    import starfile

    from hydrapicker.cli import main
    from hydrapicker.data.project import load_project
    from hydrapicker.io.coordinates import read_picks

    out = tmp_path / "sim"
    argv = [
        "simulate",
        str(HVR),
        "--out",
        str(out),
        "--n-micrographs",
        "2",
        "--size",
        "128",
        "--pixel-size",
        "2.0",
        "--particles-per-micrograph",
        "4",
        "6",
        "--seed",
        "11",
        "--carbon-probability",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    stars = sorted((out / "coordinates").glob("*.star"))
    assert [p.name for p in stars] == [
        "sim-1hvr_0000.star",
        "sim-1hvr_0000_decoys.star",
        "sim-1hvr_0001.star",
        "sim-1hvr_0001_decoys.star",
    ]
    table = starfile.read(stars[0])
    for column in (
        "rlnMicrographName",
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnDefocusU",
        "rlnDefocusV",
    ):
        assert column in table.columns
    assert ((table.rlnCoordinateX >= -0.5) & (table.rlnCoordinateX < 127.5)).all()
    decoys = starfile.read(stars[1])
    assert set(decoys["hpDecoyKind"]) >= {"carbon_edge"} and "rlnClassNumber" in decoys.columns
    picks = read_picks(stars[0])
    assert list(picks) == ["sim-1hvr_0000"] and len(picks["sim-1hvr_0000"]) == len(table)
    with mrcfile.open(out / "micrographs" / "sim-1hvr_0000.mrc") as mrc:
        assert mrc.data.shape == (128, 128) and float(mrc.voxel_size.x) == pytest.approx(2.0)
    (spec,) = load_project(out / "dataset.toml")
    assert spec.name == "sim-1hvr" and spec.pixel_size == 2.0 and len(spec.micrographs) == 2
    assert spec.diameter == pytest.approx(particle_diameter(load_model(HVR)), abs=0.1)
    record = json.loads((out / "config.json").read_text())
    assert record["seed"] == 11 and record["config"]["pixel_size"] == 2.0 and "hydrapicker_version" in record
    # Same seed, same files.
    again = tmp_path / "again"
    assert main([*argv[:3], str(again), *argv[4:]]) == 0
    with (
        mrcfile.open(out / "micrographs" / "sim-1hvr_0001.mrc") as a,
        mrcfile.open(again / "micrographs" / "sim-1hvr_0001.mrc") as b,
    ):
        np.testing.assert_array_equal(a.data, b.data)


def test_cli_png_rendering_writes_eight_bit_micrographs(tmp_path):
    from hydrapicker.cli import main
    from hydrapicker.data.project import load_project
    from hydrapicker.io import read_micrograph

    out = tmp_path / "png"
    argv = [
        "simulate",
        str(HVR),
        "--out",
        str(out),
        "--n-micrographs",
        "1",
        "--size",
        "96",
        "--rendering",
        "denoised-png",
        "--quiet",
    ]
    assert main(argv) == 0
    (spec,) = load_project(out / "dataset.toml")
    (path,) = spec.micrographs
    assert path.suffix == ".png"
    assert read_micrograph(path).shape == (96, 96)


def test_draw_params_respects_the_ranges(hvr):
    config = SimulationConfig(defocus_um=(1.2, 1.4), dose=(33.0, 34.0), astigmatism=(0.0, 0.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = draw_params(config, 50.0, rng)
        assert 12000 <= p.defocus_u <= 14000 and p.defocus_u == p.defocus_v and 33 <= p.dose <= 34


def test_cli_refuses_to_mix_runs_in_one_folder_unless_overwrite(tmp_path, capsys):
    from hydrapicker.cli import main

    argv = ["simulate", str(HVR), "--out", str(tmp_path / "o"), "--size", "64", "--quiet", "--n-micrographs"]
    assert main([*argv, "2"]) == 0
    assert main([*argv, "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "1", "--overwrite"]) == 0
    assert len(list((tmp_path / "o" / "micrographs").glob("*.mrc"))) == 1


def test_random_renderings_mix_plain_and_rendered_reproducibly():
    from hydrapicker.simulate.render import random_rendering

    draws = [random_rendering(np.random.default_rng(seed)) for seed in range(200)]
    assert draws == [random_rendering(np.random.default_rng(seed)) for seed in range(200)]
    plain = sum(d.name == "float" for d in draws) / len(draws)
    assert 0.35 < plain < 0.65  # about half plain float sums (SIMULATION.md §6)
    kinds = {d.eight_bit for d in draws} | {"bin2" if d.bin == 2 else None for d in draws}
    assert {"png", "jpg", "bin2"} <= kinds and any(d.denoise is not None for d in draws)


def test_particles_keep_off_carbon_and_contamination_which_are_recorded_as_decoys(hvr):
    config = quiet_config(
        shape=(384, 384),
        particles_per_micrograph=(60, 60),
        carbon_probability=1.0,
        contamination_probability=1.0,
        ice_thickness=(300.0, 300.0),
    )
    sim = simulate_micrograph(hvr, config, 12)
    kinds = sim.decoys["kind"]
    assert "carbon_edge" in set(kinds) and "contamination" in set(kinds) and len(sim.particles["x"]) > 0
    radius_px = particle_diameter(hvr) / sim.pixel_size / 2
    xy = np.stack([sim.particles["x"], sim.particles["y"]], axis=1)
    for x, y, kind, diameter in zip(sim.decoys["x"], sim.decoys["y"], kinds, sim.decoys["diameter"]):
        distance = np.hypot(xy[:, 0] - x, xy[:, 1] - y).min()
        if kind == "contamination":
            assert distance >= diameter / 2 - 1e-6
        elif kind == "carbon_edge":  # rim sampled every half diameter; particles sit a radius inside it
            assert distance >= radius_px * 0.85
