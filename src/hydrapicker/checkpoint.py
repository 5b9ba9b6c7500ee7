"""The model file: its format, what it holds besides the weights, how it is written, read and shipped.

A checkpoint is one ``torch.save`` dict (read with ``weights_only=True``):

- ``format``: :data:`CHECKPOINT_FORMAT`; anything else is refused with a message naming the file;
- the model: ``preset`` (:class:`hydrapicker.model.ModelPreset` as a dict), ``head_names``,
  ``model`` (the state dict; a size head is there when ``size_head.*`` keys are);
- what picking needs to repeat the input transform: ``target_diameter_px``, ``anchor_stride``,
  ``normalisation``;
- the run that made it: ``version``, ``config`` (the training config as a dict), ``stage``
  (1, 2, or 3 for a fine-tuned or adapted head), ``epoch``, ``val_loss``;
- optional extras: a training run's ``last.pt`` adds ``optimiser``, ``scheduler``, ``rng``,
  ``best_val`` and ``log`` (what resuming needs); ``adapt`` records an adaptation; the shipped
  generic model adds ``source`` and ``trained_on``.

This module is the only one that writes or reads that dict; training, fine-tuning, adaptation,
picking and ``scripts/ship_generic.py`` all go through it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hydrapicker import __version__
from hydrapicker.bundled import pretrained_model_path
from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_path
from hydrapicker.model import HydraPicker
from hydrapicker.presets import ModelPreset

__all__ = [
    "CHECKPOINT_FORMAT",
    "FINETUNED_STAGE",
    "ModelMeta",
    "checkpoint_payload",
    "export_generic",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]

#: Tag of the checkpoint layout; bump when it changes (and keep reading the old one).
CHECKPOINT_FORMAT = "hydrapicker-checkpoint/1"

#: The ``stage`` recorded in a checkpoint whose newest head was fine-tuned or adapted (trunk frozen).
FINETUNED_STAGE = 3

#: Entries that describe the model rather than the state of the run that trained it.
MODEL_ENTRIES = (
    "format",
    "version",
    "preset",
    "target_diameter_px",
    "anchor_stride",
    "normalisation",
    "config",
    "stage",
    "epoch",
    "val_loss",
)


@dataclass(frozen=True)
class ModelMeta:
    """What a picker needs to know besides the weights."""

    preset: ModelPreset
    head_names: tuple[str, ...]
    target_diameter_px: float
    anchor_stride: int
    normalisation: dict = field(default_factory=dict)
    stage: int = 1
    epoch: int = 0
    val_loss: float | None = None
    version: str = __version__


def checkpoint_payload(
    model: HydraPicker,
    *,
    target_diameter_px: float,
    config: Mapping[str, Any],
    stage: int,
    epoch: int,
    val_loss: float | None,
    **extra: Any,
) -> dict:
    """The checkpoint dict of ``model`` (see the module docstring); ``extra`` entries are added as they are."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "preset": model.preset.to_dict(),
        "head_names": list(model.head_names),
        "target_diameter_px": target_diameter_px,
        "anchor_stride": model.stride,
        # What the input transform did before the model saw a micrograph; picking repeats it.
        "normalisation": {"function": "hydrapicker.preprocess.normalise_micrograph", "diameter_px": target_diameter_px},
        "config": dict(config),
        "stage": stage,
        "epoch": epoch,
        "val_loss": val_loss,
        "model": model.state_dict(),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint dict atomically (serialised in memory first, so a kill leaves the old file or the new one)."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``, checked to be one; a one-line error naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise HydraPickerError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = " ".join(str(exc).split()).split(". ")[0][:160]  # torch's zip errors run to five sentences
        raise HydraPickerError(
            f"{path}: not a readable HydraPicker checkpoint, cut short or not one ({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise HydraPickerError(
            f"{path}: not a HydraPicker checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return payload


def _meta(payload: Mapping[str, Any]) -> ModelMeta:
    return ModelMeta(
        preset=ModelPreset.from_dict(payload["preset"]),
        head_names=tuple(payload["head_names"]),
        target_diameter_px=float(payload["target_diameter_px"]),
        anchor_stride=int(payload["anchor_stride"]),
        normalisation=dict(payload["normalisation"]),
        stage=int(payload["stage"]),
        epoch=int(payload["epoch"]),
        val_loss=payload.get("val_loss"),
        version=str(payload["version"]),
    )


def load_checkpoint(path: str | os.PathLike) -> tuple[HydraPicker, ModelMeta]:
    """The checkpoint at ``path`` as a model in eval mode (channels-last), with its metadata."""
    payload = read_checkpoint(path)
    meta = _meta(payload)
    size_head = any(key.startswith("size_head.") for key in payload["model"])
    model = HydraPicker(meta.preset, meta.head_names, size_head=size_head)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise HydraPickerError(f"{path}: weights do not fit preset {meta.preset.name!r} ({exc})") from exc
    # channels-last convs run faster on CPU (benchmarks/train_step.py measures it)
    return model.to(memory_format=torch.channels_last).eval(), meta


def load_model(path: str | os.PathLike | None = None) -> tuple[HydraPicker, ModelMeta]:
    """The checkpoint at ``path``, or the shipped pretrained generic model when ``path`` is None."""
    if path is None:
        path = pretrained_model_path()
        if not path.is_file():
            raise HydraPickerError(
                f"no --model given, and the shipped pretrained generic model ({path}) does not exist yet: "
                "train one with `hydrapicker train` and pass it with --model"
            )
    return load_checkpoint(path)


def export_generic(
    checkpoint: str | os.PathLike, out: str | os.PathLike, trained_on: Sequence[str] | None = None
) -> dict:
    """Write the shippable generic model: trunk + generic head (+ size head) of ``checkpoint``, nothing else.

    Dataset heads, optimiser and RNG state and the training log are dropped, so the file stays
    small whatever the collection's size; :data:`MODEL_ENTRIES` (what ``pick`` needs, and the
    config, epoch and validation loss) are kept, with ``source`` and the names of the datasets it
    was ``trained_on`` (so the file itself says what it must not be called zero-shot on).
    Returns what was written; the file loads with :func:`load_checkpoint`.
    """
    payload = read_checkpoint(checkpoint)
    load_checkpoint(checkpoint)  # refuse weights that do not fit their preset
    prefixes = ("trunk.", f"{GENERIC}.", "size_head.")  # the size head serves the generic head
    weights = {k: v.contiguous() for k, v in payload["model"].items() if k.startswith(prefixes)}
    shipped = {key: payload[key] for key in MODEL_ENTRIES}
    shipped.update(head_names=[], model=weights, source=str(checkpoint), trained_on=list(trained_on or []))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, shipped)
    load_checkpoint(out)  # the shipped file must load on its own
    return shipped
