"""The HydraPicker loss (paper, section 3.2): ``L = L_loc + lambda_cls L_cls + lambda_bias L_bias``.

- ``L_loc``: L1 distance between ``anchor + predicted offset`` and the matched particle, over
  the matched pairs of :func:`hydrapicker.boxes.match_anchors`, in units of the anchor stride
  (the paper's pixel L1 divided by the constant stride, see :mod:`hydrapicker.boxes`).
- ``L_cls``: sigmoid focal loss over every anchor (gamma 2, class-balance alpha).
- Both are summed over the batch and divided by the number of matched anchors (at least 1), as
  RetinaNet does, so their scale does not depend on how many particles a crop holds.
- ``L_bias = (1/N) sum_k ||W_k - W_generic||^2`` over the N dataset heads, summed over every
  parameter of a head. It is the only term through which the generic head learns.
- ``L_size`` (only for a model with a size head, not in the paper): L1 distance between the
  size head's mean log apparent size over the cells that hold particles and the truth, per image
  (:func:`size_loss`).

Loc and cls come from the output of the head assigned to the batch's dataset only, so the
generic head receives no gradient from them.

Partial labels (few-shot, :func:`pu_focal_loss`): when a user labels 50 of 600 particles, an
anchor that matches no label is *unlabelled*, not background. ``detection_loss`` then takes the
expected number of particles per image and scores the anchors with a non-negative
positive-unlabelled risk (Kiryo et al. 2017) instead of calling every unlabelled anchor
background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hydrapicker.boxes import IGNORE, anchor_centres, encode_offsets, match_anchors
from hydrapicker.defaults import ANCHOR_STRIDE, FOCAL_ALPHA, FOCAL_GAMMA, MATCH_IOU, PARTICLE_DIAMETER_PX
from hydrapicker.model import SIZE_STRIDE, HydraPicker

__all__ = [
    "distillation_loss",
    "DetectionLoss",
    "detection_loss",
    "focal_loss",
    "head_bias_loss",
    "pu_focal_loss",
    "size_loss",
]


@dataclass(frozen=True)
class DetectionLoss:
    """The data terms of one batch: ``loc`` and ``cls`` (scalar tensors) and the matched-anchor count."""

    loc: torch.Tensor
    cls: torch.Tensor
    matched: int


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Summed sigmoid focal loss ``-alpha_c (1 - p_c)^gamma log p_c``; ``targets`` are 0/1 floats."""
    return _focal_terms(logits, targets, alpha, gamma).sum()


