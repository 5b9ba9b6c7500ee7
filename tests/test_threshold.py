"""Candidates at the floor, the suggested threshold, and re-writing a pick folder at a new threshold without the network."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _synthetic import gaussian_spots, spread_tiny_model, write_checkpoint

from hydrapicker.checkpoint import ModelMeta
from hydrapicker.cli import main as cli_main
from hydrapicker.defaults import CANDIDATE_FLOOR
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc
from hydrapicker.io.run_folder import candidate_paths, output_paths
from hydrapicker.model import HydraPicker
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.decode import picks_from_outputs
from hydrapicker.picking.inference import head_outputs
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.threshold import (
    expected_f1_threshold,
    picks_per_micrograph,
    read_candidates,
    suggest_threshold,
    write_plots,
)

FORMATS = ("star", "box", "cbox", "topaz", "cs", "csv")


def _meta(model: HydraPicker) -> ModelMeta:
    return ModelMeta(
        preset=model.preset, head_names=model.head_names, target_diameter_px=40.0, anchor_stride=model.stride
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    write_checkpoint(path, spread_tiny_model())
    return path


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mics")
    rng = np.random.default_rng(3)
    paths = []
    for i, shape in enumerate([(240, 200), (208, 208)]):
        path = folder / f"mic_{i}.mrc"
        write_mrc(
            path,
            gaussian_spots(shape, rng.uniform(20, 180, size=(10, 2)), 10, contrast=-1.0, noise=0.3, seed=i),
            pixel_size=2.0,
        )
        paths.append(path)
    return paths


def _pick(micrographs, out, checkpoint, threshold, *extra) -> None:
    argv = ["pick", *map(str, micrographs), "--out", str(out), "--model", str(checkpoint), "--diameter-px", "40"]
    assert cli_main([*argv, "--threshold", str(threshold), *extra]) == 0


def test_picks_at_any_threshold_are_the_candidates_above_it(micrographs):
    """Greedy NMS keeps a pick whatever lies below it: thresholding the candidates = picking at that threshold."""
    model = spread_tiny_model()
    meta = _meta(model)
    picker = Picker(model, meta, PickSettings(ParticleSize(diameter_px=40), threshold=0.5))
    prepared = picker.prepare(micrographs[0])
    candidates = picker.candidates(prepared)
    assert candidates.score.min() >= CANDIDATE_FLOOR and len(candidates) > len(picker.pick(prepared)) > 0
    outputs = head_outputs(model, prepared.image)
    spread = np.quantile(candidates.score, [0.2, 0.5, 0.8])
    for t in (CANDIDATE_FLOOR, *spread):
        direct = picks_from_outputs(outputs, meta, prepared.scale, prepared.data.shape, t)
        above = candidates.above(t)
        assert len(direct) == len(above) > 0
        np.testing.assert_allclose(above.x, direct.x)
        np.testing.assert_allclose(above.score, direct.score)


def test_pick_keeps_every_candidate_with_box_size_and_shape(micrographs, checkpoint, tmp_path):
    out = tmp_path / "out"
    _pick(micrographs, out, checkpoint, 0.5, "--format", "csv")
    for path in micrographs:
        table, sidecar = candidate_paths(out, path.stem)
        info = json.loads(sidecar.read_text())
        assert info["shape"] == list(read_micrograph(path).shape) and info["box_size"] == pytest.approx(40.0)
        every = read_picks(table, "csv", micrograph=path.stem)[path.stem]
        picked = read_picks(output_paths(out, path.stem, ())["csv"], "csv", micrograph=path.stem)[path.stem]
        assert every.score.min() >= CANDIDATE_FLOOR and len(every) > len(picked)
        np.testing.assert_array_equal(every.above(0.5).x, picked.x)


def test_the_suggestion_keeps_the_candidates_of_highest_expected_f1():
    """10 candidates at 0.9 among 100 at 0.05: keeping the ten expects 9 of 14 particles (E[F1] 0.75),
    keeping all 14 of 14 among 110 (0.23)."""
    scores = np.concatenate([np.full(10, 0.9), np.full(100, 0.05)])
    assert expected_f1_threshold(scores) == 0.9
    # probabilities other than the scores (a calibration): all 110 likely particles, so all are kept
    assert expected_f1_threshold(scores, np.full(len(scores), 0.9)) == 0.05
    # every candidate sure: keep them all; none at all: no suggestion
    assert expected_f1_threshold(np.full(5, 1.0)) == 1.0
    assert np.isnan(expected_f1_threshold(np.zeros(0))) and np.isnan(expected_f1_threshold(np.zeros(3)))


def test_the_suggestion_falls_when_likely_particles_fill_the_middle_scores():
    """The same confident particles plus many likely ones at 0.6: they are worth keeping, so the threshold drops to them."""
    confident = np.full(50, 0.9)
    background = np.random.default_rng(0).uniform(0.01, 0.1, 5000)
    alone = expected_f1_threshold(np.concatenate([confident, background]))
    with_likely = expected_f1_threshold(np.concatenate([confident, np.full(200, 0.6), background]))
    assert alone == 0.9 and with_likely == 0.6


def test_the_suggestion_pools_every_micrographs_candidates():
    a = Picks("a", np.zeros(3), np.zeros(3), [0.9, 0.9, 0.02], box_size=10.0)
    b = Picks("b", np.zeros(2), np.zeros(2), [0.8, 0.03], box_size=10.0)
    assert suggest_threshold({"a": a, "b": b}) == expected_f1_threshold(np.array([0.9, 0.9, 0.02, 0.8, 0.03])) == 0.8


def test_picks_per_micrograph_counts_scores_at_or_above_each_threshold():
    a = Picks("a", np.zeros(4), np.zeros(4), [0.1, 0.2, 0.2, 0.9])
    b = Picks("b", np.zeros(1), np.zeros(1), [0.5])
    got = picks_per_micrograph({"a": a, "b": b}, np.array([0.0, 0.2, 0.5, 0.95]))
    np.testing.assert_allclose(got, [5 / 2, 4 / 2, 2 / 2, 0.0])


def test_set_rewrites_every_format_as_picking_at_that_threshold_would_without_the_network(
    micrographs, checkpoint, tmp_path, monkeypatch
):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    _pick(micrographs, out, checkpoint, 0.5)
    _pick(micrographs, fresh, checkpoint, 0.2)
    monkeypatch.setattr(Picker, "candidates", lambda *a: pytest.fail("re-thresholding ran the network"))
    assert cli_main(["threshold", str(out), "--set", "0.2"]) == 0
    for path in micrographs:
        shape = read_micrograph(path).shape
        for fmt, file in output_paths(out, path.stem, FORMATS).items():
            got = read_picks(file, fmt, micrograph=path.stem, shape=shape, box_size=40.0)[path.stem]
            want = read_picks(
                output_paths(fresh, path.stem, FORMATS)[fmt], fmt, micrograph=path.stem, shape=shape, box_size=40.0
            )[path.stem]
            assert len(got) == len(want) > 0, fmt
            np.testing.assert_allclose(got.x, want.x, atol=1e-3, err_msg=fmt)
            np.testing.assert_allclose(got.y, want.y, atol=1e-3, err_msg=fmt)
    assert (out / "picks.csv").read_text() == (fresh / "picks.csv").read_text()
    record = json.loads((out / "threshold.json").read_text())
    assert record["threshold"] == 0.2 and record["previous"] == 0.5


def test_plots_of_micrographs_without_candidates_are_drawn_without_a_warning(tmp_path):
    """A folder whose micrographs had no candidate: the plots' log axes warned on stderr ("no positive values")."""
    empty = {"m": Picks("m", np.zeros(0), np.zeros(0), np.zeros(0), box_size=10.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = write_plots(empty, tmp_path, suggest_threshold(empty), 0.2)
    assert [p.name for p in written] == ["score_histogram.png", "picks_per_micrograph.png"]


def test_summary_prints_the_suggestion_and_the_curve_and_writes_plots(micrographs, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    _pick(micrographs, out, checkpoint, 0.5, "--format", "csv")
    assert cli_main(["threshold", str(out)]) == 0
    text = capsys.readouterr().out
    suggested = suggest_threshold(read_candidates(out))
    assert f"suggested threshold: {suggested:.3f}" in text
    n = sum(int((read_picks(candidate_paths(out, p.stem)[0], "csv")[p.stem].score >= 0.5).sum()) for p in micrographs)
    row = next(line for line in text.splitlines() if line.strip().startswith("0.500"))
    assert row.split()[1] == f"{n / 2:.1f}" and "current" in row
    assert (out / "score_histogram.png").stat().st_size > 0 and (out / "picks_per_micrograph.png").stat().st_size > 0


def test_a_folder_without_candidates_or_a_threshold_below_the_floor_is_a_clear_error(
    micrographs, checkpoint, tmp_path, capsys
):
    old = tmp_path / "old"
    (old / "csv").mkdir(parents=True)
    (old / "csv" / "mic_0.csv").write_text("micrograph,x,y,score\nmic_0,10,10,0.9\n")
    assert cli_main(["threshold", str(old)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "older version" in err
    out = tmp_path / "out"
    _pick(micrographs[:1], out, checkpoint, 0.5, "--format", "csv")
    assert cli_main(["threshold", str(out), "--set", "0.001"]) == 1
    assert "lowest score kept" in capsys.readouterr().err
    # a micrograph picked by an older version (no candidates) cannot move with the others
    (out / "csv" / "legacy.csv").write_text("micrograph,x,y,score\nlegacy,10,10,0.9\n")
    before = (out / "picks.csv").read_text()
    assert cli_main(["threshold", str(out), "--set", "0.2"]) == 1
    assert "legacy" in capsys.readouterr().err and (out / "picks.csv").read_text() == before


def test_pick_into_the_folder_later_without_threshold_uses_the_one_set(micrographs, checkpoint, tmp_path):
    out = tmp_path / "out"
    _pick(micrographs[:1], out, checkpoint, 0.5, "--format", "csv")
    assert cli_main(["threshold", str(out), "--set", "0.2"]) == 0
    argv = [
        "pick",
        str(micrographs[1]),
        "--out",
        str(out),
        "--model",
        str(checkpoint),
        "--diameter-px",
        "40",
        "--format",
        "csv",
    ]
    assert cli_main(argv) == 0
    stem = micrographs[1].stem
    every = read_picks(candidate_paths(out, stem)[0], "csv")[stem]
    written = read_picks(output_paths(out, stem, ())["csv"], "csv")[stem]
    assert 0 < len(written) == len(every.above(0.2)) < len(every)
    assert json.loads((out / "command.json").read_text())["options"]["threshold"] == 0.2


def test_set_redraws_the_overlays_from_the_candidates_without_the_network(
    micrographs, checkpoint, tmp_path, capsys, monkeypatch
):
    """`threshold --set` used to leave the overlays stale ("pick again with --overwrite"), though the candidates and
    the micrographs are there: now each overlay is what `pick --overlay` at the new threshold draws."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    _pick(micrographs, out, checkpoint, 0.5, "--format", "csv", "--overlay", str(tmp_path / "overlays"))
    _pick(micrographs, fresh, checkpoint, 0.2, "--format", "csv", "--overlay", str(tmp_path / "fresh_overlays"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "overlays").glob("*.png")}
    capsys.readouterr()
    monkeypatch.setattr(Picker, "candidates", lambda *a: pytest.fail("redrawing the overlays ran the network"))
    assert cli_main(["threshold", str(out), "--set", "0.2"]) == 0
    assert "redrew 2 overlay(s) in " in capsys.readouterr().out
    for path in micrographs:
        redrawn = (tmp_path / "overlays" / f"{path.stem}.png").read_bytes()
        assert redrawn != before[f"{path.stem}.png"]
        assert redrawn == (tmp_path / "fresh_overlays" / f"{path.stem}.png").read_bytes()
