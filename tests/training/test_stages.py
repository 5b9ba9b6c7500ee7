"""Tests of training: both stages end to end on the bundled real micrographs, resume, the CLI.

Tiny settings throughout (tiny preset, small crops, a few batches): these pin the plumbing,
not the accuracy; tests/test_overfit.py checks that training actually learns.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.data.project import load_project
from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train

BGAL_VAL = "empiar10017_Falcon_2012_06_12-16_51_03_0_bin4"

CONFIG = TrainConfig(
    preset="tiny",
    stage="both",
    epochs=2,
    stage2_epochs=2,
    batches_per_epoch=2,
    val_batches=1,
    batch_size=2,
    crop_size=96,
    pad_to=128,
    target_diameter_px=20.0,
    threads=2,
    seed=3,
)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def project(
    tmp_path_factory,
) -> Path:
    from conftest import REAL_BGAL, REAL_T20S

    path = tmp_path_factory.mktemp("project") / "project.toml"
    path.write_text(
        f"""
[[dataset]]
name = "bgal"
micrographs = "{REAL_BGAL}/*.png"
coordinates = "{REAL_BGAL}/*.csv"
pixel_size = 7.08
diameter = 191.16
val = ["{BGAL_VAL}"]

[[dataset]]
name = "t20s"
micrographs = "{REAL_T20S}/*.png"
coordinates = "{REAL_T20S}/*.csv"
pixel_size = 7.9
diameter = 142.2
"""
    )
    return path


@pytest.fixture(scope="module")
def finished_run(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(load_project(project), out, CONFIG)
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def test_both_stages_write_checkpoints_logs_and_plot(finished_run):
    for stage in ("stage1", "stage2"):
        folder = finished_run / stage
        for name in ("best.pt", "last.pt", "log.csv", "log.json", "loss.png"):
            assert (folder / name).is_file(), f"{stage}/{name}"
        rows = _rows(folder / "log.csv")
        assert [int(r["epoch"]) for r in rows] == [0, 1]
        assert all(float(r["val_loss"]) > 0 for r in rows)
        assert json.loads((folder / "log.json").read_text())["validation_split"].startswith("val")
    assert float(_rows(finished_run / "stage2" / "log.csv")[1]["train_bias"]) > 0
    config = json.loads((finished_run / "config.json").read_text())
    assert config["config"]["preset"] == "tiny" and config["hydrapicker_version"]


def test_final_model_has_a_head_per_dataset_and_its_metadata(finished_run):
    model, meta = load_checkpoint(finished_run / "model.pt")
    assert meta.head_names == ("bgal", "t20s") and model.head_names == ("bgal", "t20s")
    assert meta.stage == 2 and meta.preset.name == "tiny"
    assert meta.target_diameter_px == 20.0 and meta.anchor_stride == 16
    assert meta.normalisation["diameter_px"] == 20.0
    with torch.no_grad():
        assert model(torch.randn(1, 1, 50, 70), "t20s").shape == (1, 3, 4, 5)


def test_stage2_starts_every_head_and_the_generic_head_from_the_stage1_head(project, finished_run, tmp_path):
    out = tmp_path / "run"
    (out / "stage1").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (out / "stage1" / name).write_bytes((finished_run / "stage1" / name).read_bytes())
    # lr 0: stage 2 leaves the weights where it started them
    train(load_project(project), out, replace(CONFIG, stage="2", stage2_epochs=1, stage2_lr=0.0))
    single, _ = load_checkpoint(out / "stage1" / "best.pt")
    multi, _ = load_checkpoint(out / "model.pt")
    for name in ("bgal", "t20s", GENERIC):
        for key, value in multi.head(name).state_dict().items():
            assert torch.equal(value, single.generic.state_dict()[key]), (name, key)
    for key, value in multi.trunk.state_dict().items():
        assert torch.equal(value, single.trunk.state_dict()[key]), key


def test_size_head_learns_the_scale_jitter_in_both_stages_and_stays_frozen_in_finetuning(
    project, finished_run, tmp_path
):
    from hydrapicker.training.finetune import add_frozen_head

    config = replace(CONFIG, size_head=True, scale_jitter=(0.6, 1.6), stage2_lr=0.0)
    train(load_project(project), tmp_path, config)
    stage1 = _rows(tmp_path / "stage1" / "log.csv")
    assert all(float(r["train_size"]) > 0 and float(r["val_size"]) >= 0 for r in stage1)
    single, _ = load_checkpoint(tmp_path / "stage1" / "best.pt")
    model, _ = load_checkpoint(tmp_path / "model.pt")
    assert single.size_head is not None and model.size_head is not None
    # stage 2 (lr 0 here) starts the size head from stage 1's, which training moved off its zero start
    for key, value in model.size_head.state_dict().items():
        assert torch.equal(value, single.size_head.state_dict()[key]), key
    assert torch.count_nonzero(model.size_head.predict.weight) > 0
    assert not any(p.requires_grad for p in add_frozen_head(model, "new").size_head.parameters())
    # a model trained without one has none, and logs its size loss as 0
    assert load_checkpoint(finished_run / "model.pt")[0].size_head is None
    assert all(float(r["train_size"]) == 0 for r in _rows(finished_run / "stage1" / "log.csv"))


def test_resume_after_a_kill_in_each_stage_gives_the_uninterrupted_weights(project, finished_run, tmp_path):
    datasets = load_project(project)

    def kill_at(stage: int, epoch: int):
        def callback(s: int, e: int, row: dict) -> None:
            if (s, e) == (stage, epoch):
                raise Interrupt

        return callback

    with pytest.raises(Interrupt):
        train(datasets, tmp_path, CONFIG, on_epoch_end=kill_at(1, 0))
    assert not (tmp_path / "stage2").exists()
    with pytest.raises(Interrupt):
        train(datasets, tmp_path, CONFIG, resume=True, on_epoch_end=kill_at(2, 0))
    train(datasets, tmp_path, CONFIG, resume=True)
    for stage in ("stage1/last.pt", "stage2/last.pt", "model.pt"):
        resumed, uninterrupted = _state(tmp_path / stage), _state(finished_run / stage)
        for key in uninterrupted:
            assert torch.equal(resumed[key], uninterrupted[key]), (stage, key)
    assert (
        _rows(tmp_path / "stage2" / "log.csv")[1]["val_loss"]
        == _rows(finished_run / "stage2" / "log.csv")[1]["val_loss"]
    )


def test_a_run_resumed_from_its_last_checkpoint_alone_still_writes_the_final_model(project, tmp_path):
    """The campaign commits last.pt only: resumed on another machine, its best.pt is not there, and
    model.pt used to fail ("model.pt: cannot write") after the whole run. The best is then the best since the resume."""
    datasets, config = load_project(project), replace(CONFIG, stage="1")

    def kill(stage: int, epoch: int, row: dict) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train(datasets, tmp_path, config, on_epoch_end=kill)
    (tmp_path / "stage1" / "best.pt").unlink()
    train(datasets, tmp_path, config, resume=True)
    assert all(
        torch.equal(v, _state(tmp_path / "stage1" / "last.pt")[k]) for k, v in _state(tmp_path / "model.pt").items()
    )
    # a finished stage without its best.pt: its last model stands in
    (tmp_path / "stage1" / "best.pt").unlink()
    (tmp_path / "model.pt").unlink()
    train(datasets, tmp_path, config, resume=True)
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "stage1" / "last.pt").read_bytes()


def test_a_second_run_into_the_same_folder_needs_resume(project, finished_run):
    with pytest.raises(HydraPickerError, match="--resume"):
        train(load_project(project), finished_run, CONFIG)


def test_load_checkpoint_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HydraPickerError, match="model.pt"):
        load_checkpoint(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(HydraPickerError, match="something else"):
        load_checkpoint(bad)


def test_cli_train_runs_stage1_and_writes_the_run_record(project, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "train",
        str(project),
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
        "2",
    ]
    assert cli_main(argv) == 0
    assert (out / "model.pt").is_file() and (out / "command.json").is_file()
    assert json.loads((out / "command.json").read_text())["options"]["preset"] == "tiny"
    said = capsys.readouterr()
    assert "model.pt" in said.out
    # stderr is not a terminal here, as in a batch job's log: a plain line per epoch (count, total, rate, time left)
    assert re.search(r"^stage 1: 1/1 epochs, .+, done in \S+; val loss ", said.err, re.MULTILINE), said.err
    record = {name: (out / name).read_bytes() for name in ("command.json", "config.json")}
    assert cli_main([*argv[:-2], "--threads", "1"]) == 1  # the same folder again without --resume
    assert "--resume" in capsys.readouterr().err
    # refused before anything was written: the first run's record still says how it was made
    assert {name: (out / name).read_bytes() for name in record} == record


def test_resuming_from_an_unreadable_last_checkpoint_fails_before_replacing_the_run_record(project, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "stage1").mkdir(parents=True)
    (out / "stage1" / "last.pt").write_bytes(b"cut short")
    (out / "command.json").write_text('{"the": "first run"}')
    (out / "config.json").write_text('{"the": "first config"}')
    argv = ["train", str(project), "--out", str(out), "--preset", "tiny", "--stage", "1", "--resume"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "last.pt" in err and "not a readable HydraPicker checkpoint" in err
    assert (out / "command.json").read_text() == '{"the": "first run"}'
    assert (out / "config.json").read_text() == '{"the": "first config"}'
