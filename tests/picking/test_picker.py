"""Picking: tiled == whole-image inference, the folder pipeline (resume, corrupt files, formats), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import StandInPicker, checkpoint_dict, gaussian_spots, spread_tiny_model, write_checkpoint

from hydrapicker import checkpoint as checkpoint_module
from hydrapicker.checkpoint import ModelMeta, save_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.defaults import GENERIC
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc
from hydrapicker.io.run_folder import output_paths
from hydrapicker.model import HydraPicker, SizeHead
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking import picker as picker_module
from hydrapicker.picking import size as size_module
from hydrapicker.picking.decode import picks_from_outputs
from hydrapicker.picking.inference import head_outputs, tile_margin, tile_spans
from hydrapicker.picking.inference import size_map as real_size_map
from hydrapicker.picking.overlay import OVERLAY_COLOUR
from hydrapicker.picking.picker import Picker, PickSettings, Prepared, pick_micrograph
from hydrapicker.picking.runner import pick_files
from hydrapicker.picking.size import (
    confident_log_sizes,
    estimate_diameter,
    estimate_size_correction,
    size_corrected_outputs,
)
from hydrapicker.preprocess import prepare_micrograph
from hydrapicker.training.config import TrainConfig

FORMATS = ("star", "box", "cbox", "topaz", "cs", "csv")


def _tiny_model(seed: int = 0) -> HydraPicker:
    return spread_tiny_model(seed).to(memory_format=torch.channels_last)


def _meta(model: HydraPicker) -> ModelMeta:
    return ModelMeta(
        preset=model.preset, head_names=model.head_names, target_diameter_px=40.0, anchor_stride=model.stride
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = _tiny_model()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, checkpoint_dict(model, TrainConfig(preset="tiny"), stage=1, epoch=0, val_loss=None))
    return path


def _blobs(shape: tuple[int, int], centres: np.ndarray, radius: float, seed: int = 0) -> np.ndarray:
    return gaussian_spots(shape, centres, radius / 2, contrast=-1.0, noise=0.3, seed=seed)


@pytest.fixture
def micrographs(tmp_path) -> list[Path]:
    """Two small MRC micrographs with dark blobs, pixel size 2 Å in the header."""
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate([(200, 230), (180, 180)]):
        centres = rng.uniform(20, min(shape) - 20, size=(8, 2))
        path = tmp_path / "mics" / f"mic_{i}.mrc"
        path.parent.mkdir(exist_ok=True)
        write_mrc(path, _blobs(shape, centres, 20, seed=i), pixel_size=2.0)
        paths.append(path)
    return paths


def _run(*argv: str) -> int:
    return cli_main(["pick", *map(str, argv)])


# --- tiles ------------------------------------------------------------------------------------


def test_tile_spans_partition_the_anchor_grid_on_stride_aligned_tiles():
    for length in (1, 15, 16, 17, 300, 1000):
        spans = tile_spans(length, 160, 48, 16)
        covered = [a for _, _, first, last in spans for a in range(first, last)]
        assert covered == list(range(-(-length // 16)))
        assert len(spans) == -(-(-(-length // 16)) // 4)  # noqa: B002  # as few tiles as hold 4 trusted anchors each
        for start, stop, first, last in spans:
            assert start % 16 == 0 and stop - start <= 160
            assert first * 16 - start >= 48 or start == 0  # receptive field inside the tile ...
            assert stop - last * 16 >= 48 - 16 or stop == length  # ... on both sides


@pytest.fixture(scope="module")
def whole_image():
    """A tiny model, a normalised 200 x 170 image of blobs, and its whole-image head outputs."""
    model = _tiny_model()
    rng = np.random.default_rng(0)
    image = _blobs((200, 170), rng.uniform(10, 160, size=(15, 2)), 40)
    image = (image - image.mean()) / image.std()
    return model, image, head_outputs(model, image, tile_size=1024)


def test_tiled_picks_equal_whole_image_picks(whole_image):
    model, image, whole = whole_image
    tile = 160
    assert (
        len(tile_spans(200, tile, tile_margin(model), 16)) > 2
        and len(tile_spans(170, tile, tile_margin(model), 16)) > 2
    )
    tiled = head_outputs(model, image, tile_size=tile, stats_size=1024)
    assert whole.shape == tiled.shape == (3, 13, 11)
    meta = _meta(model)
    picks_whole = picks_from_outputs(whole, meta, 1.0, image.shape, threshold=0.0)
    picks_tiled = picks_from_outputs(tiled, meta, 1.0, image.shape, threshold=0.0)
    assert len(picks_whole) == len(picks_tiled) > 10
    np.testing.assert_allclose(picks_tiled.x, picks_whole.x, atol=0.5)
    np.testing.assert_allclose(picks_tiled.y, picks_whole.y, atol=0.5)
    np.testing.assert_allclose(picks_tiled.score, picks_whole.score, atol=1e-4)


def test_whole_image_outputs_equal_the_models_own_forward(whole_image):
    model, image, whole = whole_image
    with torch.inference_mode():
        native = model(torch.from_numpy(image)[None, None])[0]
    torch.testing.assert_close(torch.sigmoid(whole[2]), torch.sigmoid(native[2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(whole[:2] * 16, native[:2] * 16, atol=1e-2, rtol=0)


def test_a_model_in_training_mode_is_run_as_in_eval_mode_and_left_in_training_mode(whole_image):
    model, image, whole = whole_image
    assert not model.training
    model.train()
    try:
        again = head_outputs(model, image, tile_size=1024)  # run in eval mode (dropout off)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    torch.testing.assert_close(again, whole, atol=1e-4, rtol=0)


def test_tiles_with_statistics_of_a_smaller_window_differ(whole_image):
    """The whole-image GroupNorm statistics, frozen, are what makes tiles equal; a window's do not."""
    model, image, whole = whole_image
    window_stats = head_outputs(model, image, tile_size=160, stats_size=112)
    assert (window_stats - whole).abs().max() > 1e-3


