"""Reading the particle size from the size head, and picking at the diameter the particles show.

A model with a size head, picking with its generic head, first checks the diameter the user
gave: it reads how large the particles look where it picks and, when they look another size,
rescales and picks again (:func:`size_corrected_outputs`). A folder is read once, over a
sample of its micrographs, and picked at one diameter (:func:`estimate_diameter`, used by
:meth:`hydrapicker.picking.picker.Picker.calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hydrapicker.checkpoint import ModelMeta
from hydrapicker.defaults import (
    GENERIC,
    PICK_ONE_PASS_SIZE,
    PICK_TILE_SIZE,
    SIZE_CORRECTION_RANGE,
    SIZE_MIN_SCORE,
    SIZE_PASSES,
    SIZE_TOLERANCE,
)
from hydrapicker.model import HydraPicker
from hydrapicker.picking.inference import head_outputs, size_map
from hydrapicker.preprocess import prepare_micrograph

__all__ = [
    "SizeEstimate",
    "confident_log_sizes",
    "corrects_size",
    "estimate_diameter",
    "estimate_diameter_and_outputs",
    "estimate_size_correction",
    "size_corrected_outputs",
]


def confident_log_sizes(outputs: torch.Tensor, sizes: torch.Tensor, min_score: float = SIZE_MIN_SCORE) -> torch.Tensor:
    """The size head's log sizes in the cells whose best anchor scores at least ``min_score`` (where the particles are).

    Args:
        outputs: a head's output ``[3, h, w]``; sizes: the size head's ``[ceil(h/2), ceil(w/2)]``
            (log size; one cell per 2 x 2 anchors).
    """
    scores = torch.nn.functional.max_pool2d(torch.sigmoid(outputs[2])[None], 2, ceil_mode=True)[0]
    if scores.shape != sizes.shape:
        raise ValueError(f"size map {tuple(sizes.shape)} does not fit the anchor grid {tuple(outputs.shape[1:])}")
    return sizes[scores >= min_score].double()


def estimate_size_correction(
    outputs: torch.Tensor, sizes: torch.Tensor, min_score: float = SIZE_MIN_SCORE
) -> float | None:
    """How much larger than the trained diameter the particles look: ``exp`` of the size head's
    mean over the cells whose best anchor scores at least ``min_score``
    (:func:`confident_log_sizes`; the mean is what training calibrates, :func:`hydrapicker.loss.size_loss`).

    Returns:
        The factor (1.25: particles look 25 % larger than the model was trained on, i.e. the
        diameter given was 20 % too small), or None when no anchor scores ``min_score``.
    """
    logs = confident_log_sizes(outputs, sizes, min_score)
    return float(torch.exp(logs.mean())) if len(logs) else None


@dataclass(frozen=True)
class SizeEstimate:
    """What the size head made of the diameter given, over one or more micrographs."""

    factor: float  # the diameter to pick at / the diameter given (1: as given)
    micrographs: int  # micrographs read
    cells: int  # size-head cells the last estimate pooled (0: no confident pick, left as given)


def _size_passes(
    model: HydraPicker,
    meta: ModelMeta,
    micrographs: Sequence[tuple[np.ndarray, float]],
    head: str,
    passes: int,
    *,
    prepared: Sequence[np.ndarray | None] = (),
    names: Sequence[str] = (),
    tile_size: int = PICK_TILE_SIZE,
    one_pass_size: int | None = PICK_ONE_PASS_SIZE,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> tuple[SizeEstimate, list[torch.Tensor] | None]:
    """Up to ``passes - 1`` rounds of: every micrograph at the current diameter, one estimate
    pooled over all their confident cells, a corrected diameter. Returns the estimate and, when
    the last round ran at the final diameter, its outputs (a caller need not run them again)."""
    prepared = list(prepared) or [None] * len(micrographs)
    names = list(names) or [""] * len(micrographs)
    low, high = SIZE_CORRECTION_RANGE
    factor, cells = 1.0, 0
    for _ in range(max(1, passes) - 1):
        outputs, logs = [], []
        for i, (image, scale) in enumerate(micrographs):
            image_in = (
                prepared[i]
                if prepared[i] is not None
                else prepare_micrograph(image, scale / factor, meta.target_diameter_px, names[i])
            )
            prepared[i] = None  # only valid at the diameter given
            outputs.append(
                head_outputs(
                    model, image_in, head, tile_size=tile_size, one_pass_size=one_pass_size, device=device, bf16=bf16
                )
            )
            logs.append(confident_log_sizes(outputs[-1], size_map(model, image_in, device)))
        pooled = torch.cat(logs)
        cells = len(pooled)
        if not cells:
            return SizeEstimate(factor, len(micrographs), 0), outputs
        looks = float(torch.exp(pooled.mean()))
        if abs(np.log(looks)) < np.log(SIZE_TOLERANCE):
            return SizeEstimate(factor, len(micrographs), cells), outputs
        # The particles look `looks` times the trained size: pick at a diameter that much larger
        # (within the range), i.e. shrink the micrographs by it.
        corrected = float(np.clip(factor * looks, low, high))
        if np.isclose(corrected, factor, rtol=1e-9, atol=0.0):
            return SizeEstimate(factor, len(micrographs), cells), outputs  # at the edge of the range already
        factor = corrected
    return SizeEstimate(factor, len(micrographs), cells), None


def corrects_size(model: HydraPicker, head: str) -> bool:
    """Whether picking with ``head`` of ``model`` corrects the diameter given: only the generic head, with a size head.

    A dataset's own head (trained or fine-tuned on labels) knows its particles at the labelled
    size, which the user gives again; correcting it cost few-shot heads accuracy in the
    benchmark, while the generic head's diameter is a guess.
    """
    return model.size_head is not None and head == GENERIC


def estimate_diameter(
    model: HydraPicker,
    meta: ModelMeta,
    micrographs: Sequence[tuple[np.ndarray, float]],
    head: str = GENERIC,
    *,
    names: Sequence[str] = (),
    passes: int = SIZE_PASSES,
    tile_size: int = PICK_TILE_SIZE,
    one_pass_size: int | None = PICK_ONE_PASS_SIZE,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> SizeEstimate:
    """One diameter correction for a set of micrographs of one sample, from the size head.

    A dataset has one particle size: pooling the cells of several micrographs steadies the
    estimate (one micrograph's alone can be far off, benchmarks/scale_search.md) and gives one
    box size for the whole set, as extraction wants. Each micrograph runs at the diameter given
    (``scale``: rescaled px per stored px for it), then at each corrected one, until the pooled
    estimate is within ``SIZE_TOLERANCE``, ``passes - 1`` rounds are spent, or the correction
    reaches ``SIZE_CORRECTION_RANGE``. Without a size head, or for any head but the generic one
    (:func:`corrects_size`): factor 1.

    Args:
        micrographs: ``(image as stored, scale at the diameter given)`` each.
    """
    return estimate_diameter_and_outputs(
        model,
        meta,
        micrographs,
        head,
        names=names,
        passes=passes,
        tile_size=tile_size,
        one_pass_size=one_pass_size,
        device=device,
        bf16=bf16,
    )[0]


def estimate_diameter_and_outputs(
    model: HydraPicker,
    meta: ModelMeta,
    micrographs: Sequence[tuple[np.ndarray, float]],
    head: str = GENERIC,
    *,
    names: Sequence[str] = (),
    passes: int = SIZE_PASSES,
    tile_size: int = PICK_TILE_SIZE,
    one_pass_size: int | None = PICK_ONE_PASS_SIZE,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> tuple[SizeEstimate, list[torch.Tensor] | None]:
    """:func:`estimate_diameter`, and the head outputs of ``micrographs`` at the diameter it settled on
    when its last round ran there (None otherwise, or when nothing was run).

    Those outputs are exactly what picking each micrograph at the corrected diameter computes
    (the same preparation and network pass), so a run keeps them as the sample's picks instead
    of running the network over the sample again.
    """
    if not corrects_size(model, head) or not micrographs:
        return SizeEstimate(1.0, 0, 0), None
    return _size_passes(
        model,
        meta,
        micrographs,
        head,
        passes,
        names=names,
        tile_size=tile_size,
        one_pass_size=one_pass_size,
        device=device,
        bf16=bf16,
    )


def size_corrected_outputs(
    model: HydraPicker,
    meta: ModelMeta,
    image: np.ndarray,
    scale: float,
    head: str = GENERIC,
    *,
    prepared: np.ndarray | None = None,
    name: str = "",
    passes: int = SIZE_PASSES,
    tile_size: int = PICK_TILE_SIZE,
    one_pass_size: int | None = PICK_ONE_PASS_SIZE,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> tuple[torch.Tensor, float]:
    """Head outputs ``[3, h, w]`` of one micrograph, at the scale where its particles look the size the model was trained on.

    Users guess the diameter, and a detector localises particles badly when they look much
    larger than its training size. A model with a size head reads, from the first pass at
    ``scale`` (from the diameter given), how large the particles look, rescales the micrograph
    by the inverse and runs again (:func:`estimate_diameter`, on this micrograph alone). The
    last pass's outputs are reused when it ran at the final scale. Without a size head, with
    ``passes=1``, or for any head but the generic one (:func:`corrects_size`): one pass at ``scale``.

    Args:
        image: the micrograph as stored; prepared: it already prepared at ``scale`` (saves one preparation).

    Returns:
        ``(outputs, scale)``: the outputs and the scale (rescaled px per stored px) they ran at.
    """
    estimate, outputs = SizeEstimate(1.0, 0, 0), None
    if corrects_size(model, head) and passes > 1:
        estimate, outputs = _size_passes(
            model,
            meta,
            [(image, scale)],
            head,
            passes,
            prepared=[prepared],
            names=[name],
            tile_size=tile_size,
            one_pass_size=one_pass_size,
            device=device,
            bf16=bf16,
        )
    scale = scale / estimate.factor
    if outputs is not None:
        return outputs[0], scale
    if prepared is None or estimate.factor != 1.0:
        prepared = prepare_micrograph(image, scale, meta.target_diameter_px, name)
    return head_outputs(
        model, prepared, head, tile_size=tile_size, one_pass_size=one_pass_size, device=device, bf16=bf16
    ), scale
