"""What a hostile but fair probe found (issue 22): no input overwritten, no number silently wrong.

The one-line refusals are bad-input cases (tests/_bad_inputs.py, `_issue22_cases`); these pin what
the cases cannot see: the input left intact, the names and counts that come out, the folder left as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _bad_inputs import _checkpoint, _kill_leftovers, _labels, _mrc, _picked, _png

from hydrapicker.cli import main as cli_main
from hydrapicker.defaults import PICK_THRESHOLD
from hydrapicker.io import read_picks
from hydrapicker.io.run_folder import RunRecord


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overlay_into_the_input_folder_is_refused_and_the_png_micrographs_are_untouched(tmp_path, capsys):
    _checkpoint(tmp_path / "model.pt")
    inout = tmp_path / "inout"
    inout.mkdir()
    _png(inout / "p0.png", 0)
    before = _snapshot(inout)
    argv = ["pick", str(inout), "--out", str(inout / "picks"), "--model", str(tmp_path / "model.pt")]
    code = cli_main([*argv, "--diameter-px", "13", "--fixed-diameter", "--overlay", str(inout)])
    assert code == 1 and "would overwrite the input" in capsys.readouterr().err
    assert _snapshot(inout) == before


def test_linked_micrographs_are_picked_under_the_link_names_and_two_links_to_one_file_give_two(tmp_path):
    _checkpoint(tmp_path / "model.pt")
    _mrc(tmp_path / "raw" / "FoilHole_1_Data.mrc", seed=0)
    imported = tmp_path / "J1" / "imported"
    imported.mkdir(parents=True)
    for uid in ("012345", "012346"):
        (imported / f"{uid}_FoilHole_1_Data.mrc").symlink_to(tmp_path / "raw" / "FoilHole_1_Data.mrc")
    out = tmp_path / "out"
    argv = ["pick", str(imported), "--out", str(out), "--model", str(tmp_path / "model.pt"), "--diameter-px", "40"]
    assert cli_main([*argv, "--format", "star", "--threshold", "0.0"]) == 0
    assert sorted(p.name for p in (out / "csv").iterdir()) == [
        "012345_FoilHole_1_Data.csv",
        "012346_FoilHole_1_Data.csv",
    ]
    assert sorted(read_picks(out / "picks.csv")) == ["012345_FoilHole_1_Data", "012346_FoilHole_1_Data"]


def test_readers_of_a_pick_folder_ignore_the_temporaries_a_killed_run_left(tmp_path, capsys):
    _picked(tmp_path)
    out = tmp_path / "out"
    _kill_leftovers(tmp_path)
    assert cli_main(["threshold", str(out)]) == 0
    assert "of 2 micrograph(s)" in capsys.readouterr().out
    assert cli_main(["threshold", str(out), "--set", "0.01"]) == 0  # the floor: every candidate
    assert sorted(read_picks(out / "picks.csv")) == ["m0", "m1"]
    assert cli_main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "2 micrographs from" in page and ".m1.k2j3h4" not in page


def test_evaluate_reads_a_csv_saved_with_a_byte_order_mark_as_the_same_picks(tmp_path, capsys):
    _labels(tmp_path / "truth.csv", "m1")
    (tmp_path / "picks.csv").write_bytes((tmp_path / "truth.csv").read_text().encode("utf-8-sig"))
    argv = ["evaluate", str(tmp_path / "picks.csv"), "--truth", str(tmp_path / "truth.csv"), "--box", "40"]
    assert cli_main([*argv, "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["ap"] == pytest.approx(1.0)


def test_a_rerun_with_another_threshold_is_refused_and_leaves_the_folder_as_it_was(tmp_path, capsys):
    _picked(tmp_path)
    out = tmp_path / "out"
    before = _snapshot(out)
    argv = ["pick", str(tmp_path / "m0.mrc"), str(tmp_path / "m1.mrc"), "--model", str(tmp_path / "model.pt")]
    argv += ["--out", str(out), "--diameter-px", "40", "--format", "star,box"]
    assert cli_main([*argv, "--threshold", "0.6"]) == 1
    assert f"--threshold {PICK_THRESHOLD:g} before, 0.6 now" in capsys.readouterr().err
    assert _snapshot(out) == before
    # the same options (the folder's threshold when none is given) go on; --overwrite re-picks at the new one
    assert cli_main(argv) == 0 and "skipped 2 already done" in capsys.readouterr().out
    assert cli_main([*argv, "--threshold", "0.6", "--overwrite"]) == 0
    assert RunRecord.read(out).threshold == 0.6
    # after `threshold --set`, a rerun without --threshold is at the threshold set, not refused
    assert cli_main(["threshold", str(out), "--set", "0.3"]) == 0
    assert cli_main(argv) == 0


def test_threshold_set_that_fails_on_one_micrograph_rewrites_nothing(tmp_path, capsys):
    _picked(tmp_path)
    out = tmp_path / "out"
    sidecar = out / "candidates" / "m1.json"
    sidecar.write_text(sidecar.read_text().replace('"box_size": 40.0', '"box_size": null'))
    before = _snapshot(out)
    assert cli_main(["threshold", str(out), "--set", "0.3"]) == 1
    assert "m1.json: no box_size" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_format_given_twice_writes_both(tmp_path):
    _mrc(tmp_path / "m0.mrc", seed=0)
    _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    argv = ["pick", str(tmp_path / "m0.mrc"), "--out", str(out), "--model", str(tmp_path / "model.pt")]
    assert cli_main([*argv, "--diameter-px", "40", "--format", "star", "--format", "box"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["box", "candidates", "csv", "star"]


def test_a_size_corrected_run_picks_the_good_micrographs_and_lists_the_one_with_a_wrong_header(tmp_path, capsys):
    from _bad_inputs import _image, _size_checkpoint

    from hydrapicker.io import write_mrc

    _size_checkpoint(tmp_path / "model.pt")
    for i in range(3):
        _mrc(tmp_path / f"m{i}.mrc", seed=i)
    write_mrc(tmp_path / "m3.mrc", _image(3), pixel_size=0.001)
    out = tmp_path / "out"
    argv = ["pick", str(tmp_path), "--out", str(out), "--model", str(tmp_path / "model.pt"), "--diameter-A", "40"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert "picked 3 micrographs" in captured.out and "1 failed" in captured.out
    listing = captured.err[captured.err.index("could not be picked:") :]
    assert "m3.mrc" in listing and "header gives 0.001 Å/px" in listing and "constant" not in listing
    assert sorted(p.stem for p in (out / "csv").iterdir()) == ["m0", "m1", "m2"]
