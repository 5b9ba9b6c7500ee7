"""The shipped pretrained generic model and what makes it: the stripping script, the train options it uses."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import torch
from _synthetic import checkpoint_dict

from hydrapicker.bundled import pretrained_model_path
from hydrapicker.checkpoint import FINETUNED_STAGE, load_checkpoint, load_model, read_checkpoint, save_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.data.project import load_project
from hydrapicker.defaults import GENERIC
from hydrapicker.model import HydraPicker
from hydrapicker.presets import get_preset
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train

ROOT = Path(__file__).resolve().parents[1]


def _ship_generic():
    spec = importlib.util.spec_from_file_location("ship_generic", ROOT / "scripts" / "ship_generic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ship_generic


def _project(tmp_path: Path) -> Path:
    from conftest import REAL_BGAL

    path = tmp_path / "project.toml"
    path.write_text(
        f'[[dataset]]\nname = "bgal"\nmicrographs = "{REAL_BGAL}/*.png"\ncoordinates = "{REAL_BGAL}/*.csv"\n'
        "pixel_size = 7.08\ndiameter = 191.16\n"
    )
    return path


def test_ship_generic_keeps_trunk_and_generic_head_and_drops_dataset_heads(tmp_path):
    config = TrainConfig(preset="tiny")
    model = HydraPicker(get_preset("tiny"), ("sim-a", "sim-b"))
    with torch.no_grad():
        for p in model.heads["sim-a"].parameters():
            p.add_(1.0)  # so that a mix-up of heads would show
    source, shipped = tmp_path / "stage2.pt", tmp_path / "generic.pt"
    save_checkpoint(
        source, checkpoint_dict(model, config, stage=2, epoch=7, val_loss=0.25, optimiser={"big": torch.zeros(10_000)})
    )

    _ship_generic()(source, shipped, trained_on=["sim-a", "sim-b"])

    loaded, meta = load_checkpoint(shipped)
    assert meta.head_names == () and meta.stage == 2 and meta.epoch == 7 and meta.val_loss == 0.25
    want = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.")}
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert shipped.stat().st_size < source.stat().st_size
    assert torch.load(shipped, weights_only=True)["trained_on"] == ["sim-a", "sim-b"]


def test_ship_generic_keeps_the_size_head_so_pick_can_still_correct_the_diameter(tmp_path):
    model = HydraPicker(get_preset("tiny"), ("sim-a",), size_head=True)
    source, shipped = tmp_path / "stage1.pt", tmp_path / "generic.pt"
    save_checkpoint(
        source,
        checkpoint_dict(
            model, TrainConfig(preset="tiny", size_head=True), stage=1, epoch=0, val_loss=1.0, optimiser={}
        ),
    )

    _ship_generic()(source, shipped)

    loaded, meta = load_checkpoint(shipped)
    assert meta.head_names == () and loaded.size_head is not None
    want = model.size_head.state_dict()
    assert all(torch.equal(loaded.size_head.state_dict()[k], want[k]) for k in want)


def test_cli_train_passes_scale_jitter_restart_period_and_cache_dir_into_the_config(tmp_path, monkeypatch):
    import hydrapicker.training.stages

    seen = {}

    def fake_train(datasets, out_dir, config, *, resume=False, on_start=None):
        seen["config"] = config
        return Path(out_dir) / "model.pt"

    monkeypatch.setattr(hydrapicker.training.stages, "train", fake_train)
    argv = [
        "train",
        str(_project(tmp_path)),
        "--out",
        str(tmp_path / "run"),
        "--scale-jitter",
        "0.5",
        "2",
        "--t0-epochs",
        "7",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert cli_main(argv) == 0
    config = seen["config"]
    assert config.scale_jitter == (0.5, 2.0) and config.t0_epochs == 7 and config.cache_dir == str(tmp_path / "cache")
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_training_with_a_cache_dir_stores_every_prepared_micrograph_there(tmp_path):
    config = TrainConfig(
        preset="tiny",
        stage="1",
        epochs=1,
        batches_per_epoch=1,
        val_batches=1,
        batch_size=3,
        crop_size=96,
        pad_to=128,
        target_diameter_px=20.0,
        threads=2,
        cache_dir=str(tmp_path / "cache"),
    )
    train(load_project(_project(tmp_path)), tmp_path / "run", config)
    # 3 crops of a 3-micrograph dataset are drawn without replacement: every micrograph is prepared
    assert len(list((tmp_path / "cache" / "bgal").glob("*.npz"))) == 3


def test_pick_without_a_model_loads_the_shipped_generic_model_a_few_mb_with_only_the_generic_head():
    path = pretrained_model_path()
    model, meta = load_model(None)
    assert meta.head_names == () and model.head(GENERIC) is model.generic
    assert path.stat().st_size < 5e6
    # MODEL_CARD.md: trained on simulation only, without beta-galactosidase (5a1a) or any EMPIAR-10017 data
    trained_on = torch.load(path, map_location="cpu", weights_only=True)["trained_on"]
    # generic model v2 (scripts/campaign): never trained on beta-gal or the benchmark's unseen proteins
    assert trained_on and not any(held_out in name for name in trained_on for held_out in ("5a1a", "1jnb", "6msm"))


def test_a_checkpoint_written_before_the_redesign_loads_and_resumes_its_fields():
    """The dict ``hydrapicker.train._checkpoint`` wrote before checkpoint.py owned the file (by hand, as it was)."""
    model = HydraPicker(get_preset("tiny"), ("bgal",))
    old = {
        "format": "hydrapicker-checkpoint/1",
        "version": "0.1.0",
        "preset": model.preset.to_dict(),
        "head_names": ["bgal"],
        "target_diameter_px": 40.0,
        "anchor_stride": 16,
        "normalisation": {"function": "hydrapicker.data.normalise_micrograph", "diameter_px": 40.0},
        "config": TrainConfig(preset="tiny").to_dict(),
        "stage": 3,
        "epoch": 4,
        "val_loss": 0.5,
        "model": model.state_dict(),
        "optimiser": {"state": {}, "param_groups": []},
        "scheduler": None,
        "best_val": 0.5,
        "log": [{"epoch": 0}],
    }
    buffer = io.BytesIO()
    torch.save(old, buffer)
    loaded, meta = load_model_bytes(buffer.getvalue())
    assert meta.head_names == ("bgal",) and meta.stage == FINETUNED_STAGE and meta.epoch == 4 and meta.val_loss == 0.5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert read_checkpoint_bytes(buffer.getvalue())["log"] == [{"epoch": 0}]


def test_the_shipped_generic_model_loads_with_checkpoint_py():
    model, meta = load_model()
    assert meta.head_names == () and model.size_head is not None and meta.target_diameter_px > 0


def load_model_bytes(data: bytes):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "old.pt"
        path.write_bytes(data)
        return load_checkpoint(path)


def read_checkpoint_bytes(data: bytes) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "old.pt"
        path.write_bytes(data)
        return read_checkpoint(path)