def test_an_image_up_to_the_one_pass_size_runs_whole_and_a_larger_one_in_tiles_with_window_statistics(whole_image):
    """Picking's default: whole-image statistics up to PICK_ONE_PASS_SIZE, smaller tiles (less memory) beyond."""
    model, image, whole = whole_image
    one_pass = head_outputs(model, image, tile_size=160, one_pass_size=200)
    torch.testing.assert_close(one_pass, whole, atol=0, rtol=0)
    tiled = head_outputs(model, image, tile_size=160, one_pass_size=180)  # 200 rows: over it
    torch.testing.assert_close(tiled, head_outputs(model, image, tile_size=160, stats_size=160), atol=0, rtol=0)
    assert (tiled - whole).abs().max() > 1e-3


def test_picks_off_the_micrograph_are_dropped_and_whole_boxes_keeps_only_boxes_inside():
    model = _tiny_model()
    meta = _meta(model)
    outputs = torch.zeros(3, 8, 8)
    outputs[2] = -10.0
    outputs[2, :, 0] = outputs[2, 0, :] = 10.0  # confident anchors along the top and left edges
    outputs[0, 3, 0] = -1.0  # this one's offset puts its centre left of column -0.5
    outputs[2, 4, 4] = 10.0  # one well inside
    shape = (128, 128)
    picks = picks_from_outputs(outputs, meta, 1.0, shape, 0.5, nms_iou=1.0, whole_boxes=False, refine_radius=0.0)
    assert len(picks) == 8 + 8 - 1 - 1 + 1  # the corner anchor counted once, the pushed-out one dropped
    assert np.all(picks.x >= -0.5)
    whole = picks_from_outputs(outputs, meta, 1.0, shape, 0.5, nms_iou=1.0, whole_boxes=True, refine_radius=0.0)
    half = meta.target_diameter_px / 2
    assert len(whole) >= 1 and np.all(whole.x - half >= -0.5) and np.all(whole.y - half >= -0.5)
    assert len(whole) < len(picks)


