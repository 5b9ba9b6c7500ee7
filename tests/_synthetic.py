"""Synthetic test inputs: Gaussian-spot micrographs, and a tiny model whose scores spread over (0, 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hydrapicker.checkpoint import checkpoint_payload, save_checkpoint
from hydrapicker.io.micrograph import read_micrograph
from hydrapicker.io.picks import Picks
from hydrapicker.model import HydraPicker
from hydrapicker.picking.picker import Picker, PickSettings, Prepared
from hydrapicker.presets import get_preset
from hydrapicker.training.config import TrainConfig


def gaussian_spots(
    shape: tuple[int, int], xy: np.ndarray, sigma: float, *, contrast: float = 1.0, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """float32 ``[row, col]`` image: white noise of std ``noise`` plus ``contrast`` x a Gaussian of
    std ``sigma`` px at each ``(x, y)`` (x = column, y = row); negative contrast = dark particles."""
    rows, cols = np.indices(shape)
    image = np.random.default_rng(seed).normal(0.0, noise, shape)
    for x, y in xy:
        image += contrast * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def spread_tiny_model(seed: int = 0) -> HydraPicker:
    """A ``tiny`` model with weights moved far from their initial ones, so every layer matters and
    the generic head's scores spread over (0, 1) (an untrained model scores everything ~0.01)."""
    torch.manual_seed(seed)
    model = HydraPicker(get_preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        torch.nn.init.normal_(model.generic.predict.weight, std=0.05)
    return model


def write_checkpoint(path: Path, model: HydraPicker) -> Path:
    """Save ``model`` as a stage-1 checkpoint that ``pick`` loads."""
    save_checkpoint(
        path, checkpoint_dict(model, TrainConfig(preset=model.preset.name), stage=1, epoch=0, val_loss=None)
    )
    return path


def checkpoint_dict(
    model: HydraPicker, config: TrainConfig, stage: int, epoch: int, val_loss: float | None, **extra
) -> dict:
    """The checkpoint dict training writes for ``model`` under ``config`` (as :func:`hydrapicker.training.loop.fit` does)."""
    return checkpoint_payload(
        model,
        target_diameter_px=config.target_diameter_px,
        config=config.to_dict(),
        stage=stage,
        epoch=epoch,
        val_loss=val_loss,
        **extra,
    )


class StandInPicker(Picker):
    """A picker without a network: reads each micrograph and returns :meth:`spots` as its candidates.

    Subclasses say what the picks are (known spots, labels, the brightest pixel); everything
    around the network (reading, files, thresholds, the runner) is the real code.
    """

    def __init__(self, settings: PickSettings | None = None) -> None:
        self.settings = settings or PickSettings(threshold=0.0)

    def check_paths(self, paths):
        pass

    def calibrate(self, paths):
        return None

    sampled: frozenset[Path] = frozenset()  # no size estimate, so nothing already run

    def keep_sampled(self, paths) -> None:
        pass

    def prepare(self, path: Path) -> Prepared:
        mic = read_micrograph(path)
        return Prepared(mic.name, path, mic.data, mic.data, 1.0)

    def spots(self, prepared: Prepared) -> Picks:
        raise NotImplementedError

    def candidates(self, prepared: Prepared) -> Picks:
        return self.spots(prepared)

    def pick(self, prepared: Prepared) -> Picks:
        return self.candidates(prepared).above(self.settings.threshold)
