"""Scoring picks against true particles: matching, AP, PR and ROC curves, AUROC, best F1.

Definitions (the paper, section 4):

- A pick, and a true particle, is a square box of ``box_size`` px centred at (x, y).
- Picks are taken in descending score over the whole set (all micrographs pooled; tied
  scores keep their input order). A pick is a true positive (TP) when it overlaps a
  not-yet-matched true box of its own micrograph with IoU >= ``iou_threshold``, taking the
  one of highest IoU; otherwise it is a false positive (FP). Matches never cross
  micrographs, so the greedy pass runs on candidate pairs found with a k-d tree.
- Operating points are the distinct pick scores: a threshold t keeps the picks with score
  >= t, so tied picks enter together and no result depends on the order of ties.
- **AP**: all-point interpolated area under the precision-recall curve (precision made
  monotone from the right, as PASCAL VOC 2010+ and COCO); recall's denominator is every
  true particle.
- **AUROC**: TP picks are positives, FP picks negatives, and every true particle no pick
  matched is a positive scored -inf; equal to the Mann-Whitney U statistic with ties
  counted 1/2.
- **Best F1**: the highest F1 = 2 TP / (picks kept + true particles) over the operating
  points, and the score threshold that gives it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from hydrapicker.boxes import offset_iou
from hydrapicker.defaults import MATCH_IOU
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import save_figure
from hydrapicker.io.picks import Picks
from hydrapicker.io.run_folder import json_float

__all__ = ["Evaluation", "MicrographScore", "evaluate", "format_table", "match_picks", "write_curves"]


@dataclass(frozen=True)
class MicrographScore:
    """The scalar results for one micrograph, or for a pooled set.

    ``ap``, ``auroc`` and ``best_threshold`` are NaN where undefined (no true particle, no
    negative, or no pick that scores F1 > 0).
    """

    ap: float
    auroc: float
    best_f1: float
    best_threshold: float
    n_picks: int
    n_true: int
    tp: int

    def to_json(self) -> dict[str, float | int | None]:
        """A JSON-ready dict; NaN becomes ``None``."""
        return {
            "ap": json_float(self.ap),
            "auroc": json_float(self.auroc),
            "best_f1": json_float(self.best_f1),
            "best_threshold": json_float(self.best_threshold),
            "n_picks": self.n_picks,
            "n_true": self.n_true,
            "tp": self.tp,
        }


@dataclass(frozen=True)
class Evaluation(MicrographScore):
    """Pooled results, per-micrograph results, and the curves.

    Curve arrays (float64, one entry per operating point, descending threshold):
        thresholds: the distinct pick scores.
        precision, recall: at each threshold (picks with score >= threshold kept).
        fpr, tpr: the ROC curve, from (0, 0) to (1, 1) when both classes exist; the
            unmatched true particles join at score -inf, so it has one entry more than
            ``thresholds`` (the origin), two when some particle is unmatched and no pick
            scores -inf.
    """

    per_micrograph: dict[str, MicrographScore] = field(default_factory=dict)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    recall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    box_size: float = float("nan")
    iou_threshold: float = MATCH_IOU

    def to_json(self) -> dict[str, object]:
        """``{"ap", "auroc", "best_f1", "best_threshold", "n_picks", "n_true", "tp", "per_micrograph"}``."""
        out: dict[str, object] = dict(super().to_json())
        out["per_micrograph"] = {name: score.to_json() for name, score in self.per_micrograph.items()}
        return out


def _check(box_size: float, iou_threshold: float) -> None:
    if not (np.isfinite(box_size) and box_size > 0):
        raise HydraPickerError(f"box size must be a positive number of pixels, got {box_size}")
    if not (0 < iou_threshold <= 1):
        raise HydraPickerError(f"IoU threshold must be in (0, 1], got {iou_threshold}")


def _check_finite(role: str, name: str, picks: Picks) -> None:
    for label, values in (("x", picks.x), ("y", picks.y)):
        if not np.isfinite(values).all():
            raise HydraPickerError(f"{role} of micrograph {name!r}: {label} has NaN or Inf values")
    if np.isnan(picks.score).any():
        raise HydraPickerError(f"{role} of micrograph {name!r}: score has NaN values")


def match_picks(
    picks: Mapping[str, Picks],
    truth: Mapping[str, Picks],
    box_size: float,
    iou_threshold: float = MATCH_IOU,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Greedy matching in descending score: ``({name: TP mask over picks}, {name: matched mask over truth})``.

    Micrographs of ``picks`` absent from ``truth`` are an error (see :func:`evaluate`).
    """
    _check(box_size, iou_threshold)
    names = list(truth)
    for name in picks:
        if name not in truth:
            raise HydraPickerError(f"picks name micrograph {name!r}, which has no true particles file")
    for name in names:
        _check_finite("truth", name, truth[name])
        if name in picks:
            _check_finite("picks", name, picks[name])
    empty = Picks.empty("")
    per_pick = [picks.get(name, empty) for name in names]
    per_true = [truth[name] for name in names]
    n_picks = np.array([len(p) for p in per_pick])
    n_true = np.array([len(t) for t in per_true])
    px = np.concatenate([p.x for p in per_pick] + [np.zeros(0)])
    py = np.concatenate([p.y for p in per_pick] + [np.zeros(0)])
    score = np.concatenate([p.score for p in per_pick] + [np.zeros(0)])
    tx = np.concatenate([t.x for t in per_true] + [np.zeros(0)])
    ty = np.concatenate([t.y for t in per_true] + [np.zeros(0)])
    pick_mic = np.repeat(np.arange(len(names)), n_picks)
    true_mic = np.repeat(np.arange(len(names)), n_true)

    # IoU >= t for equal squares needs (s-|dx|)(s-|dy|) >= 2t s^2/(1+t), so the Chebyshev
    # distance is at most s(1 - 2t/(1+t)); a hair more keeps exact-threshold pairs.
    radius = box_size * (1 - 2 * iou_threshold / (1 + iou_threshold)) * (1 + 1e-9) + 1e-9
    pick_tp = np.zeros(len(px), dtype=bool)
    true_hit = np.zeros(len(tx), dtype=bool)
    if len(px) and len(tx):
        # One tree for all micrographs: each micrograph is moved along x by more than its
        # span plus the radius, so no candidate pair crosses micrographs. (A third axis for
        # the micrograph does the same but builds 2-3x slower.)
        low = min(px.min(), tx.min())
        span = max(px.max(), tx.max()) - low + 2 * radius + 1
        pick_points = np.stack([px - low + pick_mic * span, py], axis=1)
        true_points = np.stack([tx - low + true_mic * span, ty], axis=1)
        # the shift costs a few ulps of the largest shifted coordinate: widen the search by them
        radius += 4 * float(np.spacing(span * len(names) + np.abs(np.r_[py, ty]).max()))
        pairs = cKDTree(pick_points).sparse_distance_matrix(
            cKDTree(true_points), radius, p=np.inf, output_type="ndarray"
        )
        i, j = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
        keep = pick_mic[i] == true_mic[j]
        i, j = i[keep], j[keep]
        iou = offset_iou(px[i] - tx[j], py[i] - ty[j], box_size)
        keep = iou >= iou_threshold
        i, j, iou = i[keep], j[keep], iou[keep]
        # The greedy pass: picks by rank (descending score, ties in input order), each
        # taking its highest-IoU free true box (ties: the first true box).
        rank = np.empty(len(px), dtype=np.int64)
        rank[np.lexsort((np.arange(len(px)), -score))] = np.arange(len(px))
        order = np.lexsort((j, -iou, rank[i]))
        pick_done = bytearray(len(px))
        true_done = bytearray(len(tx))
        for a, b in zip(i[order].tolist(), j[order].tolist()):
            if pick_done[a] or true_done[b]:
                continue
            pick_done[a] = 1
            true_done[b] = 1
        pick_tp = np.frombuffer(bytes(pick_done), dtype=np.uint8).astype(bool)
        true_hit = np.frombuffer(bytes(true_done), dtype=np.uint8).astype(bool)
    pick_split = np.cumsum(n_picks)[:-1]
    true_split = np.cumsum(n_true)[:-1]
    tp_by = dict(zip(names, np.split(pick_tp, pick_split)))
    hit_by = dict(zip(names, np.split(true_hit, true_split)))
    return ({name: tp_by[name] for name in names if name in picks}, hit_by)


