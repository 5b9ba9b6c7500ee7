"""Bad input, every verb: one clear line naming the file and what is wrong, a non-zero exit, and every
output complete or absent (DESIGN, *Bad input*). Also: a full disk, and a folder with corrupt micrographs.

The cases live in tests/_bad_inputs.py (scripts/bad_input_table.py writes their results to
docs/reliability.md); where an older test already pins an item for one verb, the case names it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _bad_inputs import (
    CASES,
    CENTRES,
    _checkpoint,
    _constant,
    _mrc,
    _nan_pixels,
    _truncated_mrc,
    partial_outputs,
    run_case,
)

from hydrapicker.cli import main as cli_main
from hydrapicker.io import Picks, read_picks, write_picks

VERBS = ("pick", "train", "finetune", "evaluate", "simulate", "demo")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_bad_input_gives_one_line_naming_it_and_leaves_no_partial_output(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert not outcome.partial, outcome.partial
    lines = [line for line in outcome.stderr if line.strip()]
    if case.expect == "accepted":
        assert outcome.code == 0, outcome.stderr
        return
    if case.expect == "listed":  # pick: the others are picked, this one listed, exit 0
        assert outcome.code == 0, outcome.stderr
        assert (tmp_path / "out" / "csv" / "m0.csv").is_file()
        assert not list((tmp_path / "out").rglob("m1.*"))
        assert any(line.startswith("skipped ") and case.names in line for line in lines), lines
        listing = lines[lines.index("1 micrograph(s) could not be picked:") + 1 :]
        assert len(listing) == 1 and case.names in listing[0], lines
        return
    assert outcome.code == 1, (outcome.code, outcome.stderr)
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"hydrapicker {case.verb}: error: "), lines
    assert case.names in errors[0], errors[0]
    assert "Traceback" not in "\n".join(outcome.stderr)


def test_every_verb_meets_every_kind_of_bad_input_it_reads():
    by_verb = {verb: {c.item for c in CASES if c.verb == verb} for verb in VERBS}
    assert all(by_verb.values()), by_verb
    for verb in ("pick", "train", "finetune"):
        assert any("NaN/Inf" in item for item in by_verb[verb]) and any(
            "truncated MRC" in item for item in by_verb[verb]
        )
    for verb in ("train", "finetune", "evaluate"):
        assert any("malformed coordinate" in item for item in by_verb[verb])
        assert any("empty coordinate" in item for item in by_verb[verb])
        assert any("absent" in item for item in by_verb[verb])
    for verb in ("pick", "train", "finetune", "evaluate", "simulate"):
        assert any("disk full" in item for item in by_verb[verb])


def test_a_folder_with_three_corrupt_micrographs_picks_the_others_and_lists_the_three(tmp_path, capsys):
    mics = tmp_path / "mics"
    for i in range(12):
        _mrc(mics / f"mic_{i:02d}.mrc", seed=i)
    corrupt = {"mic_03": _truncated_mrc, "mic_07": _nan_pixels, "mic_10": _constant}
    for stem, make in corrupt.items():
        make(mics / f"{stem}.mrc")
    _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "pick",
                str(mics),
                "--out",
                str(out),
                "--model",
                str(tmp_path / "model.pt"),
                "--diameter-px",
                "40",
                "--threshold",
                "0.0",
                "--format",
                "star",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "picked 9 micrographs" in captured.out and "3 failed" in captured.out
    listing = captured.err[captured.err.index("3 micrograph(s) could not be picked:") :].splitlines()[1:]
    assert sorted(Path(line.strip().split(":")[0]).stem for line in listing) == sorted(corrupt)
    picked = read_picks(out / "picks.csv", "csv")
    assert sorted(picked) == sorted(f"mic_{i:02d}" for i in range(12) if f"mic_{i:02d}" not in corrupt)
    assert not partial_outputs([out])


def test_a_pick_on_the_first_pixel_left_of_zero_is_written_to_cs_as_the_edge(tmp_path):
    # pick keeps centres down to x = -0.5 (still on pixel 0); a .cs fraction cannot go below 0
    picks = Picks("m", [-0.4, 10.0], [5.0, -0.2], [0.9, 0.8], box_size=20.0, shape=(50, 40))
    write_picks(tmp_path / "m.cs", picks)
    back = read_picks(tmp_path / "m.cs")["m"]
    np.testing.assert_allclose(back.x, [0.0, 10.0], atol=1e-5)
    np.testing.assert_allclose(back.y, [5.0, 0.0], atol=1e-5)
    with pytest.raises(Exception, match="outside"):
        write_picks(tmp_path / "n.cs", Picks("n", [-0.6], [5.0], [1.0], box_size=20.0, shape=(50, 40)))


# --- a real full disk: a 64 KiB tmpfs ------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs mounted for the test (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_picking_onto_a_disk_that_fills_up_fails_clearly_and_leaves_only_complete_files(tmp_path, tiny_disk, capsys):
    mics = tmp_path / "mics"
    for i in range(12):
        _mrc(mics / f"mic_{i:02d}.mrc", seed=i)
    _checkpoint(tmp_path / "model.pt")
    out = tiny_disk / "out"
    code = cli_main(
        [
            "pick",
            str(mics),
            "--out",
            str(out),
            "--model",
            str(tmp_path / "model.pt"),
            "--diameter-px",
            "40",
            "--threshold",
            "0.0",
            "--overlay",
            str(out / "overlays"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "No space left on device" in err and "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert not partial_outputs([out])
    assert list(out.rglob("*.png")) or list(out.rglob("*.star"))  # it got some way before the disk filled


@pytest.mark.slow  # trains an epoch first; the disk-fills cases of test_bad_input_... hit the same writers
def test_training_onto_a_disk_that_fills_up_fails_clearly_and_leaves_only_complete_files(tmp_path, tiny_disk, capsys):
    for stem, seed in (("m0", 0), ("m1", 1)):
        _mrc(tmp_path / f"{stem}.mrc", seed=seed)
        (tmp_path / f"{stem}.csv").write_text(
            "micrograph,x,y,score\n" + "".join(f"{stem},{x:g},{y:g},1\n" for x, y in CENTRES)
        )
    (tmp_path / "project.toml").write_text(
        '[[dataset]]\nname = "toy"\nmicrographs = "m*.mrc"\ncoordinates = "*.csv"\npixel_size = 1.0\ndiameter = 40.0\n'
    )
    out = tiny_disk / "out"
    code = cli_main(
        [
            "train",
            str(tmp_path / "project.toml"),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--stage",
            "1",
            "--epochs",
            "1",
            "--batches-per-epoch",
            "1",
            "--val-batches",
            "1",
            "--threads",
            "1",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert (
        err.startswith("hydrapicker train: error: ") and "No space left on device" in err and len(err.splitlines()) == 1
    )
    assert not partial_outputs([out])