def test_no_edge_picks_by_default_and_keep_edge_picks_keeps_them(checkpoint, micrographs, tmp_path):
    """A pick whose box (as written: BOX's whole pixels too) reaches past the micrograph's edge is dropped unless
    --keep-edge-picks: RELION's extraction would drop it, and on real micrographs many sit on the padding stripes."""
    counts = {}
    for flag in ((), ("--keep-edge-picks",)):
        out = tmp_path / f"out{len(flag)}"
        argv = (*micrographs, "--out", out, "--model", checkpoint, "--diameter-px", 31.3, "--threshold", 0.0, *flag)
        assert _run(*argv, "--format", "box") == 0
        counts[flag] = 0
        for path in micrographs:
            rows, cols = read_micrograph(path).shape
            boxes = np.loadtxt(out / "box" / f"{path.stem}.box", ndmin=2)
            inside = (boxes[:, 0] >= -0.5) & (boxes[:, 1] >= -0.5)
            inside &= (boxes[:, 0] + boxes[:, 2] <= cols - 0.5) & (boxes[:, 1] + boxes[:, 3] <= rows - 0.5)
            assert flag or inside.all(), path
            counts[flag] += int((~inside).sum())
            record = json.loads((out / "command.json").read_text())["options"]
            assert record["whole_boxes"] is not bool(flag)
    assert counts[()] == 0 and counts[("--keep-edge-picks",)] > 0


def test_a_pick_is_refined_to_where_the_anchors_around_it_agree_the_particle_is():
    model = _tiny_model()
    meta = _meta(model)
    outputs = torch.zeros(3, 8, 8)
    outputs[2] = -10.0
    # the 2 x 2 anchors around (x, y) = (63.5, 63.5) all see one particle there; the best-scored one
    # (row 3, column 3, at 55.5) overshoots by 4 px in x
    for row, col in ((3, 3), (3, 4), (4, 3), (4, 4)):
        outputs[0, row, col] = (63.5 - (col * 16 + 7.5)) / 16
        outputs[1, row, col] = (63.5 - (row * 16 + 7.5)) / 16
        outputs[2, row, col] = 2.0
    outputs[0, 3, 3] += 4 / 16
    outputs[2, 3, 3] = 3.0
    raw = picks_from_outputs(outputs, meta, 1.0, (128, 128), 0.5, refine_radius=0.0)
    refined = picks_from_outputs(outputs, meta, 1.0, (128, 128), 0.5)
    assert len(raw) == len(refined) == 1
    assert raw.x[0] == pytest.approx(67.5) and raw.y[0] == pytest.approx(63.5)
    assert 63.5 < refined.x[0] < 66.0 and refined.y[0] == pytest.approx(63.5)
    assert refined.score[0] == raw.score[0]


# --- a diameter given wrong: the size head ---------------------------------------------------


def test_size_estimate_is_the_mean_log_size_of_the_cells_where_the_picks_are():
    outputs = torch.full((3, 2, 10), -10.0)  # scores ~0: those cells are not read
    # one confident anchor in each of the first three cells (2 x 2 anchors each; the best one counts)
    outputs[2, 1, 0], outputs[2, 0, 3], outputs[2, 1, 4] = (torch.logit(torch.tensor(p)) for p in (0.9, 0.5, 0.5))
    sizes = torch.log(torch.tensor([[1.3, 0.8, 0.9, 5.0, 5.0]]))
    assert estimate_size_correction(outputs, sizes) == pytest.approx((1.3 * 0.8 * 0.9) ** (1 / 3))
    outputs[2, 1, 0] = torch.logit(torch.tensor(0.2))  # below SIZE_MIN_SCORE: no longer read
    assert estimate_size_correction(outputs, sizes) == pytest.approx((0.8 * 0.9) ** 0.5)
    assert estimate_size_correction(torch.full((3, 2, 2), -10.0), torch.zeros(1, 1)) is None
    with pytest.raises(ValueError, match="does not fit"):
        estimate_size_correction(outputs, sizes[:, :3])


