"""``hydrapicker evaluate`` driven in-process: formats, table, JSON and plots, one-line errors."""

from __future__ import annotations

import json

import numpy as np

from hydrapicker import cli
from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks, read_picks, write_picks


def _jittered(truth: dict[str, Picks], seed: int = 0) -> list[Picks]:
    """Most particles picked (jittered, scored high) plus a few false picks (scored low)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, p in truth.items():
        keep = rng.random(len(p)) < 0.8
        k = int(keep.sum())
        x = np.r_[p.x[keep] + rng.normal(0, 1.5, k), rng.uniform(0, 1000, 20)]
        y = np.r_[p.y[keep] + rng.normal(0, 1.5, k), rng.uniform(0, 1000, 20)]
        out.append(Picks(name, x, y, np.r_[rng.uniform(0.4, 1, k), rng.uniform(0, 0.6, 20)]))
    return out


def test_scores_star_picks_against_bundled_labels_and_writes_json_and_plots(bgal_dir, tmp_path, capsys):
    labels = sorted(bgal_dir.glob("*.csv"))
    truth = {k: v for f in labels for k, v in read_picks(f).items()}
    picks = _jittered(truth)
    write_picks(tmp_path / "picks.star", picks)
    status = cli.main(
        [
            "evaluate",
            str(tmp_path / "picks.star"),
            "--truth",
            *map(str, labels),
            "--box",
            "27",
            "--json",
            str(tmp_path / "out" / "scores.json"),
            "--plots",
            str(tmp_path / "out" / "plots"),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    for name in truth:
        assert name in printed
    assert "\nall " in printed
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    expected = evaluate({p.micrograph: p for p in read_picks(tmp_path / "picks.star").values()}, truth, 27)
    assert scores["ap"] == expected.ap and scores["tp"] == expected.tp
    assert set(scores["per_micrograph"]) == set(truth)
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == ["command.json", "pr.png", "roc.png"]


def test_any_format_pairs_by_micrograph_name(tmp_path, capsys):
    truth = {
        "mic_a": Picks("mic_a", [50, 150], [50, 150], box_size=20),
        "mic_b": Picks("mic_b", [80], [90], box_size=20),
    }
    for p in truth.values():
        write_picks(tmp_path / f"{p.micrograph}.box", p)  # truth: one BOX per micrograph
    write_picks(tmp_path / "picks.txt", [Picks("mic_a", [51, 300], [50, 300], [0.9, 0.1])])  # picks: Topaz
    status = cli.main(
        [
            "evaluate",
            str(tmp_path / "picks.txt"),
            "--truth",
            str(tmp_path / "mic_a.box"),
            str(tmp_path / "mic_b.box"),
            "--box",
            "20",
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert status == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert (scores["n_true"], scores["n_picks"], scores["tp"]) == (3, 2, 1)
    assert scores["per_micrograph"]["mic_b"]["n_picks"] == 0


def test_picks_on_unlabelled_micrograph_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    write_picks(tmp_path / "truth.csv", [Picks("mic_a", [50], [50])])
    write_picks(tmp_path / "picks.csv", [Picks("mic_a", [50], [50]), Picks("mic_zz", [5], [5])])
    args = [
        "evaluate",
        str(tmp_path / "picks.csv"),
        "--truth",
        str(tmp_path / "truth.csv"),
        "--box",
        "20",
        "--json",
        str(tmp_path / "out" / "s.json"),
        "--plots",
        str(tmp_path / "out" / "plots"),
    ]
    status = cli.main(args)
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "mic_zz" in err
    assert not (tmp_path / "out").exists()
    assert cli.main(args + ["--ignore-unlabelled"]) == 0
    assert json.loads((tmp_path / "out" / "s.json").read_text())["n_picks"] == 1


def test_malformed_picks_file_fails_in_one_line_naming_it(tmp_path, capsys):
    write_picks(tmp_path / "truth.csv", [Picks("mic_a", [50], [50])])
    (tmp_path / "picks.star").write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 oops\n")
    status = cli.main(
        [
            "evaluate",
            str(tmp_path / "picks.star"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--box",
            "20",
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "picks.star" in err and "oops" in err
    assert not (tmp_path / "s.json").exists()


def test_micrograph_in_two_truth_files_is_an_error_naming_both(tmp_path, capsys):
    write_picks(tmp_path / "t1.csv", [Picks("mic_a", [50], [50])])
    write_picks(tmp_path / "t2.csv", [Picks("mic_a", [60], [60])])
    write_picks(tmp_path / "p.csv", [Picks("mic_a", [50], [50])])
    status = cli.main(
        [
            "evaluate",
            str(tmp_path / "p.csv"),
            "--truth",
            str(tmp_path / "t1.csv"),
            str(tmp_path / "t2.csv"),
            "--box",
            "20",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "t1.csv" in err and "t2.csv" in err


def test_named_format_overrides_the_suffix(tmp_path, capsys):
    (tmp_path / "truth.dat").write_text("micrograph,x,y\nm,10,10\n")
    (tmp_path / "picks.dat").write_text("image_name\tx_coord\ty_coord\tscore\nm\t10\t10\t1\n")
    status = cli.main(
        [
            "evaluate",
            str(tmp_path / "picks.dat"),
            "--picks-format",
            "topaz",
            "--truth",
            str(tmp_path / "truth.dat"),
            "--truth-format",
            "csv",
            "--box",
            "8",
        ]
    )
    assert status == 0
    assert "1.000" in capsys.readouterr().out


def test_reads_the_truth_folder_that_simulate_writes(tmp_path, capsys):
    """`evaluate ... --truth sim/coordinates/*.star` (the shell's expansion, decoy files included) scores against
    the particles only; it used to stop at "micrograph ... appears in both NAME.star and NAME_decoys.star". The
    same glob gives fine-tuning its labels."""
    from pathlib import Path

    from hydrapicker.particle_size import ParticleSize
    from hydrapicker.training.finetune import labelled_micrographs

    structure = Path(__file__).resolve().parents[2] / "data" / "structures" / "1hvr.pdb.gz"
    sim = tmp_path / "sim"
    argv = ["simulate", str(structure), "--out", str(sim), "--n-micrographs", "2", "--size", "256", "--quiet"]
    assert cli.main(argv + ["--carbon-probability", "1"]) == 0
    every = sorted((sim / "coordinates").glob("*.star"))
    particles = [p for p in every if not p.stem.endswith("_decoys")]
    assert len(every) == 4 and len(particles) == 2
    capsys.readouterr()
    assert cli.main(["evaluate", *map(str, particles), "--truth", *map(str, every), "--box", "20"]) == 0
    assert "1.000" in capsys.readouterr().out  # the particles picked exactly: AP 1, decoys not counted as missed

    data = labelled_micrographs(
        "sim",
        [str(sim / "micrographs" / "*.mrc")],
        [str(sim / "coordinates" / "*.star")],
        size=ParticleSize(diameter_px=20),
    )
    assert set(data.spec.coordinates.values()) == set(particles)
