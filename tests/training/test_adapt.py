"""Tests of zero-label adaptation: the turn-averaged teacher, the distillation loss, the rounds, the CLI.

The mechanics run the shipped generic model (tiny) on small generated micrographs of dark
blobs for a few steps: they pin the plumbing, not accuracy. The gain test (slow) simulates a
β-gal dataset in a rendering the generic head never saw and checks that the adapted head
ranks held-out micrographs better than the generic head.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import gaussian_spots
from scipy import ndimage

from hydrapicker.checkpoint import load_checkpoint, load_model
from hydrapicker.cli import main as cli_main
from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import read_picks, write_mrc
from hydrapicker.loss import distillation_loss
from hydrapicker.particle_size import ParticleSize
from hydrapicker.training.adapt import adapt, run_folder, turned_outputs
from hydrapicker.training.config import AdaptConfig

DIAMETER = 24.0  # px, stored (rescaled 40 / 24: micrographs of 320² as the model sees them)
FAST = {
    "rounds": 2,
    "steps": 2,
    "batch_size": 2,
    "crop_size": 96,
    "turns": 2,
    "threads": 1,
}  # 2 threads ran 3-4x slower on a busy 2-core machine


@pytest.fixture(autouse=True)
def _torch_threads():
    """adapt(threads=) sets torch's thread count for the process: give the next test back its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """A folder of three 192² MRC micrographs of 20 dark blobs each (no labels)."""
    folder = tmp_path_factory.mktemp("mics")
    rng = np.random.default_rng(0)
    for i in range(3):
        centres = rng.uniform(12, 180, size=(20, 2))
        image = gaussian_spots((192, 192), centres, DIAMETER / 4, contrast=-1.0, noise=0.3, seed=i)
        write_mrc(folder / f"mic_{i}.mrc", image, pixel_size=2.0)
    return folder


# --- the teacher and the loss ----------------------------------------------------------------


