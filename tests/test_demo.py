"""The demo on the bundled real micrographs: what it writes and what it reports."""

from __future__ import annotations

import json

import numpy as np
import starfile

from hydrapicker import cli
from hydrapicker.demo import bundled_datasets, jittered_copy, run_demo
from hydrapicker.evaluate import evaluate


def test_bundled_datasets_have_micrographs_and_labels():
    for dataset in bundled_datasets():
        micrographs = dataset.micrographs()
        assert micrographs, dataset.name
        truth = dataset.labels()
        assert set(truth) == {m.stem for m in micrographs}
        assert all(len(p) > 0 for p in truth.values())


def test_jittered_copy_is_imperfect_but_close_to_the_truth():
    dataset = bundled_datasets()[0]
    truth = dataset.labels()
    name, particles = next(iter(truth.items()))
    picks = jittered_copy(particles, (1024, 1024), np.random.default_rng(1))
    result = evaluate({name: picks}, {name: particles}, box_size=dataset.box_size)
    assert 0.5 < result.ap < 1.0
    assert result.n_picks != result.n_true


def test_demo_writes_report_star_files_and_curves(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "REPORT.md" in out
    report = (tmp_path / "REPORT.md").read_text()
    assert "| empiar10017_bgal_bin4 | labels | 1.000 |" in report
    labels_dir = tmp_path / "empiar10017_bgal_bin4" / "labels"
    scores = json.loads((labels_dir / "evaluation.json").read_text())
    assert scores["ap"] == 1.0 and scores["tp"] == scores["n_true"] > 0
    assert (labels_dir / "pr.png").stat().st_size > 0
    star = starfile.read(next((labels_dir / "star").glob("*.star")))
    assert {"rlnCoordinateX", "rlnCoordinateY"} <= set(star.columns)
    assert (tmp_path / "command.json").exists()


def test_demo_is_reproducible_from_its_seed(tmp_path):
    first = run_demo(tmp_path / "a", seed=3)
    second = run_demo(tmp_path / "b", seed=3)
    for dataset in first:
        assert first[dataset]["jittered"].ap == second[dataset]["jittered"].ap