def _constant_size_model(log_size: float) -> HydraPicker:
    """The spread tiny model with a size head that says every particle looks exp(log_size) times the trained size."""
    model = spread_tiny_model(0)
    model.size_head = SizeHead()
    with torch.no_grad():
        model.size_head.predict.bias.fill_(log_size)
    return model.eval()


@pytest.mark.parametrize(
    ("looks", "box"),
    [
        (1.2, 40 * 1.2 * 1.2),  # corrected twice (passes 1 and 2), the third pass picks
        (2.0, 40 * 1.6),  # never past SIZE_CORRECTION_RANGE
        (1 / 2.0, 40 * 0.6),
        (1.02, 40.0),  # within SIZE_TOLERANCE: left as given
    ],
)
def test_a_size_head_corrects_the_given_diameter_within_its_range(looks, box):
    model = _constant_size_model(float(np.log(looks)))
    image = _blobs((160, 160), np.array([[50.0, 50.0], [110.0, 100.0]]), 20)
    picks = pick_micrograph(model, _meta(model), image, PickSettings(ParticleSize(diameter_px=40.0), threshold=0.0))
    assert picks.box_size == pytest.approx(box, rel=1e-6)
    fixed = pick_micrograph(
        model, _meta(model), image, PickSettings(ParticleSize(diameter_px=40.0), threshold=0.0, correct_size=False)
    )
    assert fixed.box_size == pytest.approx(40.0)
    for passes in (0, 1):  # one pass at the diameter given (0 used to fall through every pass)
        _, scale = size_corrected_outputs(model, _meta(model), image, 1.0, passes=passes)
        assert scale == 1.0
    model.add_head("sample")  # a dataset's own head picks at the labelled size: never corrected
    named = pick_micrograph(
        model, _meta(model), image, PickSettings(ParticleSize(diameter_px=40.0), head="sample", threshold=0.0)
    )
    assert named.box_size == pytest.approx(40.0)


