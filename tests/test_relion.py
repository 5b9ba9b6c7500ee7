"""RELION 5 External job: the files RELION reads back, on a project laid out as RELION lays it out.

What RELION expects is pinned from its source (see :mod:`hydrapicker.relion`): the External job's
command line (``RelionJob::getCommandsExternalJob``), ``RELION_OUTPUT_NODES.star`` as
``PipeLine::getOutputNodesFromStarFile`` reads it, and the coordinate list as ``relion_preprocess
--coord_list`` (Extract) reads it: ``micname2coordname[rlnMicrographName] = rlnMicrographCoordinates``.
The STAR files are read back with gemmi's CIF parser, independent of the starfile library we write with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _synthetic import StandInPicker, gaussian_spots
from conftest import REAL_BGAL

from hydrapicker.cli import main as cli_main
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.picker import PickSettings, Prepared
from hydrapicker.relion import (
    COORDINATES_NODE_TYPE,
    read_micrographs_star,
    run_external_job,
    write_coordinate_list,
)

JOB = "External/job005/"

# The shape of CtfFind/job003/micrographs_ctf.star written by RELION 5 (header, optics table,
# per-micrograph CTF columns); values are made up, names and layout are RELION's.
_STAR = """
# version 50001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnMicrographPixelSize #7
{optics}

# version 50001

data_micrographs

loop_
_rlnMicrographName #1
_rlnMicrographMetadata #2
_rlnOpticsGroup #3
_rlnAccumMotionTotal #4
_rlnAccumMotionEarly #5
_rlnAccumMotionLate #6
_rlnCtfImage #7
_rlnDefocusU #8
_rlnDefocusV #9
_rlnCtfAstigmatism #10
_rlnDefocusAngle #11
_rlnCtfFigureOfMerit #12
_rlnCtfMaxResolution #13
_rlnCtfIceRingDensity #14
{micrographs}
"""


def _micrographs_star(project: Path, names_groups: list[tuple[str, int]], pixel_sizes: dict[int, float]) -> Path:
    optics = "\n".join(
        f"opticsGroup{g} {g} {s / 4:.6f} 300.000000 2.700000 0.100000 {s:.6f}" for g, s in pixel_sizes.items()
    )
    rows = "\n".join(
        f"{name} {name[:-4]}.star {group} 12.1 2.3 9.8 CtfFind/job003/{name.split('/', 2)[2][:-4]}_PS.ctf:mrc "
        f"10864.1 10510.9 353.2 77.4 0.131 4.51 0.0124"
        for name, group in names_groups
    )
    path = project / "CtfFind" / "job003" / "micrographs_ctf.star"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_STAR.format(optics=optics, micrographs=rows))
    return path


def _gemmi_table(path: Path, block: str, columns: list[str]) -> list[list[str]]:
    """A STAR loop as RELION's own reader sees it (gemmi reads STAR as CIF); one list per row."""
    import gemmi

    doc = gemmi.cif.read_file(str(path))
    table = (doc.find_block(block) if block else doc[0]).find("_", columns)
    return [[table[i][j] for j in range(len(columns))] for i in range(len(table))]


def _extract_coordinate_files(project: Path, in_mics: Path, coord_list: Path) -> dict[str, Path]:
    """What ``relion_preprocess --coord_list`` does (src/preprocessing.cpp): read the list's first block
    into ``micname2coordname``, then look every micrograph of the micrographs STAR up by its exact name."""
    import gemmi

    first = gemmi.cif.read_file(str(coord_list))[0]
    table = first.find("_", ["rlnMicrographName", "rlnMicrographCoordinates"])
    micname2coordname = {table[i][0]: table[i][1] for i in range(len(table))}
    names = [row[0] for row in _gemmi_table(in_mics, "micrographs", ["rlnMicrographName"])]
    return {name: project / micname2coordname[name] for name in names if name in micname2coordname}


# --- the real thing: the shipped model on a real micrograph, called as RELION calls it ----------


