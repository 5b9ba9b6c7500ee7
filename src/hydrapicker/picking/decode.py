"""From a head's outputs to picks: threshold, duplicate suppression, centre refinement, the stored frame."""

from __future__ import annotations

import numpy as np
import torch

from hydrapicker.boxes import decode_outputs, nms, refine_centres
from hydrapicker.checkpoint import ModelMeta
from hydrapicker.defaults import NMS_IOU, PICK_THRESHOLD, REFINE_RADIUS, WHOLE_BOXES
from hydrapicker.io.picks import Picks, whole_pixel_box
from hydrapicker.preprocess import from_rescaled

__all__ = ["picks_from_outputs"]


def picks_from_outputs(
    outputs: torch.Tensor,
    meta: ModelMeta,
    scale: float,
    shape: tuple[int, int],
    threshold: float = PICK_THRESHOLD,
    *,
    name: str = "",
    nms_iou: float = NMS_IOU,
    whole_boxes: bool = WHOLE_BOXES,
    refine_radius: float = REFINE_RADIUS,
) -> Picks:
    """Decode a head output ``[3, h, w]``: threshold, NMS at the box size, refine, map back to the stored frame.

    Each pick moves to the consensus of the centres predicted by every anchor within
    ``refine_radius`` box sizes of it (:func:`hydrapicker.boxes.refine_centres`; 0: off). That
    uses every anchor, whatever ``threshold`` is, so the picks at a threshold are the picks at a
    lower one cut at it. Picks whose centre falls outside the stored micrograph are dropped;
    with ``whole_boxes`` (the default) also those whose box, as any format writes it (BOX's whole
    pixels too), reaches past its edge: RELION's extraction drops them anyway.
    """
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
    edge = max(box_size, whole_pixel_box(box_size)) / 2 if whole_boxes else 0.0  # every format's box inside
    inside = (
        (xy[:, 0] - edge >= -0.5)
        & (xy[:, 0] + edge < cols - 0.5)
        & (xy[:, 1] - edge >= -0.5)
        & (xy[:, 1] + edge < rows - 0.5)
    )
    return Picks(name, xy[inside, 0], xy[inside, 1], scores[keep][inside], box_size=box_size, shape=(rows, cols))
