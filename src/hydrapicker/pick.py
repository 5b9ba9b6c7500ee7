"""Picking micrographs with a trained model: one micrograph in memory, or a folder of thousands to files.

One micrograph goes through exactly the steps training applied (:mod:`hydrapicker.data`):
rescale so the particle is the model's ``target_diameter_px`` wide, local normalisation; then
trunk + one head, decoding of every anchor, a score threshold, NMS at the box size, and the
map back to the stored micrograph's pixel frame (:func:`hydrapicker.data.from_rescaled`).

Large micrographs (tiles): the net is fully convolutional, but its GroupNorm layers normalise
each channel group by its mean and variance over *all* positions of the image, so a tile run
on its own would see other statistics than the whole micrograph. :func:`head_outputs` therefore
measures every GroupNorm's statistics once, in a pass over a central window of at most
``tile_size`` px (the whole micrograph when it fits), then runs the tiles with those statistics
frozen (each GroupNorm becomes a per-channel affine map). Tiles start on multiples of the anchor
stride and overlap by the receptive field of trunk + head, so every anchor is computed from
exactly the pixels the whole-image pass uses. Result: a micrograph that fits in the window
gives the whole-image outputs (to float rounding) however it is tiled; a larger one gives
whole-image inference with GroupNorm statistics from its central window instead of from all
of it: on a real 1517² micrograph in 768-px tiles, scores move by at most 4e-3 (mean 6e-4) and
6 of 414 picks above 0.5 change (benchmarks/pick_real/run.py). The network's memory is bounded
by the tile size; the whole micrograph is still read and normalised in memory (NumPy).

A model with a size head, picking with its generic head, first checks the diameter the user
gave: it reads how large the particles look where it picks and, when they look another size,
rescales and picks again (:func:`size_corrected_outputs`; off with ``correct_size=False``). A
folder is read once, over a sample of its micrographs, and picked at one diameter
(:meth:`Picker.calibrate`, :func:`estimate_diameter`).

A folder (:func:`pick_files`): reading and preparing the next micrographs (threads), inference
(this thread) and writing (a thread) overlap; outputs are written atomically, per format in
``OUT/<format>/<stem><suffix>``; a rerun skips micrographs whose outputs are all there;
unreadable micrographs are reported and skipped; ``OUT/picks.csv`` is rebuilt at the end from
the per-micrograph CSV files (always written for that reason). Every candidate down to
``CANDIDATE_FLOOR`` is kept in ``OUT/candidates/<stem>.csv`` (with ``<stem>.json``: box size
and micrograph shape), so :mod:`hydrapicker.threshold` can re-write the outputs at another
threshold without the network.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hydrapicker.boxes import decode_outputs, nms, refine_centres
from hydrapicker.defaults import (
    CANDIDATE_FLOOR,
    COORDINATE_FORMATS,
    MICROGRAPH_SUFFIXES,
    NMS_IOU,
    PICK_THRESHOLD,
    PICK_TILE_SIZE,
    PRETRAINED_MODEL,
    REFINE_RADIUS,
    SIZE_CORRECTION_RANGE,
    SIZE_MIN_SCORE,
    SIZE_PASSES,
    SIZE_SAMPLE_MICROGRAPHS,
    SIZE_TOLERANCE,
)
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import read_picks, write_picks
from hydrapicker.io.files import atomic_path, atomic_write_text
from hydrapicker.io.micrograph import Micrograph, is_micrograph_path, micrograph_stem, read_micrograph
from hydrapicker.io.picks import Picks
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import GENERIC, HydraPicker
from hydrapicker.train import ModelMeta, check_device

__all__ = [
    "OVERLAY_COLOUR",
    "OVERLAY_MAX_SIZE",
    "candidate_paths",
    "check_formats",
    "estimate_size_correction",
    "expand_micrographs",
    "expected_outputs",
    "head_outputs",
    "load_picking_model",
    "output_paths",
    "overlay_image",
    "pick_files",
    "pick_micrograph",
    "Picker",
    "picking_scale",
    "PickReport",
    "picks_from_outputs",
    "PickSettings",
    "prepare_micrograph",
    "Prepared",
    "pretrained_model_path",
    "rebuild_picks_csv",
    "receptive_radius",
    "size_corrected_outputs",
    "estimate_diameter",
    "SizeEstimate",
    "confident_log_sizes",
    "corrects_size",
    "size_map",
    "tile_margin",
    "tile_spans",
    "write_overlay",
]


def picking_scale(meta: ModelMeta, pixel_size: float | None, diameter_A: float | None, diameter_px: float | None) -> float:
    """Rescaled px per stored px for a particle given in Å (with the pixel size) or in pixels."""
    from hydrapicker.data import rescale_factor

    if (diameter_A is None) == (diameter_px is None):
        raise HydraPickerError("give the particle diameter either in Å (with the pixel size) or in pixels, not both or neither")
    if diameter_px is not None:
        return rescale_factor(1.0, diameter_px, meta.target_diameter_px)
    if pixel_size is None:
        raise HydraPickerError(f"a particle diameter of {diameter_A} Å needs the pixel size (Å/px)")
    return rescale_factor(pixel_size, diameter_A, meta.target_diameter_px)


# --- whole-image outputs, in tiles when the micrograph is large ---------------------------


def receptive_radius(model: HydraPicker) -> int:
    """How far the input an anchor's output depends on reaches: anchor ``j`` (its cell starts at
    input px ``16 j``) depends on input px ``16 j - r .. 16 j + r`` (which covers its cell).

    Walks the convs in the order the network runs them (trunk, then a head): each adds
    ``(kernel // 2) * dilation`` times the stride accumulated before it. Identity skips add
    nothing, so this is exact for the trunk + head chain (``paper``: 14 + 31 = 45 px).
    """
    radius, jump = 0, 1
    for module in (*model.trunk.modules(), *model.generic.modules()):
        if isinstance(module, nn.Conv2d):
            radius += (module.kernel_size[0] // 2) * module.dilation[0] * jump
            jump *= module.stride[0]
    assert jump == model.stride, "the head's strides should multiply to the anchor stride"
    return radius


def tile_margin(model: HydraPicker) -> int:
    """Overlap each side of a tile: the receptive radius rounded up to the anchor stride."""
    return -(-receptive_radius(model) // model.stride) * model.stride


def tile_spans(length: int, tile_size: int, margin: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``length`` input px: ``(start, stop, first, last)`` per tile.

    ``[start, stop)`` is the tile in input px (``start`` a multiple of ``stride``), and
    ``[first, last)`` the anchor rows (or columns) it is trusted for: those whose receptive
    field lies inside the tile or reaches past it only where the micrograph itself ends. The
    trusted ranges partition ``[0, ceil(length / stride))``.
    """
    most = (tile_size - 2 * margin) // stride  # anchors a tile can be trusted for
    if most < 1:
        raise HydraPickerError(f"tile size {tile_size} px is too small: it must exceed twice the overlap of {margin} px")
    n_anchors = -(-length // stride)
    # As few tiles as fit, sharing the anchors evenly: 4096 px in tiles of at most 2048 is three
    # tiles of ~1470 px, not two full ones and a sliver.
    n_tiles = -(-n_anchors // most)
    core = -(-n_anchors // n_tiles)
    spans = []
    for first in range(0, n_anchors, core):
        last = min(first + core, n_anchors)
        start = max(0, first * stride - margin)
        stop = min(length, last * stride + margin)
        spans.append((start, stop, first, last))
    return spans


class _GroupNorm(nn.Module):
    """GroupNorm that can measure its statistics on one image and then keep them (frozen) for tiles.

    ``frozen = False``: normalise by the input's own statistics and store them, like
    ``nn.GroupNorm`` on one image. ``frozen = True``: normalise by the stored ones. Either
    way the normalisation is one per-channel affine map ``x * scale + shift``.
    The statistics are per-channel sums (float32, ~5e-7 relative) pooled per group in float64:
    torch's own float32 GroupNorm kernel is off by up to ~1e-3 in variance on a 1500² map, an
    error its next GroupNorm hides but frozen statistics would pass on (2e-3 in score).
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        channels = norm.num_channels
        self.weight = nn.Parameter(norm.weight.detach().clone() if norm.affine else torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(norm.bias.detach().clone() if norm.affine else torch.zeros(channels), requires_grad=False)
        self.frozen = False
        self.scale: torch.Tensor | None = None  # [1, C, 1, 1]
        self.shift: torch.Tensor | None = None  # [1, C, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            self._measure(x)
        assert self.scale is not None and self.shift is not None, "frozen before any statistics were measured"
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))

    def _measure(self, x: torch.Tensor) -> None:
        if x.shape[0] != 1:
            raise ValueError(f"statistics are measured on one image at a time, got a batch of {x.shape[0]}")
        channels = x.shape[1]
        # Sums over pixels as a reduction over the outer axis of a [pixels, C] or [C, pixels] view
        # (no copy): 2-3x faster than var_mean over the spatial dims of a channels-last map.
        if x.is_contiguous(memory_format=torch.channels_last):
            values, axis = x[0].permute(1, 2, 0).reshape(-1, channels), 0
        else:
            values, axis = x[0].reshape(channels, -1), 1
        values = values.float()
        n = values.shape[axis]
        mean_c = values.sum(axis).double() / n
        second_c = torch.square(values).sum(axis).double() / n
        mean = mean_c.reshape(self.groups, -1).mean(1)
        var = (second_c.reshape(self.groups, -1).mean(1) - mean**2).clamp(min=0)
        per_group = channels // self.groups
        scale = self.weight.double() * torch.rsqrt(var + self.eps).repeat_interleave(per_group)
        shift = self.bias.double() - mean.repeat_interleave(per_group) * scale
        self.scale = scale.float().reshape(1, -1, 1, 1)
        self.shift = shift.float().reshape(1, -1, 1, 1)


def _with_measured_norms(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose GroupNorms are :class:`_GroupNorm` (not frozen)."""
    copied = copy.deepcopy(net)
    for name, module in list(copied.named_modules()):
        if isinstance(module, nn.GroupNorm):
            parent_name, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent_name) if parent_name else copied, child, _GroupNorm(module))
    return copied


def _freeze_norms(net: nn.Module, frozen: bool = True) -> None:
    for module in net.modules():
        if isinstance(module, _GroupNorm):
            module.frozen = frozen


def head_outputs(
    model: HydraPicker,
    image: np.ndarray | torch.Tensor,
    head: str = GENERIC,
    *,
    tile_size: int = PICK_TILE_SIZE,
    stats_size: int | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> torch.Tensor:
    """Run trunk + ``head`` over a prepared (rescaled, normalised) image: float32 ``[3, ceil(H/16), ceil(W/16)]`` on the CPU.

    An image no larger than ``tile_size`` in both axes goes through in one pass. A larger
    one: GroupNorm statistics from a pass over its central ``stats_size`` window
    (default ``tile_size``; the whole image when it fits), then tiles of at most
    ``tile_size`` px with those statistics frozen (see the module docstring). ``bf16`` runs
    the convs under bfloat16 autocast: 1.6-1.7x the fp32 channels-last conv rate on our CPUs;
    on a held-out real micrograph scores moved by at most 2.5e-3 and AP from 0.689 to 0.688.
    """
    model.head(head)  # a clear error for an unknown head before any work
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 2:
        raise HydraPickerError(f"expected a 2-D prepared micrograph, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    stride = model.stride
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    net = _with_measured_norms(nn.Sequential(model.trunk, model.head(head))).to(device).eval()

    def run(crop: torch.Tensor) -> torch.Tensor:
        with autocast:
            return net(model.pad(crop[None, None].to(device))).float()[0].cpu()

    with torch.inference_mode():
        if rows <= tile_size and cols <= tile_size:
            return run(x)
        window = stats_size or tile_size
        r0 = max(0, (rows - window) // 2) // stride * stride
        c0 = max(0, (cols - window) // 2) // stride * stride
        run(x[r0 : r0 + window, c0 : c0 + window])
        _freeze_norms(net)
        margin = tile_margin(model)
        out = torch.empty(3, -(-rows // stride), -(-cols // stride))
        for r_start, r_stop, r_first, r_last in tile_spans(rows, tile_size, margin, stride):
            for c_start, c_stop, c_first, c_last in tile_spans(cols, tile_size, margin, stride):
                tile = run(x[r_start:r_stop, c_start:c_stop])
                i0, j0 = r_first - r_start // stride, c_first - c_start // stride
                out[:, r_first:r_last, c_first:c_last] = tile[:, i0 : i0 + r_last - r_first, j0 : j0 + c_last - c_first]
        return out


def prepare_micrograph(image: np.ndarray, scale: float, target_diameter_px: float, name: str = "") -> np.ndarray:
    """The micrograph as the model sees it: rescaled by ``scale``, locally normalised (float32 ``[row, col]``)."""
    from hydrapicker.data import normalise_micrograph, rescale_image

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise HydraPickerError(f"{name or 'micrograph'}: expected a 2-D image, got shape {image.shape}")
    try:
        return normalise_micrograph(rescale_image(image, scale), target_diameter_px)
    except HydraPickerError as exc:
        raise HydraPickerError(f"{name}: {exc}" if name else str(exc)) from exc


def size_map(model: HydraPicker, image: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """The size head over a whole prepared image: float32 ``[ceil(H/32), ceil(W/32)]`` log apparent size, on the CPU.

    One pass however large the image: the size head shrinks it 4x first, so a 4096² micrograph
    costs it about what a 1024² one costs the trunk.
    """
    if model.size_head is None:
        raise HydraPickerError("the model has no size head")
    x = torch.as_tensor(image, dtype=torch.float32)[None, None].to(device)
    with torch.inference_mode():
        return model.size_head.to(device).eval()(model.pad(x)).float()[0, 0].cpu()


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


def estimate_size_correction(outputs: torch.Tensor, sizes: torch.Tensor, min_score: float = SIZE_MIN_SCORE) -> float | None:
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
            image_in = prepared[i] if prepared[i] is not None else prepare_micrograph(image, scale / factor, meta.target_diameter_px, names[i])
            prepared[i] = None  # only valid at the diameter given
            outputs.append(head_outputs(model, image_in, head, tile_size=tile_size, device=device, bf16=bf16))
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
    size, which the user gives again; correcting it cost few-shot heads 0.15 mean AP in the
    benchmark (sim-4hhb 0.87 -> 0.50), while the generic head's diameter is a guess.
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
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> SizeEstimate:
    """One diameter correction for a set of micrographs of one sample, from the size head.

    A dataset has one particle size: pooling the cells of several micrographs steadies the
    estimate (one micrograph's can be off by 20-40 %, benchmarks/scale_search.md) and gives one
    box size for the whole set, as extraction wants. Each micrograph runs at the diameter given
    (``scale``: rescaled px per stored px for it), then at each corrected one, until the pooled
    estimate is within ``SIZE_TOLERANCE``, ``passes - 1`` rounds are spent, or the correction
    reaches ``SIZE_CORRECTION_RANGE``. Without a size head, or for any head but the generic one
    (:func:`corrects_size`): factor 1.

    Args:
        micrographs: ``(image as stored, scale at the diameter given)`` each.
    """
    if not corrects_size(model, head) or not micrographs:
        return SizeEstimate(1.0, 0, 0)
    estimate, _ = _size_passes(model, meta, micrographs, head, passes, names=names, tile_size=tile_size, device=device, bf16=bf16)
    return estimate


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
            model, meta, [(image, scale)], head, passes, prepared=[prepared], names=[name], tile_size=tile_size, device=device, bf16=bf16,
        )  # fmt: skip
    scale = scale / estimate.factor
    if outputs is not None:
        return outputs[0], scale
    if prepared is None or estimate.factor != 1.0:
        prepared = prepare_micrograph(image, scale, meta.target_diameter_px, name)
    return head_outputs(model, prepared, head, tile_size=tile_size, device=device, bf16=bf16), scale


def picks_from_outputs(
    outputs: torch.Tensor,
    meta: ModelMeta,
    scale: float,
    shape: tuple[int, int],
    threshold: float = PICK_THRESHOLD,
    *,
    name: str = "",
    nms_iou: float = NMS_IOU,
    whole_boxes: bool = False,
    refine_radius: float = REFINE_RADIUS,
) -> Picks:
    """Decode a head output ``[3, h, w]``: threshold, NMS at the box size, refine, map back to the stored frame.

    Each pick moves to the consensus of the centres predicted by every anchor within
    ``refine_radius`` box sizes of it (:func:`hydrapicker.boxes.refine_centres`; 0: off). That
    uses every anchor, whatever ``threshold`` is, so the picks at a threshold are the picks at a
    lower one cut at it. Picks whose centre falls outside the stored micrograph are dropped;
    with ``whole_boxes`` also those whose box reaches past its edge (RELION's extraction drops
    them anyway).
    """
    from hydrapicker.data import from_rescaled

    every_centre, every_score = decode_outputs(outputs, meta.anchor_stride)
    every_centre, every_score = every_centre.numpy().astype(np.float64), every_score.numpy().astype(np.float64)
    candidates = every_score >= threshold
    centres, scores = every_centre[candidates], every_score[candidates]
    keep = nms(centres, scores, meta.target_diameter_px, nms_iou)
    kept = centres[keep]
    if refine_radius > 0:
        kept = refine_centres(kept, every_centre, every_score, refine_radius * meta.target_diameter_px)
    xy = from_rescaled(kept, scale).reshape(-1, 2)
    box_size = meta.target_diameter_px / scale
    rows, cols = shape
    edge = box_size / 2 if whole_boxes else 0.0
    inside = (
        (xy[:, 0] - edge >= -0.5) & (xy[:, 0] + edge < cols - 0.5) & (xy[:, 1] - edge >= -0.5) & (xy[:, 1] + edge < rows - 0.5)
    )
    return Picks(name, xy[inside, 0], xy[inside, 1], scores[keep][inside], box_size=box_size, shape=(rows, cols))


def pick_micrograph(
    model: HydraPicker,
    meta: ModelMeta,
    image: np.ndarray,
    pixel_size: float | None,
    diameter_A: float | None = None,
    diameter_px: float | None = None,
    head: str = GENERIC,
    threshold: float = PICK_THRESHOLD,
    *,
    name: str = "",
    nms_iou: float = NMS_IOU,
    tile_size: int = PICK_TILE_SIZE,
    whole_boxes: bool = False,
    refine_radius: float = REFINE_RADIUS,
    correct_size: bool = True,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> Picks:
    """Pick the particles of one micrograph.

    Args:
        model, meta: from :func:`hydrapicker.train.load_checkpoint`.
        image: the micrograph as stored, ``[row, col]``.
        pixel_size: Å/px of ``image`` (only needed with ``diameter_A``).
        diameter_A / diameter_px: the particle diameter, in Å or in stored pixels (one of them).
        head: the head to pick with (``"generic"``: zero-shot).
        threshold: lowest score (probability) kept.
        name: the micrograph name the picks carry.
        tile_size: largest square (rescaled px) run at once; see :func:`head_outputs`.
        whole_boxes: drop picks whose box reaches past the micrograph's edge.
        refine_radius: see :func:`picks_from_outputs` (0: each pick stays on its anchor's guess).
        correct_size: with a model that has a size head and the generic head, correct the
            diameter given when the particles look another size (:func:`size_corrected_outputs`);
            False: use it as given.
        device, bf16: where and in what precision the network runs.

    Returns:
        Picks in the stored frame (x = column, y = row), descending score, box size = the
        particle diameter in stored pixels (as corrected); none outside the micrograph.
    """
    scale = picking_scale(meta, pixel_size, diameter_A, diameter_px)
    outputs, scale = size_corrected_outputs(
        model, meta, np.asarray(image), scale, head, name=name, passes=SIZE_PASSES if correct_size else 1,
        tile_size=tile_size, device=device, bf16=bf16,
    )  # fmt: skip
    return picks_from_outputs(
        outputs, meta, scale, (int(np.shape(image)[0]), int(np.shape(image)[1])), threshold, name=name, nms_iou=nms_iou,
        whole_boxes=whole_boxes, refine_radius=refine_radius,
    )


# --- the model a user picks with ------------------------------------------------------------


def pretrained_model_path() -> Path:
    """Where the shipped pretrained generic model lives (:data:`hydrapicker.defaults.PRETRAINED_MODEL`)."""
    return Path(str(resources.files("hydrapicker") / PRETRAINED_MODEL))


def load_picking_model(path: str | os.PathLike | None = None) -> tuple[HydraPicker, ModelMeta]:
    """The checkpoint at ``path``, or the shipped pretrained generic model when ``path`` is None."""
    from hydrapicker.train import load_checkpoint

    if path is None:
        path = pretrained_model_path()
        if not path.is_file():
            raise HydraPickerError(
                f"no --model given, and the shipped pretrained generic model ({path}) does not exist yet: "
                "train one with `hydrapicker train` and pass it with --model"
            )
    return load_checkpoint(path)


@dataclass(frozen=True)
class PickSettings:
    """How every micrograph of a run is picked (see :func:`pick_micrograph` for the fields)."""

    diameter_A: float | None = None
    diameter_px: float | None = None
    pixel_size: float | None = None
    head: str = GENERIC
    threshold: float = PICK_THRESHOLD
    nms_iou: float = NMS_IOU
    tile_size: int = PICK_TILE_SIZE
    whole_boxes: bool = False
    refine_radius: float = REFINE_RADIUS
    correct_size: bool = True
    device: str = "cpu"
    bf16: bool = False


@dataclass
class Prepared:
    """A micrograph read and prepared for the network (made in a reader thread)."""

    name: str
    path: Path
    data: np.ndarray  # as stored, for the overlay
    image: np.ndarray  # rescaled, normalised
    scale: float


def _evenly_spaced(paths: Sequence[Path], most: int) -> list[Path]:
    """At most ``most`` of ``paths``, spread evenly from the first to the last."""
    if len(paths) <= most:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, most).round().astype(int)]


class Picker:
    """Model + settings: :meth:`prepare` (thread-safe, NumPy) then :meth:`pick` (the network)."""

    def __init__(self, model: HydraPicker, meta: ModelMeta, settings: PickSettings) -> None:
        check_device(settings.device)
        keep_large_blocks()
        if not (0 <= settings.threshold <= 1):
            raise HydraPickerError(f"threshold must be a score between 0 and 1, got {settings.threshold}")
        if not settings.refine_radius >= 0:
            raise HydraPickerError(f"refine radius must be 0 (off) or a positive fraction of the box size, got {settings.refine_radius}")
        model.head(settings.head)
        # Check the numbers now, not once per micrograph (a stand-in pixel size when the files give it).
        picking_scale(meta, settings.pixel_size or 1.0, settings.diameter_A, settings.diameter_px)
        if settings.tile_size < 2 * tile_margin(model) + model.stride:
            raise HydraPickerError(f"tile size {settings.tile_size} px is too small (at least {2 * tile_margin(model) + model.stride})")
        self.model = model.to(settings.device).eval()
        self.meta = meta
        self.settings = settings
        #: The dataset's diameter correction, once :meth:`calibrate` has read it; until then each
        #: micrograph is corrected on its own (:func:`size_corrected_outputs`).
        self.size_estimate: SizeEstimate | None = None

    def check_paths(self, paths: Sequence[Path]) -> None:
        """Refuse up front what would fail on every file: a size in Å, no pixel size, files without a header."""
        if self.settings.diameter_A is not None and self.settings.pixel_size is None:
            for path in paths:
                if path.suffix.lower() not in (".mrc", ".mrcs"):
                    raise HydraPickerError(
                        f"{path}: a {path.suffix} file has no pixel size: give --pixel-size (Å/px) or --diameter-px"
                    )

    def _read(self, path: Path) -> tuple[Micrograph, float]:
        """One micrograph as stored and its scale at the diameter given."""
        s = self.settings
        micrograph = read_micrograph(path)
        pixel_size = s.pixel_size if s.pixel_size is not None else micrograph.pixel_size
        if s.diameter_A is not None and pixel_size is None:
            raise HydraPickerError(f"{path}: no pixel size in the file header: give --pixel-size (Å/px) or --diameter-px")
        return micrograph, picking_scale(self.meta, pixel_size, s.diameter_A, s.diameter_px)

    def prepare(self, path: Path) -> Prepared:
        """Read one micrograph and rescale + normalise it (at the calibrated diameter, if any); HydraPickerError names the file if it is unusable."""
        micrograph, scale = self._read(path)
        if self.size_estimate is not None:
            scale /= self.size_estimate.factor
        image = prepare_micrograph(micrograph.data, scale, self.meta.target_diameter_px, str(path))
        return Prepared(micrograph.name, path, micrograph.data, image, scale)

    def calibrate(self, paths: Sequence[Path], most: int | None = None) -> SizeEstimate | None:
        """Read the particle size once for the run, from up to ``most`` micrographs spread over ``paths``
        (:func:`estimate_diameter`; ``most`` defaults to ``SIZE_SAMPLE_MICROGRAPHS``); every
        micrograph is then picked at that one diameter.

        Returns None, and changes nothing, when the diameter is not corrected (``--fixed-diameter``,
        no size head, a dataset's own head), when already calibrated, or when no sampled
        micrograph can be read (those are reported when picked). The same ``paths`` give the
        same sample, so a rerun or another rank picks at the same diameter.
        """
        s = self.settings
        if self.size_estimate is not None or not s.correct_size or not corrects_size(self.model, s.head) or not paths:
            return None
        sample, names = [], []
        for path in _evenly_spaced(paths, SIZE_SAMPLE_MICROGRAPHS if most is None else most):
            try:
                micrograph, scale = self._read(path)
            except (HydraPickerError, OSError):
                continue
            sample.append((micrograph.data, scale))
            names.append(str(path))
        if not sample:
            return None
        self.size_estimate = estimate_diameter(
            self.model, self.meta, sample, s.head, names=names, tile_size=s.tile_size, device=s.device, bf16=s.bf16
        )
        return self.size_estimate

    def describe_size(self) -> str:
        """One line on the diameter the run picks at (after :meth:`calibrate`)."""
        estimate, s = self.size_estimate, self.settings
        if estimate is None:
            return ""
        value, unit = (s.diameter_A, "Å") if s.diameter_A is not None else (s.diameter_px, "px")
        given = f"{value:g} {unit}"
        if estimate.cells == 0:
            return f"particle diameter: {given} as given (the size head found no confident pick in {estimate.micrographs} micrograph(s))"
        if estimate.factor == 1.0:
            return f"particle diameter: {given} as given (the size head agrees, {estimate.micrographs} micrograph(s))"
        return (f"particle diameter: picking at {value * estimate.factor:.4g} {unit}, {estimate.factor:.2f}x the {given} given "
                f"(size head, {estimate.micrographs} micrograph(s)); --fixed-diameter picks at {given}")  # fmt: skip

    def candidates(self, prepared: Prepared) -> Picks:
        """Every pick of one prepared micrograph down to ``CANDIDATE_FLOOR`` (or the threshold, if lower), in its stored frame.

        NMS is greedy in descending score, so a pick survives it or not whatever the picks
        below it are: the picks at any threshold ``t`` above the floor are exactly
        ``candidates(...).above(t)``, and one network pass gives both.
        """
        s = self.settings
        per_micrograph = s.correct_size and self.size_estimate is None  # calibrated: prepared at the run's diameter
        outputs, scale = size_corrected_outputs(
            self.model, self.meta, prepared.data, prepared.scale, s.head, prepared=prepared.image, name=str(prepared.path),
            passes=SIZE_PASSES if per_micrograph else 1, tile_size=s.tile_size, device=s.device, bf16=s.bf16,
        )  # fmt: skip
        return picks_from_outputs(
            outputs, self.meta, scale, prepared.data.shape, min(CANDIDATE_FLOOR, s.threshold),
            name=prepared.name, nms_iou=s.nms_iou, whole_boxes=s.whole_boxes, refine_radius=s.refine_radius,
        )  # fmt: skip

    def pick(self, prepared: Prepared) -> Picks:
        """The picks of one prepared micrograph at the threshold, in its stored frame."""
        return self.candidates(prepared).above(self.settings.threshold)


# --- a folder of micrographs to files ---------------------------------------------------------


def expand_micrographs(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Micrograph files from files, folders (their micrograph files) and globs, in order, without repeats.

    Raises:
        HydraPickerError: a pattern that matches no micrograph, or two micrographs with the
            same stem (their output files would collide).
    """
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if Path(text).is_dir():
            matches = sorted(p for p in Path(text).iterdir() if p.is_file() and is_micrograph_path(p))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if is_micrograph_path(p))
        else:
            matches = [Path(text)]  # a missing file is reported with the others when read
            if not is_micrograph_path(text):
                raise HydraPickerError(f"{text}: not a micrograph file name (expected one of {', '.join(MICROGRAPH_SUFFIXES)})")
        if not matches:
            raise HydraPickerError(f"{text}: matches no micrograph files")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for path in unique:
        stem = micrograph_stem(path)
        if stem in stems:
            raise HydraPickerError(f"{stems[stem]} and {path} have the same name {stem!r}: their picks would overwrite each other")
        stems[stem] = path
    return unique


def output_paths(out_dir: str | os.PathLike, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    """Per-micrograph coordinate files: ``{format: OUT/<format>/<stem><suffix>}``; CSV always."""
    out_dir = Path(out_dir)
    return {fmt: out_dir / fmt / f"{stem}{COORDINATE_FORMATS[fmt]}" for fmt in dict.fromkeys([*formats, "csv"])}


def candidate_paths(out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """``OUT/candidates/<stem>.csv`` (every candidate, CSV) and ``<stem>.json`` (its box size and micrograph shape)."""
    folder = Path(out_dir) / "candidates"
    return folder / f"{stem}.csv", folder / f"{stem}.json"


def expected_outputs(
    out_dir: str | os.PathLike, stem: str, formats: Sequence[str], overlay_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Every file :func:`pick_files` writes for one micrograph: all there means it is done."""
    files = [*output_paths(out_dir, stem, formats).values(), *candidate_paths(out_dir, stem)]
    return files + ([Path(overlay_dir) / f"{stem}.png"] if overlay_dir is not None else [])


def check_formats(formats: Sequence[str]) -> list[str]:
    """The format names, checked; a user error naming an unknown one."""
    for fmt in formats:
        if fmt not in COORDINATE_FORMATS:
            raise HydraPickerError(f"unknown coordinate format {fmt!r} (choose from {', '.join(COORDINATE_FORMATS)})")
    if not formats:
        raise HydraPickerError("no coordinate format asked for")
    return list(dict.fromkeys(formats))


@dataclass
class PickReport:
    """What a run of :func:`pick_files` did."""

    picked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> one-line reason naming the micrograph once
    n_picks: int = 0
    seconds: float = 0.0


def pick_files(
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    picker: Picker,
    formats: Sequence[str] = tuple(COORDINATE_FORMATS),
    *,
    overlay_dir: str | os.PathLike | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    merge: bool = True,
) -> PickReport:
    """Pick every micrograph of ``paths`` into ``out_dir``; returns what happened.

    Micrographs whose output files (every format in ``formats``, the CSV, and the overlay
    when asked for) all exist are skipped unless ``overwrite``: every file is written
    atomically, so one that exists is complete. A micrograph that cannot be read or
    prepared is reported through ``log`` (one line) and skipped. ``workers`` threads read
    and prepare micrographs ahead of the network; one thread writes. At the end
    ``out_dir/picks.csv`` is rebuilt from every per-micrograph CSV in ``out_dir/csv``.
    Before the first micrograph, a model that corrects the diameter reads the particle size
    once from a sample of ``paths`` (:meth:`Picker.calibrate`) and says what it found; every
    micrograph is then picked at that diameter.
    ``stop`` (asked before each micrograph; ``pick --watch`` sets it on Ctrl-C) ends the run
    early, after the micrographs in flight are written. ``merge=False`` leaves ``picks.csv``
    alone (one rank's share under torchrun: :func:`hydrapicker.distributed.pick_files_sharded`).
    """
    from tqdm import tqdm

    formats = check_formats(formats)
    if workers < 1:
        raise HydraPickerError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    overlay = Path(overlay_dir) if overlay_dir is not None else None
    say = log or (lambda line: tqdm.write(line, file=sys.stderr))
    report = PickReport()
    start = time.perf_counter()

    todo = []
    for path in paths:
        if not overwrite and all(p.is_file() for p in expected_outputs(out_dir, micrograph_stem(path), formats, overlay)):
            report.skipped.append(micrograph_stem(path))
        else:
            todo.append(path)

    if todo and picker.calibrate(paths) is not None:
        say(picker.describe_size())

    def write(picks: Picks, candidates: Picks, prepared: Prepared) -> None:
        # Candidates first: a micrograph whose outputs exist then always has its candidates too.
        table, sidecar = candidate_paths(out_dir, picks.micrograph)
        atomic_write_text(sidecar, json.dumps({"micrograph": picks.micrograph, "box_size": picks.box_size, "shape": picks.shape}) + "\n")
        write_picks(table, candidates, "csv")
        for fmt, target in output_paths(out_dir, picks.micrograph, formats).items():
            write_picks(target, picks, fmt)
        if overlay is not None:
            write_overlay(overlay / f"{picks.micrograph}.png", prepared.data, picks)

    with ThreadPoolExecutor(workers, thread_name_prefix="pick-read") as readers, \
            ThreadPoolExecutor(1, thread_name_prefix="pick-write") as writer:  # fmt: skip
        ahead = workers + 1  # micrographs in flight: enough to keep the network fed, memory bounded
        reads = {i: readers.submit(picker.prepare, todo[i]) for i in range(min(ahead, len(todo)))}
        writes = []
        bar = tqdm(total=len(todo), unit="mic", desc="picking", disable=None if progress is None else not progress)
        for i, path in enumerate(todo):
            if stop is not None and stop():
                for future in reads.values():
                    future.cancel()
                break
            if i + ahead < len(todo):
                reads[i + ahead] = readers.submit(picker.prepare, todo[i + ahead])
            try:
                prepared = reads.pop(i).result()
                candidates = picker.candidates(prepared)
                picks = candidates.above(picker.settings.threshold)
            except (HydraPickerError, OSError) as exc:
                report.failed[str(path)] = _naming(path, exc)
                say(f"skipped {report.failed[str(path)]}")
                bar.update(1)
                continue
            writes.append((path, picks, writer.submit(write, picks, candidates, prepared)))
            del prepared
            bar.update(1)
            # Surface write errors as they come; wait when writing falls behind (memory stays bounded).
            while writes and (writes[0][2].done() or len(writes) > ahead):
                _finish_write(writes.pop(0), report, say)
        for item in writes:
            _finish_write(item, report, say)
        bar.close()
    if merge:
        rebuild_picks_csv(out_dir)
    report.seconds = time.perf_counter() - start
    return report


def _naming(path: Path, exc: Exception) -> str:
    """The error as one line that names the micrograph once (our errors usually start with it)."""
    return str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"


def _finish_write(item: tuple[Path, Picks, Future], report: PickReport, say: Callable[[str], None]) -> None:
    path, picks, future = item
    try:
        future.result()
    except HydraPickerError as exc:
        report.failed[str(path)] = _naming(path, exc)
        say(f"failed {report.failed[str(path)]}")
        return
    report.picked.append(picks.micrograph)
    report.n_picks += len(picks)


def rebuild_picks_csv(out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/picks.csv`` (micrograph,x,y,score) from every ``out_dir/csv/*.csv``, atomically.

    The per-micrograph files are ours, with one header, so their rows are joined as text:
    parsing them cost ~10 ms per file, which ``pick --watch`` paid after every batch (20 s at
    2,000 micrographs). Hidden files are another writer's temporary files, not yet complete.
    """
    out_dir = Path(out_dir)
    target = out_dir / "picks.csv"
    paths = sorted(p for p in (out_dir / "csv").glob("*.csv") if not p.name.startswith("."))
    header = "micrograph,x,y,score\n"
    texts = [path.read_text(encoding="utf-8") for path in paths]
    if all(text.startswith(header) and text.endswith("\n") for text in texts):
        atomic_write_text(target, header + "".join(text[len(header) :] for text in texts))
    else:  # written by something else: parse and write anew
        write_picks(target, [p for path in paths for p in read_picks(path, "csv").values()], "csv")
    return target


# --- overlays ---------------------------------------------------------------------------------

#: Overlays are at most this many pixels on their long side (micrographs are block-averaged).
OVERLAY_MAX_SIZE = 1024

#: The colour of the boxes on an overlay (pure green, absent from a grey micrograph).
OVERLAY_COLOUR = (0, 255, 0)


def overlay_image(data: np.ndarray, picks: Picks, max_size: int = OVERLAY_MAX_SIZE):
    """An RGB PIL image: the micrograph contrast-stretched (0.5-99.5 percentiles), reduced by a whole
    factor to at most ``max_size`` px, with each pick's box drawn as a green square outline."""
    from PIL import Image, ImageDraw

    data = np.asarray(data, dtype=np.float32)
    factor = max(1, -(-max(data.shape) // max_size))
    rows, cols = data.shape[0] // factor, data.shape[1] // factor
    small = data[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    low, high = np.percentile(small, (0.5, 99.5))
    grey = np.clip((small - low) / max(high - low, 1e-12), 0, 1)
    image = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    h = (picks.box_size or 10.0) / factor / 2
    # Stored pixel x covers [x - 0.5, x + 0.5); overlay pixel u covers stored [u f - 0.5, (u + 1) f - 0.5).
    for x, y in zip((picks.x + 0.5) / factor - 0.5, (picks.y + 0.5) / factor - 0.5):
        draw.rectangle([round(x - h), round(y - h), round(x + h), round(y + h)], outline=OVERLAY_COLOUR, width=1)
    return image


def write_overlay(path: str | os.PathLike, data: np.ndarray, picks: Picks, max_size: int = OVERLAY_MAX_SIZE) -> None:
    """Write :func:`overlay_image` as a PNG, atomically."""
    image = overlay_image(data, picks, max_size)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