def _operating_points(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and the positives / negatives scoring >= each."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    pos = np.cumsum(positive[order])
    neg = np.cumsum(~positive[order])
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.zeros(0, dtype=np.int64)
    return s[last], pos[last].astype(np.float64), neg[last].astype(np.float64)


def _score(score: np.ndarray, tp: np.ndarray, n_true: int, curves: bool = False):
    """Scalar results (and, if asked, the curves) for one set of scored, labelled picks."""
    thresholds, tps, fps = _operating_points(score, tp)
    n_tp = int(tp.sum())
    n_fp = len(tp) - n_tp
    kept = tps + fps
    precision = np.divide(tps, kept, out=np.ones_like(tps), where=kept > 0)
    recall = tps / n_true if n_true else np.full_like(tps, np.nan)
    if n_true == 0:
        ap = float("nan")
    else:
        monotone = np.maximum.accumulate(precision[::-1])[::-1]
        ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * monotone))
    f1 = 2 * tps / (kept + n_true) if len(tps) else np.zeros(0)
    if len(f1) and f1.max() > 0:
        best = int(np.argmax(f1))
        best_f1, best_threshold = float(f1[best]), float(thresholds[best])
    else:
        best_f1, best_threshold = 0.0, float("nan")
    # ROC: the unmatched true particles join as positives scored -inf.
    n_missed = n_true - n_tp
    roc_score = np.concatenate([score, np.full(n_missed, -np.inf)])
    roc_positive = np.concatenate([tp, np.ones(n_missed, dtype=bool)])
    _, roc_pos, roc_neg = _operating_points(roc_score, roc_positive)
    if n_true and n_fp:
        tpr = np.concatenate([[0.0], roc_pos / n_true])
        fpr = np.concatenate([[0.0], roc_neg / n_fp])
        auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids = ties counted 1/2
    else:
        auroc = float("nan")
        tpr = np.concatenate([[0.0], roc_pos / n_true]) if n_true else np.zeros(0)
        fpr = np.concatenate([[0.0], roc_neg / n_fp]) if n_fp else np.zeros(0)
    summary = MicrographScore(ap, auroc, best_f1, best_threshold, len(score), n_true, n_tp)
    if not curves:
        return summary
    return summary, dict(thresholds=thresholds, precision=precision, recall=recall, fpr=fpr, tpr=tpr)


