"""Progress in a log file: plain lines (count, total, rate, time left) when stderr is not a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from hydrapicker import defaults
from hydrapicker.cli import main as cli_main
from hydrapicker.progress import Progress, duration

STRUCTURES = Path(__file__).resolve().parents[1] / "data" / "structures"
LINE = r"{desc}: {done}/{total} {unit}, [^,]+ (?:{unit}/s|per \w+), (?:\S+ left|done in \S+)"


def test_a_log_file_gets_a_line_per_item_with_count_total_rate_and_time_left(monkeypatch):
    monkeypatch.setattr(defaults, "PROGRESS_LINE_S", 0.0)
    log = io.StringIO()
    with Progress(3, "picking", stream=log) as bar:
        for _ in range(3):
            bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    for done, line in enumerate(lines, start=1):
        assert re.fullmatch(LINE.format(desc="picking", done=done, total=3, unit="micrographs"), line), line
    assert "left" in lines[0] and "done in" in lines[-1]


def test_lines_come_at_most_every_few_seconds_and_once_at_the_end(monkeypatch):
    monkeypatch.setattr(defaults, "PROGRESS_LINE_S", 3600.0)
    log = io.StringIO()
    with Progress(100, "simulate x", stream=log) as bar:
        for _ in range(100):
            bar.update()
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "simulate x: 1/100 micrographs",
        "simulate x: 100/100 micrographs",
    ]
    inner = io.StringIO()
    with Progress(100, "epoch 1/2", "batches", leave=False, stream=inner) as bar:
        for _ in range(100):
            bar.update()
    assert inner.getvalue() == ""  # an inner loop reports only when it runs long; its outer loop says the rest


def test_durations_read_as_a_person_would_write_them():
    assert [duration(s) for s in (4.4, 185, 7620)] == ["4s", "3m05s", "2h07m"]


def test_pick_writes_a_progress_line_per_micrograph_when_stderr_is_a_log_file(tmp_path, capsys, monkeypatch):
    """A SLURM job's log used to show nothing until the final line (the bar is off when stderr is not a terminal)."""
    from _synthetic import gaussian_spots, spread_tiny_model, write_checkpoint

    from hydrapicker.io import write_mrc

    monkeypatch.setattr(defaults, "PROGRESS_LINE_S", 0.0)
    model = write_checkpoint(tmp_path / "tiny.pt", spread_tiny_model())
    for i in range(3):
        centres = np.random.default_rng(i).uniform(20, 140, size=(6, 2))
        write_mrc(tmp_path / "mics" / f"m{i}.mrc", gaussian_spots((160, 160), centres, 8, contrast=-1.0, seed=i), 2.0)
    argv = [
        "pick",
        str(tmp_path / "mics"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(model),
        "--diameter-px",
        "20",
    ]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    for done in (1, 2, 3):
        assert any(re.fullmatch(LINE.format(desc="picking", done=done, total=3, unit="micrographs"), x) for x in err), (
            err
        )


def test_simulate_writes_a_progress_line_per_micrograph_when_stderr_is_a_log_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(defaults, "PROGRESS_LINE_S", 0.0)
    argv = ["simulate", str(STRUCTURES / "1hvr.pdb.gz"), "--out", str(tmp_path / "sim"), "--n-micrographs", "2"]
    assert cli_main(argv + ["--size", "128"]) == 0
    err = capsys.readouterr().err.splitlines()
    for done in (1, 2):
        assert any(
            re.fullmatch(LINE.format(desc="simulate sim-1hvr", done=done, total=2, unit="micrographs"), x) for x in err
        ), err
