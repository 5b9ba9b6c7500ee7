"""Tests of zero-label adaptation: crop turns, the turn-averaged teacher, pseudo-labels, the loss with known negatives, the rounds, the CLI.

The mechanics run the shipped generic model (tiny) on small generated micrographs of dark
blobs for a few steps: they pin the plumbing, not accuracy. The gain test (slow) simulates a
β-gal dataset in a rendering the generic head never saw and checks that the adapted head
ranks held-out micrographs better than the generic head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from _synthetic import gaussian_spots
from hydrapicker.adapt import AdaptConfig, adapt, pseudo_labels, run_folder, turn_crop, turned_outputs
from hydrapicker.boxes import anchor_centres
from hydrapicker.cli import main as cli_main
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_picks, write_mrc
from hydrapicker.loss import _focal_terms, pu_focal_loss
from hydrapicker.model import GENERIC
from hydrapicker.pick import load_picking_model
from hydrapicker.train import load_checkpoint

DIAMETER = 16.0  # px, stored
FAST = dict(rounds=2, steps=2, batch_size=2, crop_size=96, threads=2)


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


# --- crops and pseudo-labels ---------------------------------------------------------------


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_turned_crop_carries_its_points_and_anchor_grid_along(turns, flip):
    size, stride = 64, 16
    x, y = 37.0, 9.0  # column, row
    image = torch.zeros(size, size)
    image[int(y), int(x)] = 1.0
    grid = torch.zeros(size // stride, size // stride, dtype=torch.bool)
    grid[int(y) // stride, int(x) // stride] = True
    turned, points, turned_grid = turn_crop(image, np.array([[x, y]]), grid, turns, flip)
    row, col = np.unravel_index(int(turned.argmax()), turned.shape)
    assert (points[0, 0], points[0, 1]) == (col, row)
    # The anchor cell holding the point is the one marked in the turned grid.
    assert bool(turned_grid[row // stride, col // stride]) and int(turned_grid.sum()) == 1


def test_turn_averaged_outputs_turn_with_the_micrograph():
    from hydrapicker.pick import head_outputs

    model, _ = load_picking_model(None)
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


def _outputs(scores: np.ndarray) -> torch.Tensor:
    logits = torch.logit(torch.as_tensor(scores, dtype=torch.float32))
    return torch.stack([torch.zeros_like(logits), torch.zeros_like(logits), logits])


def test_pseudo_labels_are_confident_picks_and_low_anchors_far_from_particle_picks():
    stride, h, w = 16, 8, 8
    scores = np.full((h, w), 0.5)
    scores[:, 5:] = 0.01  # the right three anchor columns score low
    scores[0, 7] = 0.5  # ... except one
    particles = np.array([[23.5, 23.5], [71.5, 23.5]])
    picks = Picks("m", np.array([23.5, 71.5, 40.0]), np.array([23.5, 23.5, 100.0]), np.array([0.9, 0.4, 0.1]), box_size=16.0, shape=(128, 128))
    labels = pseudo_labels(_outputs(scores), picks, 1.0, positive_score=0.8, particle_score=0.3, negative_score=0.05, expected=5.0,
                           negative_distance=1.0, stride=stride)  # fmt: skip
    np.testing.assert_allclose(labels.positives, [[23.5, 23.5]])
    assert labels.expected == 5.0
    anchors = anchor_centres(h, w, stride).numpy().reshape(h, w, 1, 2)
    near_particle_pick = np.linalg.norm(anchors - particles, axis=-1).min(axis=-1) <= 16
    expected = (scores < 0.05) & ~near_particle_pick
    np.testing.assert_array_equal(labels.negatives, expected)
    assert expected.sum() > 0 and (scores < 0.05).sum() > expected.sum()  # the rule bit both ways


def test_pseudo_labels_expect_at_least_their_positives():
    picks = Picks("m", np.array([20.0, 60.0]), np.array([20.0, 60.0]), np.array([0.9, 0.8]), box_size=16.0, shape=(96, 96))
    labels = pseudo_labels(_outputs(np.full((6, 6), 0.5)), picks, 1.0, positive_score=0.5, particle_score=0.5, negative_score=0.1,
                           expected=1.0, negative_distance=1.0, stride=16)  # fmt: skip
    assert len(labels.positives) == 2 and labels.expected == 2.0 and not labels.negatives.any()


def test_known_negatives_pay_plain_background_loss_and_hide_no_particle():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, generator=gen)
    labelled = torch.zeros(40, dtype=torch.bool)
    labelled[:5] = True
    negative = torch.zeros(40, dtype=torch.bool)
    negative[30:] = True
    combined = pu_focal_loss(logits, labelled, 3.0, negative=negative)
    rest = ~negative
    separately = pu_focal_loss(logits[rest], labelled[rest], 3.0) + _focal_terms(logits[negative], torch.zeros(10)).sum()
    torch.testing.assert_close(combined, separately)


def test_known_negatives_keep_hidden_particles_from_cancelling_their_loss():
    # The unlabelled anchors look like easy background, the negatives like particles: called
    # unlabelled, the negatives' loss would be taken off as that of the hidden particles; known,
    # they pay it in full and the unlabelled background term is clamped at 0 on its own.
    logits = torch.tensor([2.0] * 4 + [-6.0] * 20 + [1.0] * 6)
    labelled = torch.arange(30) < 4
    negative = torch.arange(30) >= 24
    with_negatives = pu_focal_loss(logits, labelled, 3.0, negative=negative)
    positive_part = _focal_terms(logits[:4], torch.ones(4)).sum() * (1 + 3.0 / 4)
    torch.testing.assert_close(with_negatives, positive_part + _focal_terms(logits[24:], torch.zeros(6)).sum())
    assert pu_focal_loss(logits, labelled, 3.0) < with_negatives


# --- the rounds -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapted(blobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "blobs.pt"
    lines = []
    report = adapt([blobs], out, AdaptConfig(name="blobs", prior_threshold=0.05, **FAST), diameter_px=DIAMETER, say=lines.append)
    return out, report, lines


def test_adapt_adds_one_head_and_leaves_trunk_and_generic_head_bit_identical(adapted):
    out, _, _ = adapted
    base = load_picking_model(None)[0].state_dict()
    model, meta = load_checkpoint(out)
    assert meta.head_names == ("blobs",)
    state = model.state_dict()
    for key, value in base.items():
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(state[f"heads.blobs.{k[len('generic.'):]}"], v) for k, v in base.items() if k.startswith("generic."))


def test_adapt_reports_pseudo_labels_and_pick_changes_for_every_round(adapted):
    out, report, lines = adapted
    assert [r.round for r in report.rounds] == [1, 2]
    for r in report.rounds:
        assert 0 < r.positives <= r.expected
        assert 0 <= r.negatives < r.anchors
        assert 0 <= r.kept <= r.expected and 0 <= r.new <= r.expected
    assert sum(line.startswith("round 2:") for line in lines) == 1
    record = json.loads((run_folder(out) / "adapt.json").read_text())
    assert [r["positives"] for r in record["rounds"]] == [r.positives for r in report.rounds]
    assert record["micrographs"] == ["mic_0", "mic_1", "mic_2"]


def test_cli_adapt_then_pick_with_the_new_head(blobs, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    status = cli_main(["adapt", str(blobs / "*.mrc"), "--name", "mine", "--diameter-px", str(DIAMETER), "--out", str(out),
                       "--rounds", "1", "--steps", "1", "--prior-threshold", "0.05", "--turns", "1", "--threads", "2"])  # fmt: skip
    assert status == 0 and out.is_file()
    assert "round 1:" in capsys.readouterr().out
    assert (run_folder(out) / "command.json").is_file()
    picked = tmp_path / "picked"
    status = cli_main(["pick", str(blobs / "mic_0.mrc"), "--model", str(out), "--head", "mine", "--diameter-px", str(DIAMETER),
                       "--threshold", "0.0", "--format", "csv", "--out", str(picked)])  # fmt: skip
    assert status == 0 and len(read_picks(picked / "csv" / "mic_0.csv", "csv")["mic_0"]) > 0


def test_adapt_refuses_the_generic_name_and_micrographs_with_no_confident_pick(blobs, tmp_path):
    with pytest.raises(HydraPickerError, match="generic"):
        AdaptConfig(name=GENERIC)
    with pytest.raises(HydraPickerError, match="no pick scores"):
        adapt([blobs], tmp_path / "x.pt", AdaptConfig(name="x", prior_threshold=1.0, **FAST), diameter_px=DIAMETER, say=lambda _: None)
    assert not (tmp_path / "x.pt").exists()


# --- the gain on a rendering the generic head never saw -----------------------------------


def _ap(checkpoint: Path | None, head: str, paths: list[Path], coordinates: Path, box: float) -> float:
    from hydrapicker.evaluate import evaluate
    from hydrapicker.io import read_micrograph
    from hydrapicker.io.micrograph import micrograph_stem
    from hydrapicker.pick import pick_micrograph

    model, meta = load_picking_model(checkpoint)
    picks, truth = {}, {}
    for path in paths:
        stem, mic = micrograph_stem(path), read_micrograph(path)
        picks[stem] = pick_micrograph(model, meta, mic.data, None, diameter_px=box, head=head, threshold=0.001, name=stem)
        truth.update(read_picks(coordinates / f"{stem}.star", "star", micrograph=stem, shape=mic.shape))
    return evaluate(picks, truth, box).ap


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="the gain is not there yet: 20 shifted 1024² micrographs adapted, 4 held out: "
                   "AP 0.637 generic -> 0.640 adapted (turn-free teacher); benchmarks/adapt_real.md")
def test_adapted_head_beats_generic_head_on_a_shifted_rendering(tmp_path):
    """β-gal (a protein the generic model never saw) at 4-6 µm defocus (it saw 0.8-3), then a 5-px
    median filter (a denoiser it never saw); adapt on 6 micrographs, score 3 others."""
    structure = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures" / "5a1a.cif.gz"
    if not structure.is_file():
        pytest.skip(f"{structure} not here")
    sim = tmp_path / "sim"
    assert cli_main(["simulate", str(structure), "--out", str(sim), "--n-micrographs", "9", "--size", "384", "--pixel-size", "5",
                     "--defocus", "4", "6", "--seed", "3", "--quiet"]) == 0  # fmt: skip
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    from hydrapicker.io import read_micrograph

    for path in sorted((sim / "micrographs").glob("*.mrc")):
        write_mrc(shifted / path.name, ndimage.median_filter(read_micrograph(path).data, size=5), pixel_size=5.0)
    paths = sorted(shifted.glob("*.mrc"))
    diameter = json.loads((sim / "config.json").read_text())["diameter_A"] / 5.0
    out = tmp_path / "shifted.pt"
    adapt(paths[:6], out, AdaptConfig(name="shifted", threads=2), diameter_px=diameter, say=lambda _: None)
    generic = _ap(None, GENERIC, paths[6:], sim / "coordinates", diameter)
    adapted_ap = _ap(out, "shifted", paths[6:], sim / "coordinates", diameter)
    assert adapted_ap > generic + 0.02, (generic, adapted_ap)