@pytest.fixture(scope="module")
def relion_project(tmp_path_factory) -> tuple[Path, str, Path]:
    """A RELION project with one real β-gal micrograph as MotionCorr writes it (MRC), whose header
    claims 1.0 Å/px while data_optics says 7.08 (the truth), and the job run from its folder."""
    png = sorted(REAL_BGAL.glob("*.png"))[0]
    project = tmp_path_factory.mktemp("relion_project")
    name = f"MotionCorr/job002/Movies/{png.stem}.mrc"
    write_mrc(project / name, read_micrograph(png).data, pixel_size=1.0)
    _micrographs_star(project, [(name, 1)], {1: 7.08})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        # exactly the command line getCommandsExternalJob builds: --o, --in_mics, params, --j
        status = cli_main(
            [
                "relion",
                "--o",
                JOB,
                "--in_mics",
                "CtfFind/job003/micrographs_ctf.star",
                "--diameter-A",
                "190",
                "--j",
                "1",
            ]
        )
    assert status == 0
    return project, name, png


def test_external_job_declares_its_coordinate_list_as_relion_5_autopick_coordinates(relion_project):
    project, _, _ = relion_project
    assert (project / JOB / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert not (project / JOB / "RELION_JOB_EXIT_FAILURE").exists()
    nodes = _gemmi_table(
        project / JOB / "RELION_OUTPUT_NODES.star", "output_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
    )
    assert nodes == [["External/job005/autopick.star", "MicrographCoordsGroup.star.relion.autopick"]]
    assert nodes[0][1] == COORDINATES_NODE_TYPE


def test_extract_finds_the_picks_of_every_micrograph_by_its_exact_name(relion_project):
    project, name, _ = relion_project
    in_mics = project / "CtfFind" / "job003" / "micrographs_ctf.star"
    found = _extract_coordinate_files(project, in_mics, project / JOB / "autopick.star")
    assert list(found) == [name]
    coords = np.array(
        _gemmi_table(found[name], "", ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]), float
    )
    assert len(coords) > 50
    assert coords[:, :2].min() >= -0.5 and coords[:, :2].max() <= 1023.5


def test_external_job_picks_the_labelled_particles_at_the_optics_pixel_size(relion_project):
    """At the header's 1.0 Å/px a 190 Å particle would be 190 px wide and nothing would match the
    27-px labels; matching them shows the optics table's 7.08 Å/px was used."""
    from scipy.spatial import cKDTree

    project, name, png = relion_project
    picks = read_picks(project / JOB / "star" / f"{png.stem}.star", "star")[png.stem]
    truth = read_picks(png.with_suffix(".csv"), "csv", micrograph=png.stem)[png.stem]
    distance, _ = cKDTree(np.column_stack([picks.x, picks.y])).query(np.column_stack([truth.x, truth.y]))
    recall = float(np.mean(distance <= 27 / 4))
    distance, _ = cKDTree(np.column_stack([truth.x, truth.y])).query(np.column_stack([picks.x, picks.y]))
    precision = float(np.mean(distance <= 27 / 4))
    assert recall > 0.5 and precision > 0.5, (recall, precision)


# --- the glue, with a stand-in picker (no network) ---------------------------------------------------


class _SpotPicker(StandInPicker):
    """Picks the brightest pixel of each micrograph; records the pixel size it was built with."""

    seen: dict[str, float | None] = {}

    def prepare(self, path: Path) -> Prepared:
        prepared = super().prepare(path)
        _SpotPicker.seen[prepared.name] = self.settings.size.pixel_size
        return prepared

    def spots(self, prepared: Prepared) -> Picks:
        row, col = np.unravel_index(np.argmax(prepared.data), prepared.data.shape)
        return Picks(prepared.name, [col], [row], [0.9], box_size=10.0, shape=prepared.data.shape)


