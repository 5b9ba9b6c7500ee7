"""scripts/cryosparc_import.py: our .cs picks onto a cryoSPARC job's micrographs, up to the server calls.

No cryoSPARC server here: the micrographs are cryosparc-tools' own ``Dataset`` objects, and the
server is a stand-in that records the calls cryosparc-tools' ExternalJob API would make.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from hydrapicker.io import Picks, write_picks

pytest.importorskip("cryosparc")
from cryosparc.dataset import Dataset  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cryosparc_import.py"
spec = importlib.util.spec_from_file_location("cryosparc_import", SCRIPT)
cryosparc_import = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cryosparc_import)

PATHS = [
    "J2/imported/012345678901234567_mic_a.mrc",  # an imported micrograph: UID prefix
    "J5/motioncorrected/009988776655443322_mic_b_patch_aligned_doseweighted.mrc",  # motion-corrected
    "J2/imported/012345678901234999_mic_c.mrc",  # connected, not picked
]


def _micrographs() -> Dataset:
    mics = Dataset.allocate(
        3,
        [
            ("micrograph_blob/path", "O"),
            ("micrograph_blob/shape", "<u4", (2,)),
            ("micrograph_blob/psize_A", "<f4"),
            ("ctf/exp_group_id", "<u4"),
        ],
    )
    mics["micrograph_blob/path"] = PATHS
    mics["micrograph_blob/shape"] = np.array([[400, 600]] * 3)  # twice what we picked (binned 2x)
    mics["micrograph_blob/psize_A"] = 0.85
    mics["ctf/exp_group_id"] = [1, 2, 1]
    return mics


def _ours(tmp_path: Path) -> list[Path]:
    paths = []
    for name, xs in (("mic_a", [10.0, 150.0]), ("mic_b", [30.0])):
        path = tmp_path / "cs" / f"{name}.cs"
        write_picks(path, Picks(name, xs, [20.0] * len(xs), [0.9] * len(xs), box_size=30, shape=(200, 300)), "cs")
        paths.append(path)
    return paths


def test_cryosparc_names_match_ours_without_their_uid_prefix_and_motion_correction_suffix():
    assert cryosparc_import.name_keys(PATHS[1]) == [
        "009988776655443322_mic_b_patch_aligned_doseweighted",
        "mic_b_patch_aligned_doseweighted",
        "mic_b",
    ]
    assert cryosparc_import.match_micrographs(["mic_b", "012345678901234567_mic_a"], _micrographs()) == {
        "mic_b": 1,
        "012345678901234567_mic_a": 0,
    }
    with pytest.raises(cryosparc_import.ImportError_, match="match no connected micrograph, e.g. 'mic_z'"):
        cryosparc_import.match_micrographs(["mic_a", "mic_z"], _micrographs())
    twice = _micrographs()
    twice["micrograph_blob/path"] = [PATHS[0], "J9/imported/012345678901230000_mic_a.mrc", PATHS[2]]
    with pytest.raises(cryosparc_import.ImportError_, match="'mic_a' matches 2 connected micrographs"):
        cryosparc_import.match_micrographs(["mic_a"], twice)


def test_picks_land_on_the_connected_micrographs_with_location_and_pick_stats(tmp_path):
    ours = cryosparc_import.read_our_picks(_ours(tmp_path))
    mics = _micrographs()
    particles = cryosparc_import.particles_on(ours, mics)
    assert len(particles) == 3
    np.testing.assert_array_equal(particles["location/micrograph_uid"], np.asarray(mics["uid"])[[0, 0, 1]])
    assert list(particles["location/micrograph_path"]) == [PATHS[0], PATHS[0], PATHS[1]]
    np.testing.assert_array_equal(particles["location/micrograph_shape"], [[400, 600]] * 3)
    np.testing.assert_array_equal(particles["location/exp_group_id"], [1, 1, 2])
    # fractional centres, as we wrote them for our 300-px-wide micrographs: the same place on cryoSPARC's 600-px ones
    np.testing.assert_allclose(particles["location/center_x_frac"] * 300, [10.0, 150.0, 30.0], atol=0.5)
    np.testing.assert_allclose(particles["pick_stats/ncc_score"], 0.9, atol=1e-6)


class _StandInJob:
    """The calls cryosparc-tools' ExternalJobController gets, recorded; ``micrographs`` is what load_input returns."""

    def __init__(self, micrographs: Dataset) -> None:
        self.uid, self.micrographs, self.calls, self.saved, self.error = "J7", micrographs, [], None, None

    def connect(self, target_input, source_job_uid, source_output, *, slots=()):
        self.calls.append(("connect", target_input, source_job_uid, source_output, list(slots)))

    def add_output(self, type, name, slots):
        self.calls.append(("add_output", type, name, list(slots)))

    @contextlib.contextmanager
    def run(self):
        try:
            yield self
        except Exception as exc:
            self.error = str(exc)
            raise

    def load_input(self, name, slots):
        self.calls.append(("load_input", name, list(slots)))
        return self.micrographs

    def alloc_output(self, name, alloc):
        return Dataset.allocate(alloc, cryosparc_import._PARTICLE_FIELDS)

    def save_output(self, name, dataset):
        self.saved = (name, dataset)


class _StandInServer:
    def __init__(self, job: _StandInJob) -> None:
        self.job, self.created = job, []

    def find_project(self, uid):
        server = self

        class _Project:
            def create_external_job(self, workspace_uid, title=""):
                server.created.append((uid, workspace_uid, title))
                return server.job

        return _Project()


def test_import_creates_the_external_job_and_saves_the_particles(tmp_path):
    ours = cryosparc_import.read_our_picks(_ours(tmp_path))
    job = _StandInJob(_micrographs())
    server = _StandInServer(job)
    assert cryosparc_import.import_picks(server, "P3", "W1", "J42", "exposures", ours, "HydraPicker picks") == "J7"
    assert server.created == [("P3", "W1", "HydraPicker picks")]
    assert job.calls == [
        ("connect", "micrographs", "J42", "exposures", ["micrograph_blob"]),
        ("add_output", "particle", "particles", ["location", "pick_stats"]),
        ("load_input", "micrographs", ["micrograph_blob"]),
    ]
    name, saved = job.saved
    assert name == "particles" and len(saved) == 3 and len(set(saved["uid"].tolist())) == 3
    assert {f.split("/")[0] for f in saved.fields(exclude_uid=True)} == {"location", "pick_stats"}


def test_names_that_match_no_micrograph_save_nothing_and_fail_the_job(tmp_path):
    ours = cryosparc_import.read_our_picks(_ours(tmp_path))
    mics = _micrographs()
    mics["micrograph_blob/path"] = ["J2/imported/012345678901234567_other.mrc", PATHS[1], PATHS[2]]
    job = _StandInJob(mics)
    with pytest.raises(cryosparc_import.ImportError_, match="'mic_a'"):
        cryosparc_import.import_picks(_StandInServer(job), "P3", "W1", "J42", "exposures", ours, "t")
    assert job.saved is None and "mic_a" in job.error


def test_dry_run_matches_against_exported_micrographs_without_a_server(tmp_path, capsys):
    _ours(tmp_path)
    _micrographs().save(str(tmp_path / "mics.cs"))
    argv = [str(tmp_path), "--project", "P3", "--workspace", "W1", "--job", "J42", "--dry-run"]
    assert cryosparc_import.main([*argv, "--micrographs-cs", str(tmp_path / "mics.cs")]) == 0
    assert "would save 3 particles on 2 micrograph(s)" in capsys.readouterr().out
