"""Tests of few-shot fine-tuning: frozen weights, the new head's start, picking with it, partial labels, bad input.

The base model is a tiny one trained for a few steps here, on small generated micrographs of
dark blobs: these tests pin the plumbing and the loss, not accuracy (benchmarks/finetune_partial_labels.py
measures that on the real micrographs).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import gaussian_spots

from hydrapicker import checkpoint as checkpoint_module
from hydrapicker.boxes import anchor_centres
from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_picks, write_mrc
from hydrapicker.loss import detection_loss, pu_focal_loss
from hydrapicker.particle_size import ParticleSize
from hydrapicker.training import finetune as finetune_module
from hydrapicker.training.config import FinetuneConfig, TrainConfig
from hydrapicker.training.finetune import (
    add_frozen_head,
    expected_particle_counts,
    finetune,
    labelled_micrographs,
    run_folder,
)
from hydrapicker.training.stages import train

DIAMETER = 16.0  # px, stored
SMALL = dict(epochs=2, batches_per_epoch=2, val_batches=1, batch_size=2, crop_size=96, pad_to=128, threads=2)


def _blobs(shape: tuple[int, int], centres: np.ndarray, seed: int) -> np.ndarray:
    return gaussian_spots(shape, centres, DIAMETER / 4, contrast=-1.0, noise=0.3, seed=seed)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> list[tuple[Path, Path]]:
    """Three 160² MRC micrographs of 12 dark blobs each, with CSV labels of every blob."""
    folder = tmp_path_factory.mktemp("mics")
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(3):
        centres = rng.uniform(12, 148, size=(12, 2))
        mic, coords = folder / f"mic_{i}.mrc", folder / f"mic_{i}.csv"
        write_mrc(mic, _blobs((160, 160), centres, seed=i), pixel_size=2.0)
        coords.write_text("x,y\n" + "".join(f"{x:.2f},{y:.2f}\n" for x, y in centres))
        pairs.append((mic, coords))
    return pairs


@pytest.fixture(scope="module")
def base(labelled, tmp_path_factory) -> Path:
    """A tiny two-stage model (generic head + dataset head 'sim') trained for a few steps."""
    data = labelled_micrographs(
        "sim", [m for m, _ in labelled[:2]], [c for _, c in labelled[:2]], size=ParticleSize(diameter_px=DIAMETER)
    )
    config = TrainConfig(
        preset="tiny",
        stage="both",
        epochs=1,
        stage2_epochs=1,
        batches_per_epoch=2,
        val_batches=1,
        batch_size=2,
        crop_size=96,
        pad_to=128,
        target_diameter_px=20.0,
        threads=2,
        seed=1,
    )
    return train([data.spec], tmp_path_factory.mktemp("base"), config)


@pytest.fixture(scope="module")
def tuned(labelled, base, tmp_path_factory) -> Path:
    """Head 'new' fine-tuned on two micrographs, validated on the third."""
    data = labelled_micrographs(
        "new",
        [m for m, _ in labelled[:2]],
        [c for _, c in labelled[:2]],
        val_micrographs=[labelled[2][0]],
        val_coordinates=[labelled[2][1]],
        size=ParticleSize(diameter_px=DIAMETER),
    )
    out = tmp_path_factory.mktemp("tuned") / "new.pt"
    return finetune(data, out, FinetuneConfig(name="new", **SMALL), model_path=base, say=lambda _: None)


def test_trunk_generic_and_other_heads_are_bit_identical_after_finetuning(base, tuned):
    before = load_checkpoint(base)[0].state_dict()
    after = load_checkpoint(tuned)[0].state_dict()
    assert set(after) - set(before) == {k for k in after if k.startswith("heads.new.")}
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # ... while the new head did train
    assert any(
        not torch.equal(after[f"heads.new.{k[len('generic.') :]}"], v)
        for k, v in before.items()
        if k.startswith("generic.")
    )


def test_new_head_starts_as_a_copy_of_the_generic_head_and_alone_is_trainable(base):
    model, _ = load_checkpoint(base)
    add_frozen_head(model, "new")
    generic = model.generic.state_dict()
    for key, value in model.heads["new"].state_dict().items():
        assert torch.equal(value, generic[key]), key
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"heads.new.{name}" for name, _ in model.heads["new"].named_parameters()}


def test_best_validation_epoch_is_the_checkpoint_written(tuned):
    import json

    log = json.loads((run_folder(tuned) / "log.json").read_text())
    losses = [row["val_loss"] for row in log["epochs"]]
    assert load_checkpoint(tuned)[1].epoch == int(np.argmin(losses))
    assert log["validation_split"] == "val"


def test_one_micrograph_finetune_then_pick_with_the_new_head_through_the_cli(labelled, base, tmp_path, capsys):
    (mic, coords), (other, _) = labelled[0], labelled[2]
    out = tmp_path / "one.pt"
    argv = [
        "finetune",
        "--model",
        str(base),
        "--name",
        "one",
        "--micrographs",
        str(mic),
        "--coords",
        str(coords),
        "--diameter-px",
        str(DIAMETER),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batches-per-epoch",
        "2",
        "--val-batches",
        "1",
        "--threads",
        "2",
    ]
    assert cli_main(argv) == 0
    assert re.search(r"^stage \d: 1/1 epochs, ", capsys.readouterr().err, re.MULTILINE)  # a line per epoch in a log
    assert "held back" in (run_folder(out) / "finetune.json").read_text()  # no val micrographs: said so
    assert load_checkpoint(out)[1].head_names == ("sim", "one")
    picks_dir = tmp_path / "picks"
    assert (
        cli_main(
            [
                "pick",
                str(other),
                "--out",
                str(picks_dir),
                "--model",
                str(out),
                "--head",
                "one",
                "--diameter-px",
                str(DIAMETER),
                "--threshold",
                "0.001",
                "--format",
                "star",
            ]
        )
        == 0
    )
    picks = read_picks(picks_dir / "csv" / f"{other.stem}.csv")[other.stem]
    assert len(picks) > 0 and np.all(np.diff(picks.score) <= 0)


def _cli_error(argv: list[str], capsys) -> str:
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "name, pairs, message",
    [
        ("new", "missing", "no coordinate file named mic_1.*"),
        ("sim", "ok", "already has a head 'sim'"),
        ("generic", "ok", "generic head"),
    ],
)
def test_bad_inputs_give_one_line_and_no_outputs(labelled, base, tmp_path, capsys, name, pairs, message):
    mics = [str(m) for m, _ in labelled[:2]]
    coords = [str(labelled[0][1])] + ([str(labelled[1][1])] if pairs == "ok" else [str(labelled[2][1])])
    out = tmp_path / "bad.pt"
    err = _cli_error(
        [
            "finetune",
            "--model",
            str(base),
            "--name",
            name,
            "--micrographs",
            *mics,
            "--coords",
            *coords,
            "--diameter-px",
            str(DIAMETER),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert message in err
    assert not out.exists() and not run_folder(out).exists()


def test_without_model_the_missing_pretrained_model_is_the_same_clear_error_as_pick(
    labelled, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(checkpoint_module, "pretrained_model_path", lambda: tmp_path / "nowhere" / "generic.pt")
    mic, coords = labelled[0]
    err = _cli_error(
        [
            "finetune",
            "--name",
            "x",
            "--micrographs",
            str(mic),
            "--coords",
            str(coords),
            "--diameter-px",
            str(DIAMETER),
            "--out",
            str(tmp_path / "x.pt"),
        ],
        capsys,
    )
    assert "pretrained generic model" in err and "--model" in err


def test_a_checkpoint_already_at_out_is_kept_unless_overwrite(labelled, base, tmp_path, capsys):
    (mic, coords) = labelled[0]
    out = tmp_path / "mine.pt"
    out.write_bytes(b"an earlier model")
    argv = ["finetune", "--model", str(base), "--name", "one", "--micrographs", str(mic), "--coords", str(coords)]
    argv += ["--diameter-px", str(DIAMETER), "--out", str(out), "--epochs", "1", "--batches-per-epoch", "1"]
    argv += ["--val-batches", "1", "--threads", "2"]
    assert cli_main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier model" and not run_folder(out).exists()
    assert cli_main([*argv, "--overwrite"]) == 0
    assert load_checkpoint(out)[1].head_names == ("sim", "one")
    # --overwrite again: the run folder's checkpoints do not stop the fresh run
    assert cli_main([*argv, "--overwrite", "--seed", "5"]) == 0
    assert '"seed": 5' in (run_folder(out) / "finetune.json").read_text()


def test_a_fresh_run_onto_a_run_already_there_fails_before_replacing_its_record(labelled, base, tmp_path):
    (mic, coords) = labelled[0]
    out = tmp_path / "killed.pt"
    run_folder(out).mkdir()
    (run_folder(out) / "last.pt").write_bytes(b"a killed run's last epoch")
    (run_folder(out) / "finetune.json").write_text('{"the": "killed run"}')
    data = labelled_micrographs("one", [mic], [coords], size=ParticleSize(diameter_px=DIAMETER))
    with pytest.raises(HydraPickerError, match="--resume"):
        finetune(data, out, FinetuneConfig(name="one", **SMALL), model_path=base, say=lambda _: None)
    assert (run_folder(out) / "finetune.json").read_text() == '{"the": "killed run"}'
    with pytest.raises(HydraPickerError, match="not a readable HydraPicker checkpoint"):
        finetune(data, out, FinetuneConfig(name="one", **SMALL), model_path=base, resume=True, say=lambda _: None)
    assert (run_folder(out) / "finetune.json").read_text() == '{"the": "killed run"}'


def test_diameter_in_angstrom_needs_the_pixel_size(labelled):
    mic, coords = labelled[0]
    with pytest.raises(HydraPickerError, match="needs the pixel size"):
        labelled_micrographs("x", [mic], [coords], size=ParticleSize(diameter_A=32.0))


# --- the positive-unlabelled loss --------------------------------------------------------------


def _grid_case(labelled_count: int):
    """An 8x8 anchor grid with 6 particles exactly on anchors; the first ``labelled_count`` labelled.

    Logits: ``a`` at every particle's anchor, ``b`` elsewhere; offsets 0 (exact), so only the
    classification term is non-zero. Returns (a, outputs, labelled centres).
    """
    anchors = anchor_centres(8, 8)
    on = torch.tensor([3, 12, 22, 37, 45, 60])
    a = torch.tensor(0.0, requires_grad=True)
    b = torch.tensor(-3.0)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[on] = True
    logits = torch.where(mask, a, b)
    outputs = torch.cat([torch.zeros(2, 64), logits[None]]).reshape(1, 3, 8, 8)
    return a, outputs, [anchors[on[:labelled_count]]]


def test_pu_loss_equals_plain_focal_loss_when_every_particle_is_labelled():
    torch.manual_seed(0)
    outputs = torch.randn(2, 3, 8, 8)
    centres = [torch.rand(5, 2) * 128, torch.rand(3, 2) * 128]
    plain = detection_loss(outputs, centres)
    pu = detection_loss(outputs, centres, expected_particles=[5, 3])  # exactly the labelled ones
    assert torch.allclose(pu.cls, plain.cls, rtol=1e-6) and torch.equal(pu.loc, plain.loc)


def test_pu_loss_of_partial_labels_equals_the_full_label_loss_when_particles_look_alike():
    # Hidden particles scored like the labelled ones: the PU estimate is then exact, value and gradient.
    a_full, out_full, all_labelled = _grid_case(6)
    full = detection_loss(out_full, all_labelled).cls
    (grad_full,) = torch.autograd.grad(full, a_full)
    a_pu, out_pu, two = _grid_case(2)
    pu = detection_loss(out_pu, two, expected_particles=[6]).cls
    (grad_pu,) = torch.autograd.grad(pu, a_pu)
    assert torch.allclose(pu, full, rtol=1e-5) and torch.allclose(grad_pu, grad_full, rtol=1e-5)


def test_plain_loss_pushes_unlabelled_particles_down_and_pu_loss_does_not():
    a_plain, out_plain, two = _grid_case(2)
    (grad_plain,) = torch.autograd.grad(detection_loss(out_plain, two).cls, a_plain)
    a_pu, out_pu, two = _grid_case(2)
    (grad_pu,) = torch.autograd.grad(detection_loss(out_pu, two, expected_particles=[6]).cls, a_pu)
    assert grad_plain > 0  # gradient descent lowers every particle's score: 4 of 6 are "background"
    assert grad_pu < 0  # ... while the PU loss raises it, as full labels would


def test_pu_background_term_never_goes_negative():
    # Labelled particles scored far above the unlabelled anchors: the unclamped estimate is negative.
    logits = torch.tensor([5.0, 5.0, -2.0, -2.0, -2.0])
    labelled = torch.tensor([True, True, False, False, False])
    loss = pu_focal_loss(logits, labelled, hidden=3.0)
    positive_only = pu_focal_loss(logits[:2], labelled[:2], hidden=3.0)
    assert torch.allclose(loss, positive_only)


def test_particle_count_is_twice_the_generic_picks_above_the_median_score_at_the_labels(
    labelled, tmp_path, monkeypatch
):
    # 20 particles scored 0.05 ... 1.0 by the generic head, every other one labelled, plus 5
    # low-scored picks on background: half the particles score above the labels' median.
    mic, _ = labelled[0]
    xy = np.column_stack([np.arange(20) * 7.0 + 10, np.full(20, 40.0)])
    scores = 0.05 * np.arange(1, 21)
    coords = tmp_path / f"{mic.stem}.csv"
    coords.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in xy[1::2]))
    data = labelled_micrographs("x", [mic], [coords], size=ParticleSize(diameter_px=6.0))
    background = np.column_stack([np.arange(5) * 20.0 + 10, np.full(5, 120.0)])
    fake = Picks(
        mic.stem,
        np.r_[xy[:, 0], background[:, 0]],
        np.r_[xy[:, 1], background[:, 1]],
        np.r_[scores, np.full(5, 0.3)],
        box_size=6.0,
    )
    monkeypatch.setattr(finetune_module, "pick_micrograph", lambda *args, **kwargs: fake)
    assert expected_particle_counts(None, None, data) == {mic.stem: 20.0}
    assert expected_particle_counts(None, None, data, per_micrograph=5.0) == {mic.stem: 10.0}  # never below the labels
