"""Tests of the loss: the generic head learns only through the bias term; zero particles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydrapicker.boxes import anchor_centres
from hydrapicker.loss import detection_loss, focal_loss, head_bias_loss
from hydrapicker.model import HydraPicker
from hydrapicker.presets import PRESETS


def _model(heads=("a", "b")) -> HydraPicker:
    torch.manual_seed(0)
    return HydraPicker(PRESETS["tiny"], head_names=heads)


def test_generic_head_gets_exactly_zero_gradient_from_loc_and_cls():
    model = _model()
    images = torch.randn(2, 1, 64, 64)
    centres = [torch.tensor([[20.0, 30.0]]), torch.tensor([[40.0, 10.0], [10.0, 50.0]])]
    loss = detection_loss(model(images, "a"), centres)
    (loss.loc + loss.cls).backward()
    for p in model.generic.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.heads["a"].parameters())
    assert all(p.grad is None for p in model.heads["b"].parameters())


def test_generic_head_learns_through_the_bias_term():
    model = _model()
    with torch.no_grad():
        model.heads["a"].predict.bias.add_(1.0)
    head_bias_loss(model).backward()
    assert torch.count_nonzero(model.generic.predict.bias.grad) == 3


def test_bias_term_equals_hand_computed_value():
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for p in model.heads["a"].parameters():
            p.fill_(1.0)
        for p in model.heads["b"].parameters():
            p.fill_(3.0)
        for p in model.generic.parameters():
            p.fill_(2.0)
    n = sum(p.numel() for p in model.generic.parameters())
    # (1/2) * (n * (1-2)^2 + n * (3-2)^2) = n
    assert head_bias_loss(model).item() == pytest.approx(n)


def test_zero_particles_give_zero_loc_loss_and_a_finite_cls_loss():
    model = _model()
    loss = detection_loss(model(torch.randn(2, 1, 64, 64), "a"), [torch.zeros(0, 2), torch.zeros(0, 2)])
    assert loss.loc.item() == 0 and loss.matched == 0
    assert torch.isfinite(loss.cls) and loss.cls.item() > 0


def test_focal_loss_with_gamma_zero_is_alpha_weighted_cross_entropy():
    logits = torch.randn(50)
    targets = (torch.rand(50) > 0.7).float()
    weight = 0.25 * targets + 0.75 * (1 - targets)
    expected = (weight * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")).sum()
    assert focal_loss(logits, targets, alpha=0.25, gamma=0.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loc_loss_is_l1_in_stride_units_over_matched_anchors():
    h = w = 2
    anchors = anchor_centres(h, w, 16)
    particle = anchors[3] + torch.tensor([2.0, -4.0])
    outputs = torch.zeros(1, 3, h, w)
    loss = detection_loss(outputs, [particle[None]], box_size=40.0, stride=16)
    assert loss.matched == 1
    assert loss.loc.item() == pytest.approx((2 + 4) / 16)


def test_size_loss_is_l1_on_the_log_apparent_size_in_the_cells_that_hold_particles():
    from hydrapicker.loss import size_loss

    sizes = torch.zeros(2, 1, 3, 3)
    sizes[0, 0, 0, 1] = 0.5  # the 32-px cell of columns 32-63, rows 0-31: holds the particle at (40, 10)
    sizes[0, 0, 2, 2] = 9.0  # no particle there: must not count
    centres = [torch.tensor([[40.0, 10.0], [50.0, 20.0]]), torch.zeros(0, 2)]  # both in one cell: counted once
    loss = size_loss(sizes, centres, torch.tensor([1.25, 0.7]))
    assert loss.item() == pytest.approx(abs(0.5 - torch.log(torch.tensor(1.25)).item()))


def test_size_loss_trains_the_size_head_alone():
    from hydrapicker.loss import size_loss

    torch.manual_seed(0)
    model = HydraPicker(PRESETS["tiny"], head_names=("a",), size_head=True)
    outputs, sizes = model(torch.randn(1, 1, 64, 64), "a", with_size=True)
    assert outputs.shape == (1, 3, 4, 4) and sizes.shape == (1, 1, 2, 2)
    size_loss(sizes, [torch.tensor([[30.0, 30.0]])], torch.tensor([1.4])).backward()
    assert torch.count_nonzero(model.size_head.predict.bias.grad) > 0
    assert all(
        p.grad is None for p in (*model.trunk.parameters(), *model.generic.parameters(), *model.heads["a"].parameters())
    )