def evaluate(
    picks: Mapping[str, Picks],
    truth: Mapping[str, Picks],
    box_size: float,
    iou_threshold: float = MATCH_IOU,
    *,
    ignore_unlabelled: bool = False,
) -> Evaluation:
    """Score ``picks`` against ``truth`` (both keyed by micrograph name), pooled and per micrograph.

    Micrographs in ``truth`` without picks count all their particles as missed. Picks on a
    micrograph absent from ``truth`` are an error, or dropped when ``ignore_unlabelled``.
    ``box_size`` (px) is the box of every pick and true particle; ``Picks.box_size`` is not used.
    """
    _check(box_size, iou_threshold)
    if ignore_unlabelled:
        picks = {name: p for name, p in picks.items() if name in truth}
    tp_by, hit_by = match_picks(picks, truth, box_size, iou_threshold)
    names = list(truth)
    per_micrograph = {}
    for name in names:
        p = picks.get(name)
        score = p.score if p is not None else np.zeros(0)
        tp = tp_by.get(name, np.zeros(0, dtype=bool))
        per_micrograph[name] = _score(score, tp, len(truth[name]))
    all_score = np.concatenate([picks[n].score for n in names if n in picks] + [np.zeros(0)])
    all_tp = np.concatenate([tp_by[n] for n in names if n in picks] + [np.zeros(0, dtype=bool)])
    n_true = sum(len(t) for t in truth.values())
    pooled, curves = _score(all_score, all_tp, n_true, curves=True)
    return Evaluation(
        **vars(pooled),
        per_micrograph=per_micrograph,
        **curves,
        box_size=float(box_size),
        iou_threshold=float(iou_threshold),
    )


def write_curves(evaluation: Evaluation, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``pr.png`` and ``roc.png`` (pooled curves) into ``out_dir``, atomically; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    ap, auroc = _label(evaluation.ap), _label(evaluation.auroc)
    for name, x, y, xlabel, ylabel, title in (
        ("pr.png", evaluation.recall, evaluation.precision, "recall", "precision", f"precision-recall, AP = {ap}"),
        (
            "roc.png",
            evaluation.fpr,
            evaluation.tpr,
            "false positive rate",
            "true positive rate",
            f"ROC, AUROC = {auroc}",
        ),
    ):
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        try:
            if name == "pr.png" and len(x):
                # The interpolated curve whose area is AP: precision monotone from the right.
                monotone = np.maximum.accumulate(y[::-1])[::-1]
                ax.step(np.concatenate([[0.0], x]), np.concatenate([monotone[:1], monotone]), where="pre")
                ax.plot(x, y, ".", ms=2, alpha=0.5)
            elif len(x):
                ax.plot(x, y)
                ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
            ax.text(
                0.98,
                0.02,
                f"{evaluation.n_picks} picks, {evaluation.n_true} true, {evaluation.tp} TP\n"
                f"box {evaluation.box_size:g} px, IoU >= {evaluation.iou_threshold:g}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
            )
            written.append(save_figure(fig, out_dir / name))
        finally:
            plt.close(fig)
    return written


def _label(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_table(evaluation: Evaluation) -> str:
    """A plain-text table: one row per micrograph, then the pooled row ``all``."""
    rows = [("micrograph", "true", "picks", "TP", "AP", "AUROC", "best F1", "at score")]
    items = list(evaluation.per_micrograph.items()) + [("all", evaluation)]
    for name, s in items:
        threshold = "n/a" if math.isnan(s.best_threshold) else f"{s.best_threshold:.4g}"
        rows.append(
            (
                name,
                str(s.n_true),
                str(s.n_picks),
                str(s.tp),
                _label(s.ap),
                _label(s.auroc),
                f"{s.best_f1:.3f}",
                threshold,
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