def pu_focal_loss(
    logits: torch.Tensor,
    labelled: torch.Tensor,
    hidden: float,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Summed focal loss when the unlabelled anchors hide about ``hidden`` particle anchors.

    The non-negative PU risk of Kiryo et al. (2017), in sums: with ``l+``/``l-`` the focal loss
    of an anchor scored as particle/background, P the labelled anchors and U the others,

        ``sum_P l+  +  hidden * mean_P l+  +  max(0, sum_U l-  -  hidden * mean_P l-)``.

    The hidden particles are assumed to look like the labelled ones (labels a random sample
    of the particles), so their share of the background term, which plain focal loss pays to
    push them down, is estimated from the labelled anchors and taken off, and their share of
    the particle term is added. ``hidden = 0`` gives exactly the plain focal loss. The ``max``
    keeps the background estimate from going negative when the head scores its labelled
    particles above the hidden ones (overfitting to the labels). With no labelled anchor
    there is nothing to say what a particle looks like: the loss is 0 unless ``hidden`` is 0.

    Args:
        logits: ``[N]`` particle logits of the scored anchors.
        labelled: bool ``[N]``, True for anchors matched to a labelled particle.
        hidden: expected particle anchors among the unlabelled ones (>= 0).
    """
    labelled = labelled.bool()
    ones, zeros = torch.ones_like(logits), torch.zeros_like(logits)
    as_particle = _focal_terms(logits, ones, alpha, gamma)
    as_background = _focal_terms(logits, zeros, alpha, gamma)
    n_labelled = int(labelled.sum())
    background = as_background[~labelled].sum()
    if hidden <= 0:
        loss = as_particle[labelled].sum() + background
    elif n_labelled == 0:
        loss = logits.sum() * 0.0
    else:
        positive = as_particle[labelled].sum() * (1.0 + hidden / n_labelled)
        loss = positive + torch.clamp(background - hidden * as_background[labelled].mean(), min=0.0)
    return loss


def _focal_terms(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Per-anchor sigmoid focal loss ``-alpha_c (1 - p_c)^gamma log p_c`` (``targets`` 0/1 floats)."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_correct = p * targets + (1 - p) * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return weight * (1 - p_correct) ** gamma * ce


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
    expected_particles: Sequence[float] | None = None,
) -> DetectionLoss:
    """Localisation and focal classification loss of one head's output.

    Args:
        outputs: ``[B, 3, h, w]`` head output ``(dx, dy, logit)``.
        centres: per image, float ``[n_i, 2]`` particle centres (x, y) in input pixels.
        ignore_iou: unmatched anchors overlapping a particle this much are left out of the
            classification loss (``None``: every unmatched anchor is background, as the paper).
        expected_particles: per image, how many particles it holds, labelled or not (partial
            labels). The classification term is then :func:`pu_focal_loss`, with the hidden
            particle anchors of an image estimated as ``max(0, expected * r - matched)``
            (``r``: matched anchors per labelled particle, of the image, or of the batch when
            the image has no label), and normalised by matched + hidden anchors. ``None``:
            the labels are complete and every unmatched anchor is background.
    """
    b, _, h, w = outputs.shape
    if len(centres) != b:
        raise ValueError(f"{len(centres)} centre lists for a batch of {b}")
    anchors = anchor_centres(h, w, stride).to(outputs.device)
    flat = outputs.reshape(b, 3, h * w)
    loc = outputs.new_zeros(())
    cls = outputs.new_zeros(())
    matched_total = 0
    pu_logits, pu_labelled, pu_counts = [], [], []  # partial labels: pooled over the batch
    for k in range(b):
        particles = centres[k].to(device=outputs.device, dtype=torch.float32).reshape(-1, 2)
        matched = match_anchors(anchors, particles, box_size, iou_threshold, ignore_iou).to(outputs.device)
        positive = matched >= 0
        n_pos = int(positive.sum())
        if n_pos:
            target = encode_offsets(anchors[positive], particles[matched[positive]], stride)
            loc = loc + (flat[k, :2, positive].T - target).abs().sum()
        scored = matched != IGNORE
        if expected_particles is None:
            cls = cls + focal_loss(flat[k, 2, scored], positive[scored].to(outputs.dtype), alpha, gamma)
        else:
            pu_logits.append(flat[k, 2, scored])
            pu_labelled.append(positive[scored])
            pu_counts.append((n_pos, particles.shape[0]))
        matched_total += n_pos
    norm = max(matched_total, 1)
    if expected_particles is None:
        return DetectionLoss(loc=loc / norm, cls=cls / norm, matched=matched_total)
    if len(expected_particles) != b:
        raise ValueError(f"{len(expected_particles)} expected particle counts for a batch of {b}")
    labelled_particles = sum(n for _, n in pu_counts)
    batch_ratio = matched_total / labelled_particles if labelled_particles else 1.0
    hidden = sum(
        max(0.0, float(expected) * (n_pos / n if n else batch_ratio) - n_pos)
        for expected, (n_pos, n) in zip(expected_particles, pu_counts)
    )
    cls = pu_focal_loss(torch.cat(pu_logits), torch.cat(pu_labelled), hidden, alpha, gamma)
    return DetectionLoss(loc=loc / norm, cls=cls / max(matched_total + hidden, 1.0), matched=matched_total)


def size_loss(sizes: torch.Tensor, centres: Sequence[torch.Tensor], apparent: torch.Tensor) -> torch.Tensor:
    """L1 distance between the size head's mean over the cells holding a particle and ``log(apparent)``, mean over images.

    ``sizes``: the size head's ``[B, 1, h, w]``; ``apparent`` ``[B]``: how large each image's
    particles look relative to the trained diameter (the scale jitter of its crop); ``centres``
    as in :func:`detection_loss`. The mean over an image's particle cells (``SIZE_STRIDE`` px
    squares with a particle centre) is what is scored, not each cell: one cell sees a particle
    or two in noise, and an L1 fit per cell shrinks every answer towards the middle of the
    jitter range; picking reads the mean over many cells, and that is what this calibrates.
    0 (with a gradient of 0) when no image has a particle.
    """
    b, _, h, w = sizes.shape
    flat = sizes.reshape(b, h * w)
    total, count = sizes.new_zeros(()), 0
    for k in range(b):
        xy = centres[k].to(device=sizes.device, dtype=torch.float32).reshape(-1, 2)
        cells = torch.floor((xy + 0.5) / SIZE_STRIDE).long()
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
        index = torch.unique(cells[inside, 1] * w + cells[inside, 0])
        if len(index):
            total = total + (flat[k, index].mean() - torch.log(apparent[k].to(sizes))).abs()
            count += 1
    return total / max(count, 1)


def head_bias_loss(model: HydraPicker) -> torch.Tensor:
    """``(1/N) sum_k ||W_k - W_generic||^2`` over the model's N dataset heads (0 with none)."""
    names = model.head_names
    generic = dict(model.generic.named_parameters())
    total = next(iter(generic.values())).new_zeros(())
    for name in names:
        for pname, param in model.heads[name].named_parameters():
            total = total + (param - generic[pname]).pow(2).sum()
    return total / max(len(names), 1)


def distillation_loss(outputs: torch.Tensor, teacher: torch.Tensor, loc_weight: float = 1.0) -> torch.Tensor:
    """How far a head's outputs ``[B, 3, h, w]`` are from the teacher's ``[B, 3, h, w]`` (both ``(dx, dy, logit)``).

    Score term: binary cross-entropy of each anchor's logit against the teacher's probability
    (a soft target), averaged over the anchors; smallest, for each anchor, where the two
    probabilities agree. Offset term: L1 distance to the teacher's offsets (in strides), weighted
    by the teacher's probability (offsets mean nothing where there is no particle), over the
    sum of those weights.
    """
    if outputs.shape != teacher.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and teacher {tuple(teacher.shape)} differ in shape")
    target = torch.sigmoid(teacher[:, 2])
    score = F.binary_cross_entropy_with_logits(outputs[:, 2], target)
    loc = (target * (outputs[:, :2] - teacher[:, :2]).abs().sum(1)).sum() / target.sum().clamp(min=1.0)
    return score + loc_weight * loc
