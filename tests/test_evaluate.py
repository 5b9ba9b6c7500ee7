"""Evaluation: greedy IoU matching, AP, AUROC, best F1 — against a brute-force reference and hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hydrapicker.defaults import MATCH_IOU
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import evaluate, write_curves
from hydrapicker.io import Picks

# --- an independent reference, in plain Python loops --------------------------------------


def _iou_corners(a, b, size):
    """IoU of two squares from their corners (not the centre-offset formula the library uses)."""
    ax0, ay0, ax1, ay1 = a[0] - size / 2, a[1] - size / 2, a[0] + size / 2, a[1] + size / 2
    bx0, by0, bx1, by1 = b[0] - size / 2, b[1] - size / 2, b[0] + size / 2, b[1] + size / 2
    w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = w * h
    return inter / (size * size + size * size - inter)


def reference(picks, truth, size, t=MATCH_IOU):
    """Brute force: every pick against every true box, every positive against every negative."""
    flat = []  # (score, micrograph, x, y) in input order
    for name in truth:
        if name in picks:
            p = picks[name]
            flat += [(float(s), name, float(x), float(y)) for x, y, s in zip(p.x, p.y, p.score)]
    order = sorted(range(len(flat)), key=lambda k: -flat[k][0])  # stable: ties keep input order
    matched = {name: [False] * len(truth[name]) for name in truth}
    is_tp = [False] * len(flat)
    for k in order:
        s, name, x, y = flat[k]
        best, best_iou = None, -1.0
        for j, (tx, ty) in enumerate(zip(truth[name].x, truth[name].y)):
            if matched[name][j]:
                continue
            iou = _iou_corners((x, y), (float(tx), float(ty)), size)
            if iou >= t and iou > best_iou:
                best, best_iou = j, iou
        if best is not None:
            matched[name][best] = True
            is_tp[k] = True
    n_true = sum(len(v) for v in truth.values())
    thresholds = sorted({f[0] for f in flat}, reverse=True)
    points = []  # (precision, recall, f1, threshold)
    for th in thresholds:
        kept = [k for k in range(len(flat)) if flat[k][0] >= th]
        tp = sum(is_tp[k] for k in kept)
        points.append((tp / len(kept), tp / n_true if n_true else math.nan, 2 * tp / (len(kept) + n_true), th))
    ap, previous_recall = 0.0, 0.0
    for i, (_, r, _, _) in enumerate(points):
        ap += (r - previous_recall) * max(p for p, _, _, _ in points[i:])
        previous_recall = r
    if n_true == 0:
        ap = math.nan
    positives = [flat[k][0] for k in range(len(flat)) if is_tp[k]]
    positives += [-math.inf] * (n_true - len(positives))
    negatives = [flat[k][0] for k in range(len(flat)) if not is_tp[k]]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in positives for b in negatives)
    auroc = wins / (len(positives) * len(negatives)) if positives and negatives else math.nan
    best_f1, best_threshold = 0.0, math.nan
    for _, _, f1, th in points:
        if f1 > best_f1:
            best_f1, best_threshold = f1, th
    return dict(ap=ap, auroc=auroc, best_f1=best_f1, best_threshold=best_threshold, tp=sum(is_tp))


def _random_case(rng):
    """Small micrographs on an integer grid, with ties in scores and IoU exactly at the threshold."""
    truth, picks = {}, {}
    for m in range(rng.integers(1, 4)):
        name = f"mic{m}"
        n = int(rng.integers(0, 8))
        tx, ty = rng.integers(0, 60, n).astype(float), rng.integers(0, 60, n).astype(float)
        truth[name] = Picks(name, tx, ty)
        if rng.random() < 0.2:
            continue  # a micrograph with no picks at all
        k = int(rng.integers(0, 14))
        x, y = rng.integers(0, 60, k).astype(float), rng.integers(0, 60, k).astype(float)
        if n:
            near = rng.random(k) < 0.6
            src = rng.integers(0, n, k)
            x = np.where(near, tx[src] + rng.integers(-3, 4, k), x)
            y = np.where(near, ty[src] + rng.integers(-3, 4, k), y)
        picks[name] = Picks(name, x, y, rng.integers(0, 5, k) / 4)
    return picks, truth


@pytest.mark.parametrize("seed", range(60))
def test_agrees_with_brute_force_reference_on_random_cases(seed):
    picks, truth = _random_case(np.random.default_rng(seed))
    got = evaluate(picks, truth, box_size=10)
    want = reference(picks, truth, 10)
    assert got.tp == want["tp"]
    for key in ("ap", "auroc", "best_f1", "best_threshold"):
        a, b = getattr(got, key), want[key]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (key, a, b)


def test_perfect_picks_give_ap_one_and_auroc_one():
    rng = np.random.default_rng(1)
    tx, ty = rng.uniform(0, 500, 40), rng.uniform(0, 500, 40)
    truth = {"m": Picks("m", tx, ty)}
    # every particle picked, above two far-away false picks
    picks = {"m": Picks("m", np.r_[tx, 900, 950], np.r_[ty, 900, 950], np.r_[np.linspace(2, 3, 40), 0.1, 0.2])}
    result = evaluate(picks, truth, box_size=20)
    assert result.ap == 1.0
    assert result.auroc == 1.0
    assert result.best_f1 == 1.0
    assert result.best_threshold == 2.0  # the lowest true pick's score keeps all 40 and no false pick


def test_hand_worked_case():
    """Box 10, true particles at (0, 0) and (100, 100).

    A (1, 0) s=.9: IoU 90/110 -> TP.  B (0, 0) s=.8: same particle, already taken -> FP.
    C (50, 50) s=.7 -> FP.  D (100, 103) s=.6: IoU 70/130 < .6 -> FP.
    PR points: (P, R) = (1, .5), (.5, .5), (1/3, .5), (.25, .5) -> AP = .5 * 1.
    AUROC: positives A (.9) and the missed particle (-inf); negatives .8, .7, .6 -> 3/6.
    Best F1 at threshold .9: 2*1 / (1 + 2).
    """
    truth = {"m": Picks("m", [0, 100], [0, 100])}
    picks = {"m": Picks("m", [1, 0, 50, 100], [0, 0, 50, 103], [0.9, 0.8, 0.7, 0.6])}
    result = evaluate(picks, truth, box_size=10)
    assert result.tp == 1
    assert result.ap == pytest.approx(0.5)
    assert result.auroc == pytest.approx(0.5)
    assert result.best_f1 == pytest.approx(2 / 3)
    assert result.best_threshold == 0.9
    np.testing.assert_allclose(result.precision, [1, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(result.recall, [0.5, 0.5, 0.5, 0.5])


def test_iou_exactly_at_threshold_matches():
    # box 10, offset 2.5: overlap (10 - 2.5) * 10 = 75, union 200 - 75 = 125 -> IoU = 0.6 exactly
    result = evaluate({"m": Picks("m", [2.5], [0])}, {"m": Picks("m", [0], [0])}, box_size=10)
    assert result.tp == 1
    result = evaluate({"m": Picks("m", [2.5001], [0])}, {"m": Picks("m", [0], [0])}, box_size=10)
    assert result.tp == 0


def test_iou_exactly_at_threshold_matches_in_any_micrograph_at_any_coordinate():
    # the k-d tree search lays micrographs side by side: exactness must survive the shift
    truth = {f"m{k}": Picks(f"m{k}", [1e6 + 0.5], [7e5]) for k in range(300)}
    picks = {name: Picks(name, t.x + 2.5, t.y) for name, t in truth.items()}
    assert evaluate(picks, truth, box_size=10).tp == 300


def test_duplicate_picks_on_one_particle_only_the_highest_scored_counts():
    truth = {"m": Picks("m", [50], [50])}
    # the better-centred duplicate scores lower: it is the false positive
    picks = {"m": Picks("m", [50, 51, 52], [50, 50, 50], [0.2, 0.9, 0.5])}
    result = evaluate(picks, truth, box_size=10)
    assert result.tp == 1
    assert result.best_threshold == 0.9
    assert result.ap == 1.0  # recall reaches 1 at the first pick


def test_a_pick_takes_the_true_box_of_highest_iou():
    # P1 (2.5, 0) overlaps T1 (0, 0) with IoU .6 and T2 (4, 0) with IoU 85/115; it must take T2,
    # which leaves T1 for P2 (1, 0); taking T1 would leave P2 nothing (IoU(P2, T2) = 70/130).
    truth = {"m": Picks("m", [0, 4], [0, 0])}
    picks = {"m": Picks("m", [2.5, 1], [0, 0], [0.9, 0.8])}
    assert evaluate(picks, truth, box_size=10).tp == 2


def test_empty_picks_miss_every_particle():
    truth = {"a": Picks("a", [10, 20], [10, 20]), "b": Picks("b", [5], [5])}
    result = evaluate({}, truth, box_size=8)
    assert (result.ap, result.tp, result.n_picks, result.n_true, result.best_f1) == (0.0, 0, 0, 3, 0.0)
    assert math.isnan(result.auroc) and math.isnan(result.best_threshold)
    assert result.per_micrograph["b"].n_true == 1


def test_micrograph_without_picks_counts_its_particles_as_missed():
    truth = {"a": Picks("a", [10], [10]), "b": Picks("b", [10], [10])}
    picks = {"a": Picks("a", [10], [10], [1.0])}
    result = evaluate(picks, truth, box_size=8)
    assert result.ap == 0.5  # recall 1/2 at precision 1
    assert result.per_micrograph["a"].ap == 1.0
    assert result.per_micrograph["b"].ap == 0.0


def test_matches_never_cross_micrographs():
    truth = {"a": Picks("a", [10], [10]), "b": Picks.empty("b")}
    picks = {"b": Picks("b", [10], [10], [1.0])}
    assert evaluate(picks, truth, box_size=8).tp == 0


def test_picks_on_a_micrograph_without_truth_are_an_error_naming_it_unless_ignored():
    truth = {"a": Picks("a", [10], [10])}
    picks = {"a": Picks("a", [10], [10]), "stray_mic": Picks("stray_mic", [1], [1])}
    with pytest.raises(HydraPickerError, match="stray_mic"):
        evaluate(picks, truth, box_size=8)
    result = evaluate(picks, truth, box_size=8, ignore_unlabelled=True)
    assert (result.n_picks, result.tp) == (1, 1)


def test_tied_scores_do_not_depend_on_pick_order():
    rng = np.random.default_rng(3)
    picks, truth = _random_case(rng)
    base = evaluate(picks, truth, box_size=10)
    for name, p in picks.items():
        order = rng.permutation(len(p))
        picks[name] = p.select(order)
    again = evaluate(picks, truth, box_size=10)
    assert again.ap == pytest.approx(base.ap, abs=1e-12, nan_ok=True)
    assert again.auroc == pytest.approx(base.auroc, abs=1e-12, nan_ok=True)


def test_auroc_counts_ties_between_positive_and_negative_as_half():
    truth = {"m": Picks("m", [10], [10])}
    picks = {"m": Picks("m", [10, 90], [10, 90], [0.5, 0.5])}
    assert evaluate(picks, truth, box_size=8).auroc == 0.5


def test_bad_box_size_and_threshold_are_refused():
    truth = {"m": Picks("m", [10], [10])}
    with pytest.raises(HydraPickerError, match="box size"):
        evaluate({}, truth, box_size=-3)
    with pytest.raises(HydraPickerError, match="IoU"):
        evaluate({}, truth, box_size=8, iou_threshold=0)


def test_to_json_has_the_documented_keys_and_no_nan(tmp_path):
    truth = {"m": Picks("m", [10], [10])}
    result = evaluate({"m": Picks("m", [10], [10])}, truth, box_size=8)
    data = result.to_json()
    assert set(data) == {"ap", "auroc", "best_f1", "best_threshold", "n_picks", "n_true", "tp", "per_micrograph"}
    assert data["auroc"] is None  # no negatives: undefined
    json.loads(json.dumps(data, allow_nan=False))
    assert data["per_micrograph"]["m"]["tp"] == 1


def test_write_curves_writes_pr_and_roc_pngs(tmp_path):
    picks, truth = _random_case(np.random.default_rng(5))
    paths = write_curves(evaluate(picks, truth, box_size=10), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["pr.png", "roc.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (tmp_path / "plots").iterdir()) == ["pr.png", "roc.png"]
