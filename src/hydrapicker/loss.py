"""The HydraPicker loss (paper, section 3.2): ``L = L_loc + lambda_cls L_cls + lambda_bias L_bias``.

- ``L_loc``: L1 distance between ``anchor + predicted offset`` and the matched particle, over
  the matched pairs of :func:`hydrapicker.boxes.match_anchors`, in units of the anchor stride
  (the paper's pixel L1 divided by the constant stride, see :mod:`hydrapicker.boxes`).
- ``L_cls``: sigmoid focal loss over every anchor (gamma 2, class-balance alpha).
- Both are summed over the batch and divided by the number of matched anchors (at least 1), as
  RetinaNet does, so their scale does not depend on how many particles a crop holds.
- ``L_bias = (1/N) sum_k ||W_k - W_generic||^2`` over the N dataset heads, summed over every
  parameter of a head. It is the only term through which the generic head learns.

Loc and cls come from the output of the head assigned to the batch's dataset only, so the
generic head receives no gradient from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hydrapicker.boxes import IGNORE, anchor_centres, encode_offsets, match_anchors
from hydrapicker.defaults import ANCHOR_STRIDE, FOCAL_ALPHA, FOCAL_GAMMA, MATCH_IOU, PARTICLE_DIAMETER_PX
from hydrapicker.model import HydraPicker

__all__ = ["DetectionLoss", "detection_loss", "focal_loss", "head_bias_loss"]


@dataclass(frozen=True)
class DetectionLoss:
    """The data terms of one batch: ``loc`` and ``cls`` (scalar tensors) and the matched-anchor count."""

    loc: torch.Tensor
    cls: torch.Tensor
    matched: int


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Summed sigmoid focal loss ``-alpha_c (1 - p_c)^gamma log p_c``; ``targets`` are 0/1 floats."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_correct = p * targets + (1 - p) * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return (weight * (1 - p_correct) ** gamma * ce).sum()


def detection_loss(
    outputs: torch.Tensor,
    centres: Sequence[torch.Tensor],
    *,
    box_size: float = PARTICLE_DIAMETER_PX,
    stride: int = ANCHOR_STRIDE,
    iou_threshold: float = MATCH_IOU,
    ignore_iou: float | None = None,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> DetectionLoss:
    """Localisation and focal classification loss of one head's output.

    Args:
        outputs: ``[B, 3, h, w]`` head output ``(dx, dy, logit)``.
        centres: per image, float ``[n_i, 2]`` particle centres (x, y) in input pixels.
        ignore_iou: unmatched anchors overlapping a particle this much are left out of the
            classification loss (``None``: every unmatched anchor is background, as the paper).
    """
    b, _, h, w = outputs.shape
    if len(centres) != b:
        raise ValueError(f"{len(centres)} centre lists for a batch of {b}")
    anchors = anchor_centres(h, w, stride).to(outputs.device)
    flat = outputs.reshape(b, 3, h * w)
    loc = outputs.new_zeros(())
    cls = outputs.new_zeros(())
    matched_total = 0
    for k in range(b):
        particles = centres[k].to(device=outputs.device, dtype=torch.float32).reshape(-1, 2)
        matched = match_anchors(anchors, particles, box_size, iou_threshold, ignore_iou).to(outputs.device)
        positive = matched >= 0
        n_pos = int(positive.sum())
        if n_pos:
            target = encode_offsets(anchors[positive], particles[matched[positive]], stride)
            loc = loc + (flat[k, :2, positive].T - target).abs().sum()
        scored = matched != IGNORE
        cls = cls + focal_loss(flat[k, 2, scored], positive[scored].to(outputs.dtype), alpha, gamma)
        matched_total += n_pos
    norm = max(matched_total, 1)
    return DetectionLoss(loc=loc / norm, cls=cls / norm, matched=matched_total)


def head_bias_loss(model: HydraPicker) -> torch.Tensor:
    """``(1/N) sum_k ||W_k - W_generic||^2`` over the model's N dataset heads (0 with none)."""
    names = model.head_names
    generic = dict(model.generic.named_parameters())
    total = next(iter(generic.values())).new_zeros(())
    for name in names:
        for pname, param in model.heads[name].named_parameters():
            total = total + (param - generic[pname]).pow(2).sum()
    return total / max(len(names), 1)
