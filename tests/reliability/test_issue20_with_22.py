"""Where issue 20 (edge picks dropped by default, nothing left behind, overlays redrawn by `threshold --set`)
meets issue 22 (reruns with other options refused, all-or-nothing `threshold --set`, one sidecar reader)."""

from __future__ import annotations

import json
from pathlib import Path

from _bad_inputs import _picked

from hydrapicker.cli import main as cli_main
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.run_folder import RunRecord, candidate_paths
from hydrapicker.picking.overlay import redraw_overlays


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    argv = ["pick", str(root / "m0.mrc"), str(root / "m1.mrc"), "--model", str(root / "model.pt")]
    return [*argv, "--out", str(out), "--diameter-px", "40", "--format", "star,box", *extra]


def test_a_rerun_that_differs_in_keeping_edge_picks_is_refused_naming_the_flag(tmp_path, capsys):
    _picked(tmp_path)
    capsys.readouterr()
    assert cli_main(_argv(tmp_path, tmp_path / "out", "--keep-edge-picks")) == 1
    assert "--keep-edge-picks not given before, given now" in capsys.readouterr().err

    (tmp_path / "kept").mkdir()
    _picked(tmp_path / "kept", "--keep-edge-picks")
    capsys.readouterr()
    assert cli_main(_argv(tmp_path / "kept", tmp_path / "kept" / "out")) == 1
    assert "--keep-edge-picks given before, not given now" in capsys.readouterr().err
    assert cli_main(_argv(tmp_path / "kept", tmp_path / "kept" / "out", "--keep-edge-picks")) == 0


def test_a_folder_holding_another_runs_picks_csv_or_record_is_refused_unless_overwrite(tmp_path, capsys):
    _picked(tmp_path)
    capsys.readouterr()
    theirs = tmp_path / "theirs"  # `--out .` beside another tool's picks.csv, or a train run's folder
    theirs.mkdir()
    (theirs / "picks.csv").write_text("x,y\n10,20\n")
    assert cli_main(_argv(tmp_path, theirs)) == 1
    assert "picks.csv that no pick run wrote" in capsys.readouterr().err
    assert sorted(p.name for p in theirs.iterdir()) == ["picks.csv"]
    assert (theirs / "picks.csv").read_text() == "x,y\n10,20\n"
    (theirs / "command.json").write_text(json.dumps({"verb": "train", "options": {}}))
    assert cli_main(_argv(tmp_path, theirs)) == 1
    assert "of a hydrapicker train run, not of a pick run" in capsys.readouterr().err
    assert cli_main(_argv(tmp_path, theirs, "--overwrite")) == 0
    assert RunRecord.read(theirs).verb == "pick"
    assert cli_main(_argv(tmp_path, theirs)) == 0  # now a pick run's folder: a rerun goes on


def test_a_run_that_stops_on_an_error_before_picking_takes_back_its_folder_and_record(tmp_path, capsys, monkeypatch):
    import hydrapicker.picking.runner as runner

    _picked(tmp_path)  # the model and micrographs; out/ holds an earlier run

    def fail(*args, **kwargs):
        raise HydraPickerError("the disk went away")

    monkeypatch.setattr(runner, "pick_files_sharded", fail)
    new = tmp_path / "new" / "x1"
    assert cli_main(_argv(tmp_path, new)) == 1
    assert "the disk went away" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine\n")
    assert cli_main(_argv(tmp_path, there)) == 1
    assert sorted(p.name for p in there.iterdir()) == ["notes.txt"]  # no command.json left behind

    record = (tmp_path / "out" / "command.json").read_bytes()
    assert cli_main(_argv(tmp_path, tmp_path / "out", "--overwrite")) == 1
    assert (tmp_path / "out" / "command.json").read_bytes() == record  # the earlier run's record is back


def test_a_run_that_stops_on_an_error_after_picking_some_keeps_them(tmp_path, monkeypatch):
    import hydrapicker.picking.runner as runner

    _picked(tmp_path)
    real = runner.pick_files_sharded

    def pick_then_fail(paths, *args, **kwargs):
        real(paths[:1], *args, **kwargs)
        raise HydraPickerError("stopped after one micrograph")

    monkeypatch.setattr(runner, "pick_files_sharded", pick_then_fail)
    out = tmp_path / "partial"
    assert cli_main(_argv(tmp_path, out)) == 1
    assert sorted(p.name for p in (out / "csv").iterdir()) == ["m0.csv"]
    assert RunRecord.read(out) is not None  # a rerun goes on from there, with the same options


def test_threshold_set_redraws_the_overlays_it_can_and_names_the_ones_it_cannot(tmp_path, capsys):
    overlays = tmp_path / "overlays"
    _picked(tmp_path, "--overlay", str(overlays))
    out = tmp_path / "out"
    sidecar = candidate_paths(out, "m1")[1]
    info = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**info, "path": 5}))  # read_sidecar takes it (box and shape are fine)
    capsys.readouterr()
    assert cli_main(["threshold", str(out), "--set", "0.3"]) == 0
    captured = capsys.readouterr()
    assert "redrew 1 overlay(s)" in captured.out
    assert "warning: 1 overlay(s)" in captured.err and "m1:" in captured.err
    assert RunRecord.read(out) is not None and json.loads((out / "threshold.json").read_text())["threshold"] == 0.3

    # a sidecar gone or unreadable by the time the overlays are redrawn: named, the others still drawn
    from hydrapicker.threshold import read_candidates

    picks = {k: v.above(0.3) for k, v in read_candidates(out).items()}
    candidate_paths(out, "m1")[1].unlink()
    candidate_paths(out, "m0")[1].write_text("{not json")
    drawn, missed = redraw_overlays(out, {**picks, "m2": picks["m0"]})
    assert drawn == []
    assert [line.split(":")[0] for line in missed] == ["m0", "m1", "m2"]
    assert all("missing or unreadable" in line for line in missed)