def test_turn_averaged_outputs_turn_with_the_micrograph():
    from hydrapicker.picking.inference import head_outputs

    model, _ = load_model(None)
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32))
    torch.testing.assert_close(turned_outputs(model, image, GENERIC, turns=1), head_outputs(model, image, GENERIC))
    averaged = turned_outputs(model, image, GENERIC)
    of_turned = turned_outputs(model, torch.rot90(image, 1, (0, 1)), GENERIC)
    # Averaged over all four turns, the scores of the turned micrograph are the turned scores, and
    # a particle's offset turns as (dx, dy) -> (dy, -dx).
    torch.testing.assert_close(of_turned[2], torch.rot90(averaged[2], 1, (0, 1)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(of_turned[0], torch.rot90(averaged[1], 1, (0, 1)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(of_turned[1], -torch.rot90(averaged[0], 1, (0, 1)), atol=1e-4, rtol=1e-4)


def test_turn_averaged_outputs_reuse_given_features_of_the_unturned_micrograph():
    model, _ = load_model(None)
    image = torch.from_numpy(np.random.default_rng(2).normal(size=(96, 112)).astype(np.float32))
    with torch.inference_mode():
        features = model.features(image[None, None])[0]
    torch.testing.assert_close(
        turned_outputs(model, image, GENERIC, features=features), turned_outputs(model, image, GENERIC)
    )


def test_distillation_loss_is_smallest_where_the_head_agrees_with_the_teacher():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 5, 5, generator=gen)
    outputs = teacher.clone().requires_grad_(True)
    distillation_loss(outputs, teacher).backward()
    # At the teacher's outputs the score term is at its minimum (each anchor's BCE against its
    # own probability) and the L1 offset term at 0: no gradient on the logits.
    torch.testing.assert_close(outputs.grad[:, 2], torch.zeros(2, 5, 5), atol=1e-7, rtol=0)
    for moved in (teacher[:, 2] + 0.5, teacher[:, 2] - 0.5):
        other = teacher.clone()
        other[:, 2] = moved
        assert distillation_loss(other, teacher) > distillation_loss(teacher, teacher)


def test_distillation_offsets_count_only_where_the_teacher_sees_a_particle():
    teacher = torch.zeros(1, 3, 2, 2)
    teacher[0, 2] = torch.tensor([[8.0, -30.0], [-30.0, -30.0]])  # a particle at one anchor only
    wrong_there, wrong_elsewhere = teacher.clone(), teacher.clone()
    wrong_there[0, 0, 0, 0] = 1.0
    wrong_elsewhere[0, 0, 1, 1] = 1.0
    base = distillation_loss(teacher, teacher)
    assert distillation_loss(wrong_elsewhere, teacher) - base < 1e-6
    # An offset 1 stride off where the teacher's probability is w costs w (the weights sum to under 1: divided by 1).
    torch.testing.assert_close(distillation_loss(wrong_there, teacher) - base, torch.sigmoid(torch.tensor(8.0)))
    assert distillation_loss(wrong_there, teacher, loc_weight=0.0) == base


# --- the rounds -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapted(blobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "blobs.pt"
    lines = []
    report = adapt(
        [blobs],
        out,
        AdaptConfig(name="blobs", teacher_threshold=0.05, **FAST),
        say=lines.append,
        size=ParticleSize(diameter_px=DIAMETER),
    )
    return out, report, lines


def test_adapt_keeps_a_checkpoint_already_at_out_unless_overwrite(adapted, blobs):
    out, _, _ = adapted
    before = out.read_bytes()
    config = AdaptConfig(name="again", teacher_threshold=0.05, **FAST)
    with pytest.raises(HydraPickerError, match="--overwrite"):
        adapt([blobs], out, config, say=lambda _: None, size=ParticleSize(diameter_px=DIAMETER))
    assert out.read_bytes() == before


def test_adapt_adds_one_head_and_leaves_trunk_and_generic_head_bit_identical(adapted):
    out, _, _ = adapted
    base = load_model(None)[0].state_dict()
    model, meta = load_checkpoint(out)
    assert meta.head_names == ("blobs",)
    state = model.state_dict()
    for key, value in base.items():
        assert torch.equal(state[key], value), key
    assert any(
        not torch.equal(state[f"heads.blobs.{k[len('generic.') :]}"], v)
        for k, v in base.items()
        if k.startswith("generic.")
    )


def test_adapt_reports_what_it_taught_and_how_the_picks_changed_for_every_round(adapted):
    out, report, lines = adapted
    assert [r.round for r in report.rounds] == [1, 2]
    for r in report.rounds:
        assert r.taught > 0 and r.turns == 2
        assert 0 <= r.kept <= r.taught and 0 <= r.new <= r.taught
        assert r.picks_before >= 0 and r.picks_after >= 0 and np.isfinite(r.loss)
    # round 2 is taught by round 1's head: its picks before are round 1's picks after
    assert report.rounds[1].picks_before == report.rounds[0].picks_after
    assert sum(line.startswith("round 2:") for line in lines) == 1
    record = json.loads((run_folder(out) / "adapt.json").read_text())
    assert [r["taught"] for r in record["rounds"]] == [r.taught for r in report.rounds]
    assert record["micrographs"] == ["mic_0", "mic_1", "mic_2"]


def test_adapted_head_gives_in_one_pass_what_the_turn_averaged_generic_head_gives(blobs, tmp_path):
    from hydrapicker.picking.picker import Picker, PickSettings

    out = tmp_path / "taught.pt"
    config = AdaptConfig(
        name="taught", rounds=1, steps=60, batch_size=2, crop_size=256, threads=1, teacher_threshold=0.05
    )
    adapt([blobs], out, config, say=lambda _: None, size=ParticleSize(diameter_px=DIAMETER))
    model, meta = load_checkpoint(out)
    picker = Picker(model, meta, PickSettings(ParticleSize(diameter_px=DIAMETER)))
    before, after = [], []
    for path in sorted(blobs.glob("*.mrc")):
        image = torch.from_numpy(picker.prepare(path).image)
        teacher = turned_outputs(model, image, GENERIC)[None]
        before.append(distillation_loss(turned_outputs(model, image, GENERIC, turns=1)[None], teacher).item())
        after.append(distillation_loss(turned_outputs(model, image, "taught", turns=1)[None], teacher).item())
    assert np.mean(after) < np.mean(before), (before, after)


def test_cli_adapt_then_pick_with_the_new_head(blobs, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    status = cli_main(
        [
            "adapt",
            str(blobs / "*.mrc"),
            "--name",
            "mine",
            "--diameter-px",
            str(DIAMETER),
            "--out",
            str(out),
            "--rounds",
            "1",
            "--steps",
            "1",
            "--teacher-threshold",
            "0.05",
            "--turns",
            "1",
            "--threads",
            "1",
        ]
    )
    assert status == 0 and out.is_file()
    said = capsys.readouterr()
    assert "round 1:" in said.out
    assert re.search(r"^features and teacher: \d+/\d+ micrographs, .+, done in ", said.err, re.MULTILINE), said.err
    assert (run_folder(out) / "command.json").is_file()
    picked = tmp_path / "picked"
    status = cli_main(
        [
            "pick",
            str(blobs / "mic_0.mrc"),
            "--model",
            str(out),
            "--head",
            "mine",
            "--diameter-px",
            str(DIAMETER),
            "--threshold",
            "0.0",
            "--format",
            "csv",
            "--out",
            str(picked),
        ]
    )
    assert status == 0 and len(read_picks(picked / "csv" / "mic_0.csv", "csv")["mic_0"]) > 0


def test_adapt_refuses_the_generic_name_and_micrographs_with_no_confident_pick(blobs, tmp_path):
    with pytest.raises(HydraPickerError, match="generic"):
        AdaptConfig(name=GENERIC)
    with pytest.raises(HydraPickerError, match="scores no pick"):
        adapt(
            [blobs],
            tmp_path / "x.pt",
            AdaptConfig(name="x", teacher_threshold=1.0, **FAST),
            say=lambda _: None,
            size=ParticleSize(diameter_px=DIAMETER),
        )
    assert not (tmp_path / "x.pt").exists()


# --- the gain on a rendering the generic head never saw -----------------------------------


def _ap(checkpoint: Path | None, head: str, paths: list[Path], coordinates: Path, box: float) -> float:
    from hydrapicker.evaluate import evaluate
    from hydrapicker.io import read_micrograph
    from hydrapicker.io.micrograph import micrograph_stem
    from hydrapicker.picking.picker import pick_micrograph

    model, meta = load_model(checkpoint)
    picks, truth = {}, {}
    for path in paths:
        stem, mic = micrograph_stem(path), read_micrograph(path)
        picks[stem] = pick_micrograph(
            model, meta, mic.data, None, diameter_px=box, head=head, threshold=0.001, name=stem
        )
        truth.update(read_picks(coordinates / f"{stem}.star", "star", micrograph=stem, shape=mic.shape))
    return evaluate(picks, truth, box).ap


@pytest.mark.slow
def test_adapted_head_beats_generic_head_on_a_shifted_rendering(tmp_path):
    """β-gal (a protein the generic model never saw) at 4-6 µm defocus (it saw 0.8-3), then a 5-px
    median filter (a denoiser it never saw); adapt on 8 micrographs of 512², score 8 others
    (measured: AP 0.636 generic -> 0.658 adapted; benchmarks/adapt_real.md)."""
    structure = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures" / "5a1a.cif.gz"
    if not structure.is_file():
        pytest.skip(f"{structure} not here")
    sim = tmp_path / "sim"
    assert (
        cli_main(
            [
                "simulate",
                str(structure),
                "--out",
                str(sim),
                "--n-micrographs",
                "16",
                "--size",
                "512",
                "--pixel-size",
                "5",
                "--defocus",
                "4",
                "6",
                "--rendering",
                "float",
                "--seed",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    from hydrapicker.io import read_micrograph

    for path in sorted((sim / "micrographs").glob("*.mrc")):
        write_mrc(shifted / path.name, ndimage.median_filter(read_micrograph(path).data, size=5), pixel_size=5.0)
    paths = sorted(shifted.glob("*.mrc"))
    diameter = json.loads((sim / "config.json").read_text())["diameter_A"] / 5.0
    out = tmp_path / "shifted.pt"
    adapt(
        paths[:8],
        out,
        AdaptConfig(name="shifted", steps=600, threads=1),
        say=lambda _: None,
        size=ParticleSize(diameter_px=diameter),
    )
    generic = _ap(None, GENERIC, paths[8:], sim / "coordinates", diameter)
    adapted_ap = _ap(out, "shifted", paths[8:], sim / "coordinates", diameter)
    assert adapted_ap > generic + 0.01, (generic, adapted_ap)