@pytest.fixture
def project(tmp_path) -> Path:
    """Three small micrographs in two optics groups (2.0 and 3.0 Å/px), in two MotionCorr subfolders."""
    names = [
        ("MotionCorr/job002/Movies/a.mrc", 1),
        ("MotionCorr/job002/Movies/b.mrc", 2),
        ("MotionCorr/job002/Other/c.mrc", 1),
    ]
    for i, (name, _) in enumerate(names):
        spot = np.array([[20.0 + 7 * i, 30.0 + 3 * i]])
        write_mrc(tmp_path / name, gaussian_spots((64, 80), spot, 2.0, noise=0.01, seed=i), pixel_size=1.0)
    _micrographs_star(tmp_path, names, {1: 2.0, 2: 3.0})
    return tmp_path


def _run(project: Path, **kwargs):
    return run_external_job(
        "CtfFind/job003/micrographs_ctf.star",
        JOB,
        _SpotPicker,
        PickSettings(ParticleSize(diameter_A=20.0)),
        project_dir=project,
        **kwargs,
    )


def test_each_optics_group_is_picked_at_its_own_pixel_size(project):
    _SpotPicker.seen = {}
    report = _run(project)
    assert sorted(report.picked) == ["a", "b", "c"]
    assert _SpotPicker.seen == {"a": 2.0, "b": 3.0, "c": 2.0}


def test_coordinate_files_hold_each_micrographs_own_picks_in_its_stored_frame(project):
    _run(project)
    in_mics = project / "CtfFind" / "job003" / "micrographs_ctf.star"
    found = _extract_coordinate_files(project, in_mics, project / JOB / "autopick.star")
    assert set(found) == {
        "MotionCorr/job002/Movies/a.mrc",
        "MotionCorr/job002/Movies/b.mrc",
        "MotionCorr/job002/Other/c.mrc",
    }
    for i, name in enumerate(sorted(found)):
        xy = np.array(_gemmi_table(found[name], "", ["rlnCoordinateX", "rlnCoordinateY"]), float)
        np.testing.assert_allclose(xy, [[20.0 + 7 * i, 30.0 + 3 * i]])  # the spot's column, row


def test_an_unreadable_micrograph_is_left_out_of_the_coordinate_list(project):
    (project / "MotionCorr/job002/Movies/b.mrc").write_bytes(b"not an MRC file")
    report = _run(project)
    assert list(report.failed) == [str(project / "MotionCorr/job002/Movies/b.mrc")]
    rows = _gemmi_table(project / JOB / "autopick.star", "coordinate_files", ["rlnMicrographName"])
    assert [r[0] for r in rows] == ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Other/c.mrc"]


