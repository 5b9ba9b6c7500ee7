"""The demo on the bundled real micrographs: what it writes and what it reports."""

from __future__ import annotations

import json
import re

import starfile

from hydrapicker import cli
from hydrapicker.apps import demo as demo_module
from hydrapicker.apps.demo import FEW_SHOT_HEAD
from hydrapicker.bundled import bundled_datasets
from hydrapicker.defaults import GENERIC, PICK_THRESHOLD


def test_bundled_datasets_have_micrographs_and_labels():
    for dataset in bundled_datasets():
        micrographs = dataset.micrographs()
        assert micrographs, dataset.name
        truth = dataset.labels()
        assert set(truth) == {m.stem for m in micrographs}
        assert all(len(p) > 0 for p in truth.values())


def test_demo_picks_finetunes_and_reports(tmp_path, capsys, monkeypatch):
    """A short demo run (one fine-tuning epoch of two batches): every promised file is written; and a second run
    into the same folder fine-tunes afresh. Zero-shot picking is deterministic, so the second run reuses the
    first run's zero-shot picks instead of computing them again (it still fine-tunes and picks with the new head)."""
    zero_shot_picks = {}
    pick_and_write = demo_module._pick_and_write

    def reusing_zero_shot(model, meta, dataset, paths, head, out_dir, say):
        if head != GENERIC:
            return pick_and_write(model, meta, dataset, paths, head, out_dir, say)
        key = (dataset.name, tuple(paths))
        if key not in zero_shot_picks:
            zero_shot_picks[key] = pick_and_write(model, meta, dataset, paths, head, out_dir, say)
        return zero_shot_picks[key]

    monkeypatch.setattr(demo_module, "_pick_and_write", reusing_zero_shot)
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "1", "--batches-per-epoch", "2"]) == 0
    out = capsys.readouterr().out
    assert "REPORT.md" in out and "fine-tuned head" in out
    report = (tmp_path / "REPORT.md").read_text()
    assert "| empiar10017_bgal_bin4 |" in report and f"| {FEW_SHOT_HEAD} (few-shot) |" in report

    zero_shot = tmp_path / "zero_shot" / "empiar10017_bgal_bin4"
    scores = json.loads((zero_shot / "evaluation.json").read_text())
    assert scores["n_true"] == sum(len(p) for p in bundled_datasets()[0].labels().values())
    assert 0.0 <= scores["ap"] <= 1.0
    assert (zero_shot / "pr.png").stat().st_size > 0
    assert len(list((zero_shot / "overlays").glob("*.png"))) == 3
    star = starfile.read(next((zero_shot / "star").glob("*.star")))
    assert {"rlnCoordinateX", "rlnCoordinateY"} <= set(star.columns)

    # the report's and the summary's pick counts are the STAR files' (it used to count every candidate down to 0.01)
    in_star = sum(len(starfile.read(p)) for p in (zero_shot / "star").glob("*.star"))
    row = next(line for line in report.splitlines() if line.startswith("| empiar10017_bgal_bin4 |"))
    assert row.split("|")[5].strip() == str(in_star)
    assert re.search(rf"zero-shot  empiar10017_bgal_bin4 +AP .* {in_star} picks", out), out
    # it says what it does as it goes (it was silent for a minute), and the T20S caveat
    assert (
        "1/3 empiar10017_Falcon" in out
        and "3/3 empiar10017_Falcon" in out
        and f"picks scoring >= {PICK_THRESHOLD:g}" in out
    )
    t20s = out[out.index("zero-shot  empiar10025_t20s_1mic") :].splitlines()
    assert "partial labels" in t20s[1] and "lower bounds" in t20s[1]

    held_out = tmp_path / "few_shot" / "held_out"
    assert json.loads((held_out / "evaluation.json").read_text())["n_true"] > 0
    assert (tmp_path / "few_shot" / "model.pt").exists()
    assert (tmp_path / "command.json").exists()

    # `make demo` again, into the same folder (it used to stop at the earlier fine-tuning run)
    finetuned_before = (tmp_path / "few_shot" / "model.pt").stat().st_mtime_ns
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "1", "--batches-per-epoch", "2"]) == 0
    assert (tmp_path / "few_shot" / "model.pt").exists()
    assert (tmp_path / "few_shot" / "model.pt").stat().st_mtime_ns != finetuned_before  # fine-tuned again
    assert len(zero_shot_picks) == 2  # both bundled datasets, picked once