def test_a_set_of_micrographs_gets_one_correction_pooled_over_all_their_confident_cells(monkeypatch):
    model = _constant_size_model(0.0)
    images = [
        _blobs(shape, np.array([[50.0, 50.0], [110.0, 100.0]]), 20, seed=i)
        for i, shape in enumerate([(160, 160), (160, 224)])
    ]
    looks = {(5, 5): 1.3, (5, 7): 1.0}  # by size-map shape: the first micrograph's particles look larger
    monkeypatch.setattr(
        size_module,
        "size_map",
        lambda model, image, device="cpu": torch.full(
            (-(-image.shape[0] // 32), -(-image.shape[1] // 32)),
            float(np.log(looks[(-(-image.shape[0] // 32), -(-image.shape[1] // 32))])),
        ),
    )
    cells = []
    for image in images:
        outputs = head_outputs(model, prepare_micrograph(image, 1.0, 40.0), GENERIC)
        cells.append(len(confident_log_sizes(outputs, size_module.size_map(model, np.zeros(image.shape)))))
    assert min(cells) > 0
    pooled = np.exp((cells[0] * np.log(1.3) + cells[1] * np.log(1.0)) / sum(cells))
    estimate = estimate_diameter(model, _meta(model), [(image, 1.0) for image in images], passes=2)
    assert estimate.factor == pytest.approx(pooled) and estimate.micrographs == 2 and estimate.cells == sum(cells)
    # each alone would be corrected differently; a dataset head is never corrected
    alone = [estimate_diameter(model, _meta(model), [(image, 1.0)], passes=2).factor for image in images]
    assert alone == [pytest.approx(1.3), 1.0]
    model.add_head("sample")
    assert estimate_diameter(model, _meta(model), [(images[0], 1.0)], "sample").factor == 1.0


def test_a_run_reads_the_size_once_from_a_sample_and_picks_every_micrograph_at_one_diameter(tmp_path, monkeypatch):
    paths = []
    for i in range(5):
        paths.append(tmp_path / "mics" / f"mic_{i}.mrc")
        paths[-1].parent.mkdir(exist_ok=True)
        write_mrc(paths[-1], _blobs((160, 160), np.array([[50.0, 50.0], [110.0, 100.0]]), 20, seed=i), pixel_size=2.0)
    model = _constant_size_model(float(np.log(1.2)))
    reads = []
    size_map = real_size_map
    monkeypatch.setattr(size_module, "size_map", lambda *a, **k: reads.append(1) or size_map(*a, **k))
    monkeypatch.setattr(picker_module, "SIZE_SAMPLE_MICROGRAPHS", 2)
    picker = Picker(model, _meta(model), PickSettings(ParticleSize(diameter_px=40.0), threshold=0.0))
    said = []
    report = pick_files(paths, tmp_path / "out", picker, ("csv",), progress=False, log=said.append)
    assert report.picked == [p.stem for p in paths]
    # 2 sampled micrographs x 2 estimate rounds (x1.2, then x1.44 where it is read again), then no more reads
    assert len(reads) == 4 and picker.size_estimate.factor == pytest.approx(1.44)
    boxes = {json.loads((tmp_path / "out" / "candidates" / f"{p.stem}.json").read_text())["box_size"] for p in paths}
    assert len(boxes) == 1 and boxes.pop() == pytest.approx(40 * 1.44)
    assert any("picking at 57.6 px, 1.44x the 40 px given" in line for line in said)


def test_the_size_estimates_last_passes_are_the_samples_picks_each_micrograph_read_and_run_once(tmp_path, monkeypatch):
    paths = []
    for i in range(5):
        paths.append(tmp_path / "mics" / f"mic_{i}.mrc")
        paths[-1].parent.mkdir(exist_ok=True)
        write_mrc(paths[-1], _blobs((160, 160), np.array([[50.0, 50.0], [110.0, 100.0]]), 20, seed=i), pixel_size=2.0)
    model = _constant_size_model(0.0)
    # At the diameter given (160 px prepared) the particles look 1.2x; at the corrected one they agree.
    monkeypatch.setattr(
        size_module,
        "size_map",
        lambda model, image, device="cpu": torch.full(
            (-(-image.shape[0] // 32), -(-image.shape[1] // 32)), float(np.log(1.2 if image.shape[0] == 160 else 1.0))
        ),
    )
    runs, reads = [], []
    monkeypatch.setattr(size_module, "head_outputs", lambda *a, **k: runs.append(1) or head_outputs(*a, **k))
    monkeypatch.setattr(picker_module, "read_micrograph", lambda path: reads.append(path) or read_micrograph(path))
    monkeypatch.setattr(picker_module, "SIZE_SAMPLE_MICROGRAPHS", 2)
    picker = Picker(model, _meta(model), PickSettings(ParticleSize(diameter_px=40.0), threshold=0.0))
    report = pick_files(paths, tmp_path / "out", picker, ("csv",), progress=False, log=lambda line: None)
    assert picker.size_estimate.factor == pytest.approx(1.2)
    # 2 sampled x 2 rounds (the second at the run's diameter gives their picks) + the 3 others once
    assert len(runs) == 2 + 2 + 3 and sorted(reads) == sorted(paths)
    assert report.picked == [paths[i].stem for i in (0, 4, 1, 2, 3)]  # the sample first, its outputs at hand
    assert not picker.sampled
    # The same picks as running each micrograph again at the run's diameter.
    fixed = Picker(
        model, _meta(model), PickSettings(ParticleSize(diameter_px=40.0 * 1.2), threshold=0.0, correct_size=False)
    )
    for path in paths:
        again = fixed.candidates(fixed.prepare(path))
        got = read_picks(tmp_path / "out" / "candidates" / f"{path.stem}.csv")[path.stem]
        assert len(got) == len(again) > 0
        np.testing.assert_allclose(np.c_[got.x, got.y], np.c_[again.x, again.y], atol=0.01)  # CSV precision
        np.testing.assert_allclose(got.score, again.score, atol=1e-4)


def test_a_rank_lets_go_of_sampled_micrographs_it_does_not_pick(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"mic_{i}.mrc")
        write_mrc(paths[-1], _blobs((160, 160), np.array([[50.0, 50.0], [110.0, 100.0]]), 20, seed=i), pixel_size=2.0)
    model = _constant_size_model(0.0)
    picker = Picker(model, _meta(model), PickSettings(ParticleSize(diameter_px=40.0), threshold=0.0))
    assert picker.calibrate(paths).factor == 1.0 and picker.sampled == frozenset(paths)
    picker.keep_sampled(paths[1:2])
    assert picker.sampled == {paths[1]}
    prepared = picker.prepare(paths[1])
    assert prepared.outputs is not None and prepared.image is None and not picker.sampled
    assert picker.prepare(paths[1]).outputs is None  # handed out once; asked again, it is read and prepared


def test_cli_fixed_diameter_keeps_the_given_box_size(micrographs, tmp_path):
    path = write_checkpoint(tmp_path / "sized.pt", _constant_size_model(float(np.log(1.2))))
    for flag, box in (((), 20 * 1.2 * 1.2), (("--fixed-diameter",), 20.0)):
        out = tmp_path / f"out{len(flag)}"
        assert _run(*micrographs, "--out", out, "--model", path, "--diameter-px", 20, "--format", "box", *flag) == 0
        lines = (out / "box" / "mic_0.box").read_text().split()
        assert lines and float(lines[2]) == pytest.approx(box, abs=1)


# --- the folder pipeline, through the CLI -------------------------------------------------------


def test_every_format_is_written_and_reads_back_to_the_same_coordinates(checkpoint, micrographs, tmp_path):
    out = tmp_path / "out"
    assert _run(*micrographs, "--out", out, "--model", checkpoint, "--diameter-A", 80, "--threshold", 0.0) == 0
    for path in micrographs:
        shape = read_micrograph(path).shape
        files = output_paths(out, path.stem, FORMATS)
        reference = read_picks(files["csv"], "csv")[path.stem]
        assert len(reference) > 0 and reference.shape is None
        assert np.all(reference.x >= -0.5) and np.all(reference.x < shape[1] - 0.5)
        for fmt, file in files.items():
            assert file.is_file(), file
            picks = read_picks(file, fmt, micrograph=path.stem, shape=shape, box_size=40.0)[path.stem]
            np.testing.assert_allclose(picks.x, reference.x, atol=1e-3, err_msg=fmt)
            np.testing.assert_allclose(picks.y, reference.y, atol=1e-3, err_msg=fmt)
            if fmt != "box":
                np.testing.assert_allclose(picks.score, reference.score, atol=1e-4, err_msg=fmt)
    every = read_picks(out / "picks.csv", "csv")
    assert sorted(every) == sorted(p.stem for p in micrographs)
    record = json.loads((out / "command.json").read_text())
    assert record["options"]["diameter_A"] == 80


def test_star_files_have_relion_column_names(checkpoint, micrographs, tmp_path):
    import starfile

    out = tmp_path / "out"
    assert (
        _run(
            micrographs[0],
            "--out",
            out,
            "--model",
            checkpoint,
            "--diameter-px",
            40,
            "--threshold",
            0.0,
            "--format",
            "star",
        )
        == 0
    )
    table = starfile.read(out / "star" / f"{micrographs[0].stem}.star")
    assert {"rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"} <= set(table.columns)
    assert len(table) > 0


def test_rerun_skips_complete_outputs_and_redoes_a_micrograph_whose_output_is_missing(
    checkpoint, micrographs, tmp_path
):
    out = tmp_path / "out"
    args = (
        *micrographs,
        "--out",
        out,
        "--model",
        checkpoint,
        "--diameter-px",
        40,
        "--threshold",
        0.0,
        "--format",
        "star,box",
    )
    assert _run(*args) == 0
    first, second = (output_paths(out, p.stem, ("star", "box")) for p in micrographs)
    before = {p: p.stat().st_mtime_ns for p in [*first.values(), *second.values()]}
    first["box"].unlink()
    (out / "picks.csv").unlink()

    model, meta = checkpoint_module.load_model(checkpoint)
    picker = Picker(model, meta, PickSettings(ParticleSize(diameter_px=40), threshold=0.0))
    report = pick_files(micrographs, out, picker, ("star", "box"), progress=False)
    assert report.picked == [micrographs[0].stem] and report.skipped == [micrographs[1].stem]
    assert first["box"].is_file() and first["star"].stat().st_mtime_ns != before[first["star"]]
    assert all(p.stat().st_mtime_ns == before[p] for p in second.values())
    # picks.csv is rebuilt from every per-micrograph file, the skipped one's included
    every = read_picks(out / "picks.csv", "csv")
    for path in micrographs:
        single = read_picks(output_paths(out, path.stem, ())["csv"], "csv")[path.stem]
        np.testing.assert_array_equal(every[path.stem].x, single.x)


def test_corrupt_micrograph_is_reported_and_skipped_while_the_others_are_picked(
    checkpoint, micrographs, tmp_path, capsys
):
    bad = micrographs[0].parent / "broken.mrc"
    bad.write_bytes(micrographs[0].read_bytes()[:1500])  # truncated
    out = tmp_path / "out"
    assert _run(*micrographs, bad, "--out", out, "--model", checkpoint, "--diameter-px", 40, "--threshold", 0.0) == 0
    err = capsys.readouterr().err
    assert "broken.mrc" in err and "1 micrograph(s) could not be picked" in err
    assert all(output_paths(out, p.stem, FORMATS)["star"].is_file() for p in micrographs)
    assert not any(p.exists() for p in output_paths(out, "broken", FORMATS).values())
    assert "broken" not in read_picks(out / "picks.csv", "csv")
    # every micrograph failing is the one failure that exits non-zero
    assert _run(bad, "--out", tmp_path / "out2", "--model", checkpoint, "--diameter-px", 40) == 1


def test_without_model_the_missing_pretrained_model_is_a_clear_error(micrographs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "pretrained_model_path", lambda: tmp_path / "nowhere" / "generic.pt")
    out = tmp_path / "out"
    assert _run(*micrographs, "--out", out, "--diameter-px", 40) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pretrained generic model" in err and "--model" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--format", "star,xml"), "unknown coordinate format 'xml'"),
        (("--head", "nope"), "no head 'nope'"),
        (("--threshold", "2"), "threshold must be"),
        (("--refine-radius", "-0.5"), "refine radius must be"),
        (("--tile", "64"), "tile size 64"),
        (("--diameter-px", "-5"), "must be positive"),
    ],
)
def test_bad_inputs_give_one_line_and_no_outputs(checkpoint, micrographs, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    size = () if "--diameter-px" in extra else ("--diameter-px", "40")
    assert _run(*micrographs, "--out", out, "--model", checkpoint, *size, *extra) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_size_in_angstrom_on_files_without_pixel_size_is_refused_up_front(checkpoint, bgal_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(bgal_dir, "--out", out, "--model", checkpoint, "--diameter-A", 191) == 1
    assert "--pixel-size" in capsys.readouterr().err and not out.exists()
    assert _run(tmp_path / "none_*.mrc", "--out", out, "--model", checkpoint, "--diameter-px", 40) == 1
    assert "matches no micrograph" in capsys.readouterr().err and not out.exists()


# --- the files draw boxes on the particles (labels stand in for the network) ----------------------


class _LabelPicker(StandInPicker):
    """Returns a real micrograph's labels as its picks: pins the file and overlay geometry exactly."""

    def __init__(self, labels: dict[str, Picks]) -> None:
        super().__init__()
        self.labels = labels

    def spots(self, prepared: Prepared) -> Picks:
        truth = self.labels[prepared.name]
        score = np.linspace(1, 0.5, len(truth))
        return Picks(prepared.name, truth.x, truth.y, score, box_size=27.0, shape=prepared.data.shape)


def test_box_files_and_overlays_draw_boxes_on_the_labelled_particles(bgal_dir, tmp_path):
    from PIL import Image

    mic = sorted(bgal_dir.glob("*.png"))[0]
    truth = read_picks(mic.with_suffix(".csv"), "csv", micrograph=mic.stem)
    out, overlays = tmp_path / "out", tmp_path / "overlays"
    report = pick_files([mic], out, _LabelPicker(truth), ("box",), overlay_dir=overlays, progress=False)
    assert report.picked == [mic.stem]

    boxes = np.loadtxt(output_paths(out, mic.stem, ("box",))["box"], ndmin=2)
    t = truth[mic.stem]
    np.testing.assert_allclose(boxes[:, 0] + boxes[:, 2] / 2, t.x, atol=1e-3)  # lower-left corner + half box
    np.testing.assert_allclose(boxes[:, 1] + boxes[:, 3] / 2, t.y, atol=1e-3)

    rgb = np.asarray(Image.open(overlays / f"{mic.stem}.png").convert("RGB"))
    assert rgb.shape[:2] == read_micrograph(mic).shape  # 1024 px: drawn at full size
    ys, xs = np.nonzero(np.all(rgb == OVERLAY_COLOUR, axis=2))
    # Every green pixel lies on the outline of some labelled particle's 27-px box ...
    from scipy.spatial import cKDTree

    green = np.column_stack([xs, ys]).astype(float)
    near = cKDTree(np.column_stack([t.x, t.y])).query_ball_point(green, r=15.0, p=np.inf)
    on_outline = [
        [j for j in js if abs(np.abs(green[i] - (t.x[j], t.y[j])).max() - 13.5) <= 1.5] for i, js in enumerate(near)
    ]
    assert all(on_outline)
    # ... and every particle's outline is drawn (most of its 4 x 27 perimeter pixels are green)
    drawn = np.bincount([j for js in on_outline for j in js], minlength=len(t))
    assert np.all(drawn >= 0.5 * 4 * 27)


def test_a_run_that_picks_nothing_leaves_nothing_behind(tmp_path, checkpoint, capsys):
    """`pick nothere.mrc --out x1` exits 1 and leaves no x1/ (it used to leave command.json and a header-only
    picks.csv); in a folder that was there, the earlier run's record comes back and no picks.csv is added."""
    out = tmp_path / "new" / "x1"
    assert _run(tmp_path / "nothere.mrc", "--out", out, "--model", checkpoint, "--diameter-px", 20) == 1
    assert not (tmp_path / "new").exists()
    assert f"nothing written to {out}" in capsys.readouterr().out  # not "picks in" a folder that is gone

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "command.json").write_text('{"verb": "pick"}\n')
    (kept / "notes.txt").write_text("mine\n")
    assert _run(tmp_path / "nothere.mrc", "--out", kept, "--model", checkpoint, "--diameter-px", 20) == 1
    assert sorted(p.name for p in kept.iterdir()) == ["command.json", "notes.txt"]
    assert (kept / "command.json").read_text() == '{"verb": "pick"}\n'