def test_a_failed_job_leaves_relion_the_failure_marker_and_one_line(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    (project / JOB).mkdir(parents=True)
    (project / JOB / "RELION_JOB_EXIT_SUCCESS").touch()  # from an earlier run
    status = cli_main(
        ["relion", "--o", JOB, "--in_mics", "CtfFind/job003/missing.star", "--diameter-A", "190", "--j", "1"]
    )
    assert status == 1
    assert (project / JOB / "RELION_JOB_EXIT_FAILURE").is_file()
    assert not (project / JOB / "RELION_JOB_EXIT_SUCCESS").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.star" in err[0]


@pytest.mark.parametrize(
    "optics, micrographs, message",
    [
        (
            "opticsGroup1 1 1.0 300 2.7 0.1 0.0",
            "M/job1/a.mrc a.star 1 1 1 1 x 1 1 1 1 1 1 1",
            "_rlnMicrographPixelSize",
        ),
        ("opticsGroup1 1 1.0 300 2.7 0.1 2.0", "M/job1/a.mrc a.star 2 1 1 1 x 1 1 1 1 1 1 1", "_rlnOpticsGroup 2"),
    ],
)
def test_bad_micrographs_star_names_the_field(tmp_path, optics, micrographs, message):
    path = tmp_path / "mics.star"
    path.write_text(_STAR.format(optics=optics, micrographs=micrographs))
    with pytest.raises(HydraPickerError, match=message):
        read_micrographs_star(path, tmp_path)


def test_a_coords_suffix_name_is_refused_because_extract_would_read_it_the_old_way(tmp_path):
    with pytest.raises(HydraPickerError, match="coords_suffix"):
        write_coordinate_list(tmp_path / "coords_suffix_autopick.star", [("a.mrc", "a.star")])


def test_an_abort_request_from_relion_stops_the_job_and_answers_with_the_aborted_marker(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / JOB).mkdir(parents=True)
    (project / JOB / "RELION_JOB_ABORT_NOW").touch()  # what RELION's Abort button leaves
    status = cli_main(
        ["relion", "--o", JOB, "--in_mics", "CtfFind/job003/micrographs_ctf.star", "--diameter-A", "20", "--j", "1"]
    )
    assert status == 1
    assert (project / JOB / "RELION_JOB_EXIT_ABORTED").is_file()
    assert not (project / JOB / "RELION_JOB_ABORT_NOW").exists()
    assert not (project / JOB / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (project / JOB / "autopick.star").exists()


def test_the_report_page_works_on_the_job_folder(relion_project):
    from hydrapicker.report import write_report

    project, _, png = relion_project
    page = write_report(project / JOB).read_text()  # micrographs from the job's command.json
    assert png.stem in page and "data:image/png;base64," in page


def test_relions_own_extraction_centres_its_boxes_on_our_coordinates(tmp_path, monkeypatch):
    """relion_preprocess (Debian's RELION 3.1) extracts the particles of our per-micrograph coordinate
    files from a micrograph wider than tall: each box is centred on its spot,
    so RELION reads _rlnCoordinateX as the column and _rlnCoordinateY as the row, as we write them.
    RELION 3.1 predates --coord_list, so its --coord_dir/--coord_suffix scheme is pointed at the file."""
    import shutil
    import subprocess

    import mrcfile

    if shutil.which("relion_preprocess") is None:
        pytest.skip("RELION is not installed (apt-get install relion)")
    spots = np.array([[40.0, 150.0], [250.0, 30.0], [150.0, 100.0]])  # (x, y) on 200 rows x 300 columns

    class Spots(_SpotPicker):
        def spots(self, prepared: Prepared) -> Picks:
            return Picks(
                prepared.name, spots[:, 0], spots[:, 1], [0.9, 0.8, 0.7], box_size=10.0, shape=prepared.data.shape
            )

    name = "MotionCorr/job002/Movies/a.mrc"
    write_mrc(tmp_path / name, gaussian_spots((200, 300), spots, 2.0, noise=0.01), pixel_size=2.0)
    _micrographs_star(tmp_path, [(name, 1)], {1: 2.0})
    run_external_job(
        "CtfFind/job003/micrographs_ctf.star",
        JOB,
        Spots,
        PickSettings(ParticleSize(diameter_A=20.0)),
        project_dir=tmp_path,
    )
    (tmp_path / JOB / "star" / "Movies").mkdir()
    (tmp_path / JOB / "star" / "Movies" / "a.star").symlink_to("../a.star")
    monkeypatch.chdir(tmp_path)
    subprocess.run(
        [
            "relion_preprocess",
            "--i",
            "CtfFind/job003/micrographs_ctf.star",
            "--coord_dir",
            f"{JOB}star/",
            "--coord_suffix",
            ".star",
            "--part_star",
            "Extract/job006/particles.star",
            "--part_dir",
            "Extract/job006/",
            "--extract",
            "--extract_size",
            "32",
        ],
        check=True,
        capture_output=True,
    )
    with mrcfile.open(tmp_path / "Extract" / "job006" / "Movies" / "a.mrcs") as stack:
        particles = np.array(stack.data)
    assert particles.shape == (3, 32, 32)
    for box in particles:
        assert np.unravel_index(np.argmax(box), box.shape) == (16, 16)
