"""Box logic apart from the network: anchors, IoU of equal squares, matching, offset coding, NMS,
centre refinement.

Conventions, stated once:

- Coordinates are ``(x, y)`` = (column, row) in pixels of the (rescaled) model input, pixel
  centres at integers, so pixel ``(0, 0)`` covers ``[-0.5, 0.5)``.
- Every box is a square of one edge ``box_size`` centred on its ``(x, y)``.
- Anchor ``(i, j)`` (row ``i``, column ``j`` of a head's output grid) sits at the centre of its
  ``stride x stride`` cell: ``(j * stride + (stride - 1) / 2, i * stride + (stride - 1) / 2)``,
  i.e. ``(16 j + 7.5, 16 i + 7.5)``. Anchors are listed row-major, the order of
  ``output[:, k].flatten()`` for a head output ``[3, h, w]``.
- Offsets are coded in units of the stride: ``delta = (particle - anchor) / stride``. A matched
  anchor is at most about half a cell from its particle, so targets lie in about [-0.6, 0.6]
  whatever the stride, which suits a conv layer initialised near zero.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from hydrapicker.defaults import ANCHOR_STRIDE, MATCH_IOU

__all__ = [
    "anchor_centres",
    "offset_iou",
    "square_iou",
    "match_anchors",
    "IGNORE",
    "encode_offsets",
    "decode_outputs",
    "nms",
    "refine_centres",
]


def anchor_centres(grid_h: int, grid_w: int, stride: int = ANCHOR_STRIDE) -> torch.Tensor:
    """Anchor centres of a ``grid_h x grid_w`` output grid: float32 ``[grid_h * grid_w, 2]`` (x, y)."""
    half = (stride - 1) / 2
    ys = torch.arange(grid_h, dtype=torch.float32) * stride + half
    xs = torch.arange(grid_w, dtype=torch.float32) * stride + half
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


def square_iou(a: torch.Tensor, b: torch.Tensor, box_size: float) -> torch.Tensor:
    """IoU of equal squares of edge ``box_size`` centred at ``a`` ``[A,2]`` and ``b`` ``[P,2]``: ``[A,P]``
    (torch, for matching anchors in the loss; :func:`offset_iou` is the same on NumPy offsets)."""
    d = (a[:, None, :] - b[None, :, :]).abs()
    overlap = (box_size - d).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    return inter / (2 * box_size**2 - inter)


def offset_iou(dx: np.ndarray, dy: np.ndarray, box_size: float) -> np.ndarray:
    """IoU of two equal squares of edge ``box_size`` whose centres differ by ``(dx, dy)`` (NumPy; any shape)."""
    overlap = np.clip(box_size - np.abs(dx), 0, None) * np.clip(box_size - np.abs(dy), 0, None)
    return overlap / (2 * box_size * box_size - overlap)


#: :func:`match_anchors` label of an anchor that is neither matched nor background.
IGNORE = -2


def match_anchors(
    anchors: torch.Tensor,
    particles: torch.Tensor,
    box_size: float,
    iou_threshold: float = MATCH_IOU,
    ignore_iou: float | None = None,
) -> torch.Tensor:
    """Assign particles to anchors: long ``[A]``, the particle index of each anchor, -1 (background)
    or ``IGNORE`` (-2).

    An anchor takes the particle it overlaps most when that IoU exceeds ``iou_threshold``
    (paper, eq. 2). Then, as SSD does, every particle also takes its best anchor whatever the
    IoU, so no particle is left without a positive anchor: with a 40 px box and a 16 px grid,
    a particle near a cell corner overlaps no anchor by more than 0.47. With ``ignore_iou``, an
    unmatched anchor overlapping a particle by at least that much is ``IGNORE`` rather than
    background (RetinaNet's band): its features are nearly those of a matched neighbour.
    """
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if particles.shape[0] == 0 or anchors.shape[0] == 0:
        return matched
    iou = square_iou(anchors, particles, box_size)
    best_iou, best_particle = iou.max(dim=1)
    matched = torch.where(best_iou > iou_threshold, best_particle, matched)
    if ignore_iou is not None:
        matched[(matched < 0) & (best_iou >= ignore_iou)] = IGNORE
    best_anchor = iou.argmax(dim=0)
    has_overlap = iou[best_anchor, torch.arange(particles.shape[0], device=anchors.device)] > 0
    matched[best_anchor[has_overlap]] = torch.nonzero(has_overlap).reshape(-1)
    return matched


def encode_offsets(anchors: torch.Tensor, particles: torch.Tensor, stride: int = ANCHOR_STRIDE) -> torch.Tensor:
    """Offset targets ``(particle - anchor) / stride`` for matched pairs ``[M,2]`` -> ``[M,2]``."""
    return (particles - anchors) / stride


def decode_outputs(outputs: torch.Tensor, stride: int = ANCHOR_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """A head output ``[3, h, w]`` -> centres ``[h*w, 2]`` (x, y) in input pixels and scores ``[h*w]`` in (0, 1)."""
    if outputs.ndim != 3 or outputs.shape[0] != 3:
        raise ValueError(f"expected a head output [3, h, w], got {tuple(outputs.shape)}")
    h, w = outputs.shape[-2:]
    anchors = anchor_centres(h, w, stride).to(outputs.device)
    flat = outputs.reshape(3, h * w)
    centres = anchors + stride * flat[:2].T
    return centres, torch.sigmoid(flat[2])


def nms(xy: np.ndarray, score: np.ndarray, box_size: float, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of equal squares; indices kept, in descending score.

    A box is dropped when a higher-scored kept box overlaps it with IoU > ``iou_threshold``.
    Candidate pairs come from a KD-tree query in the Chebyshev metric: two equal squares can
    only exceed IoU t when both centre offsets are below ``box_size * (1 - t) / (1 + t)``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    order = np.argsort(-score, kind="stable")
    if len(order) < 2:
        return order
    xy = xy[order]
    radius = box_size * (1 - iou_threshold) / (1 + iou_threshold)
    pairs = cKDTree(xy).query_pairs(radius, p=np.inf, output_type="ndarray")
    if len(pairs):
        d = xy[pairs[:, 0]] - xy[pairs[:, 1]]
        pairs = pairs[offset_iou(d[:, 0], d[:, 1], box_size) > iou_threshold]
    if len(pairs) == 0:
        return order
    # Each pair (i < j) in score order: i can suppress j. Walk boxes in score order.
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    starts = np.searchsorted(pairs[:, 0], np.arange(len(xy) + 1))
    suppressed = np.zeros(len(xy), dtype=bool)
    for i in np.unique(pairs[:, 0]):
        if not suppressed[i]:
            suppressed[pairs[starts[i] : starts[i + 1], 1]] = True
    return order[~suppressed]


def refine_centres(
    picks: np.ndarray, xy: np.ndarray, score: np.ndarray, radius: float, power: float = 2.0
) -> np.ndarray:
    """Move each pick to the consensus of every anchor's predicted centre within ``radius`` of it.

    Several anchors see one particle and each regresses its centre; NMS keeps one of them, whose
    own guess is noisy when the particle looks larger than the size the model was trained on. The
    mean of the neighbouring predictions weighted by ``score ** power`` is a steadier estimate
    (benchmarks/scale_search.md: +0.08 mean zero-shot AP at IoU 0.6 on simulated validation micrographs).

    Args:
        picks: ``[n, 2]`` kept centres (x, y).
        xy, score: every anchor's predicted centre ``[m, 2]`` and score ``[m]`` (before NMS).
        radius: neighbourhood radius, in the units of ``xy``.
    """
    picks = np.asarray(picks, dtype=np.float64).reshape(-1, 2)
    if len(picks) == 0 or len(xy) == 0:
        return picks.copy()
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    weight = np.asarray(score, dtype=np.float64).reshape(-1) ** power
    near = cKDTree(picks).sparse_distance_matrix(cKDTree(xy), radius, output_type="ndarray")
    pick, anchor = near["i"], near["j"]
    total = np.bincount(pick, weight[anchor], minlength=len(picks))
    out = picks.copy()
    moved = total > 0
    for axis in (0, 1):
        out[moved, axis] = (
            np.bincount(pick, weight[anchor] * xy[anchor, axis], minlength=len(picks))[moved] / total[moved]
        )
    return out
