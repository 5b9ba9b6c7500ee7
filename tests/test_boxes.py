"""Tests of anchors, square IoU, matching, offset coding, NMS and centre refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydrapicker.boxes import (
    anchor_centres,
    decode_outputs,
    encode_offsets,
    match_anchors,
    nms,
    refine_centres,
    square_iou,
)


def test_anchors_sit_at_cell_centres_row_major():
    a = anchor_centres(2, 3, stride=16)
    assert a.shape == (6, 2)
    assert a[0].tolist() == [7.5, 7.5]
    assert a[1].tolist() == [23.5, 7.5]  # next column first: row-major
    assert a[3].tolist() == [7.5, 23.5]
    # the centre of pixels 0..15 (pixel centres at integers) is 7.5
    assert a[0, 0] == np.arange(16).mean()


def test_square_iou_matches_hand_computation():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [40.0, 0.0]])
    iou = square_iou(a, b, 40.0)[0]
    assert iou[0] == pytest.approx(1.0)
    assert iou[1] == pytest.approx(30 * 40 / (2 * 1600 - 30 * 40))
    assert iou[2] == pytest.approx(900 / (3200 - 900))
    assert iou[3] == 0


def test_matching_keeps_the_best_anchor_of_a_particle_below_the_iou_threshold():
    anchors = anchor_centres(4, 4, 16)
    # halfway between four anchors: IoU with each is 32*32/(3200-1024) = 0.47 < 0.6
    particle = torch.tensor([[15.5, 15.5]])
    assert square_iou(anchors, particle, 40.0).max() < 0.6
    matched = match_anchors(anchors, particle, 40.0, 0.6)
    assert (matched == 0).sum() == 1


def test_matching_takes_every_anchor_above_the_threshold():
    anchors = anchor_centres(4, 4, 16)
    particle = torch.tensor([[23.5, 15.5]])  # on anchor column 1, between rows 0 and 1: 8 px from two anchors
    matched = match_anchors(anchors, particle, 40.0, 0.6)
    assert torch.nonzero(matched == 0).reshape(-1).tolist() == [1, 5]


def test_no_particles_match_nothing():
    assert (match_anchors(anchor_centres(3, 3), torch.zeros(0, 2), 40.0) == -1).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 63), st.floats(0, 47)), min_size=1, max_size=5))
def test_encode_decode_round_trip(points):
    particles = torch.tensor(points, dtype=torch.float32)
    h, w = 3, 4
    anchors = anchor_centres(h, w, 16)
    idx = torch.arange(len(points)) * 2  # distinct anchors, some far from their particle
    offsets = encode_offsets(anchors[idx], particles, 16)
    outputs = torch.zeros(3, h * w)
    outputs[:2, idx] = offsets.T
    centres, scores = decode_outputs(outputs.reshape(3, h, w), 16)
    assert torch.allclose(centres[idx], particles, atol=1e-4)
    assert torch.allclose(scores, torch.full((h * w,), 0.5))


def _nms_reference(xy, score, box, thr):
    order = np.argsort(-score, kind="stable")
    keep = []
    for i in order:
        if all(square_iou(torch.tensor(xy[[i]]), torch.tensor(xy[[k]]), box).item() <= thr for k in keep):
            keep.append(i)
    return np.array(keep, dtype=int)


def test_nms_keeps_the_best_of_overlapping_picks_and_distant_picks():
    xy = np.array([[0.0, 0.0], [3.0, 0.0], [100.0, 100.0], [40.0, 0.0]])
    score = np.array([0.5, 0.9, 0.1, 0.8])
    assert nms(xy, score, 40.0, 0.3).tolist() == [1, 3, 2]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 60), st.floats(0.05, 0.9))
def test_nms_equals_brute_force_greedy(seed, n, thr):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 120, (n, 2))
    score = rng.random(n)
    assert nms(xy, score, 27.0, thr).tolist() == _nms_reference(xy, score, 27.0, thr).tolist()


def test_refined_centre_is_the_score_squared_weighted_mean_of_the_predictions_within_the_radius():
    xy = np.array([[10.0, 10.0], [12.0, 10.0], [10.0, 14.0], [40.0, 40.0]])
    score = np.array([0.9, 0.6, 0.3, 1.0])
    refined = refine_centres(np.array([[10.0, 10.0]]), xy, score, radius=5.0)
    w = score[:3] ** 2  # the fourth prediction is 42 px away: another particle
    np.testing.assert_allclose(refined[0], (xy[:3] * w[:, None]).sum(0) / w.sum())


def test_refinement_pulls_an_off_centre_pick_to_the_consensus_of_its_particle():
    rng = np.random.default_rng(0)
    true_centre = np.array([50.0, 60.0])
    # many anchors agree on the particle's centre; the best-scored one is 6 px off
    xy = np.vstack([true_centre + rng.normal(0, 1.0, size=(30, 2)), true_centre + [6.0, 0.0]])
    score = np.r_[np.full(30, 0.5), 0.6]
    kept = xy[[-1]]
    refined = refine_centres(kept, xy, score, radius=12.0)
    assert np.linalg.norm(refined[0] - true_centre) < 1.0 < np.linalg.norm(kept[0] - true_centre)


def test_pick_without_predictions_nearby_stays_where_it_is():
    picks = np.array([[5.0, 5.0], [100.0, 100.0]])
    refined = refine_centres(picks, np.array([[6.0, 5.0]]), np.array([0.5]), radius=3.0)
    np.testing.assert_array_equal(refined[1], picks[1])
    assert refine_centres(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), radius=3.0).shape == (0, 2)
