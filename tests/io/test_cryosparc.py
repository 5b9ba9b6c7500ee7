"""cryoSPARC: the ``.cs`` particle locations that ``pick`` writes, read back by cryoSPARC's own library.

cryosparc-tools is CryoSPARC's Python toolkit: ``cryosparc.dataset.Dataset.load`` is how CryoSPARC
code opens a ``.cs`` file, and ``cryosparc.mrc.read`` how it reads a micrograph (``reshape(nz, ny, nx)``,
no flip: row 0 is the first row stored). The fields are those of a particle "location" slot
(``location/micrograph_path``, ``micrograph_uid``, ``micrograph_shape`` = [ny, nx],
``center_x_frac``, ``center_y_frac``) plus ``pick_stats/ncc_score``, as a picker's output holds them
(cryosparc-tools' crYOLO example: ``center_y_frac = rlnCoordinateY / height`` with
``height, width = micrograph_blob/shape``). So ``center_y_frac * ny`` is the row of the micrograph as
stored, our y, with no flip. The tests pin that on micrographs whose two axes differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _synthetic import StandInPicker, gaussian_spots

from hydrapicker.io import Picks, read_picks, write_mrc
from hydrapicker.io.run_folder import output_paths
from hydrapicker.picking.picker import Prepared
from hydrapicker.picking.runner import pick_files

dataset = pytest.importorskip(
    "cryosparc.dataset", reason="cryosparc-tools is in the test extra: pip install -e '.[test]'"
)
cs_mrc = pytest.importorskip("cryosparc.mrc", reason="cryosparc-tools is in the test extra")

# Bright spots at known (x = column, y = row) on micrographs taller than wide and wider than tall.
_SPOTS = {"tall": ((90, 50), [(12.0, 70.0), (37.0, 9.0)]), "wide": ((40, 110), [(95.0, 31.0)])}


class _SpotPicker(StandInPicker):
    """Returns each micrograph's known spots as its picks (stands in for the network)."""

    def spots(self, prepared: Prepared) -> Picks:
        xy = np.array(_SPOTS[prepared.name][1])
        score = np.linspace(0.9, 0.5, len(xy))
        return Picks(prepared.name, xy[:, 0], xy[:, 1], score, box_size=8.0, shape=prepared.data.shape)


@pytest.fixture
def picked(tmp_path) -> tuple[Path, dict[str, Path]]:
    """Two MRC micrographs picked to ``.cs`` files by the folder pipeline, as ``pick --format cs`` writes them."""
    mics = {}
    for name, (shape, spots) in _SPOTS.items():
        mics[name] = tmp_path / "mics" / f"{name}.mrc"
        write_mrc(mics[name], gaussian_spots(shape, np.array(spots), 1.5, noise=0.02, seed=len(name)), pixel_size=1.5)
    out = tmp_path / "out"
    report = pick_files(list(mics.values()), out, _SpotPicker(), ("cs",), progress=False)
    assert sorted(report.picked) == sorted(_SPOTS)
    return out, mics


def test_cs_file_loads_in_cryosparc_tools_with_the_particle_location_fields(picked):
    out, _ = picked
    for name in _SPOTS:
        particles = dataset.Dataset.load(output_paths(out, name, ("cs",))["cs"])
        fields = set(particles.fields())
        for field in (
            "uid",
            "location/micrograph_uid",
            "location/micrograph_path",
            "location/micrograph_shape",
            "location/center_x_frac",
            "location/center_y_frac",
            "pick_stats/ncc_score",
        ):
            assert field in fields, field
        assert len(particles) == len(_SPOTS[name][1])
        assert len(set(particles["uid"].tolist())) == len(particles)  # CryoSPARC keys rows by uid
        assert set(particles["location/micrograph_path"].tolist()) == {f"{name}.mrc"}
        assert np.all((particles["location/center_x_frac"] >= 0) & (particles["location/center_x_frac"] <= 1))
        np.testing.assert_allclose(particles["pick_stats/ncc_score"], np.linspace(0.9, 0.5, len(particles)), rtol=1e-6)


def test_cryosparc_reads_the_picked_pixel_at_center_frac_times_its_own_micrograph_shape(picked):
    """Shape [ny, nx] and y = row as cryoSPARC itself reads the MRC: each location lands on its spot."""
    out, mics = picked
    for name, (_shape, spots) in _SPOTS.items():
        particles = dataset.Dataset.load(output_paths(out, name, ("cs",))["cs"])
        _, data = cs_mrc.read(mics[name])
        image = data.reshape(data.shape[-2:])
        assert [tuple(s) for s in particles["location/micrograph_shape"].tolist()] == [image.shape] * len(particles)
        ny, nx = image.shape
        rows = np.rint(particles["location/center_y_frac"] * ny).astype(int)
        cols = np.rint(particles["location/center_x_frac"] * nx).astype(int)
        np.testing.assert_array_equal(np.column_stack([cols, rows]), np.array(spots))
        # the spot is the brightest pixel near each location, so no axis is swapped or flipped
        for r, c in zip(rows, cols):
            window = image[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4]
            assert image[r, c] == window.max()


def test_cs_locations_read_back_to_the_same_picks(picked):
    out, _ = picked
    for name, (shape, spots) in _SPOTS.items():
        picks = read_picks(output_paths(out, name, ("cs",))["cs"])[name]
        assert picks.shape == shape
        np.testing.assert_allclose(np.column_stack([picks.x, picks.y]), spots, atol=1e-3)
