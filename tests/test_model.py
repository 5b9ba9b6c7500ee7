"""Tests of the network: the paper preset's layers, output grids, heads."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.model import LOGIT_PRIOR, HydraPicker, _ResidualBlock
from hydrapicker.presets import PRESETS, get_preset


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_paper_preset_has_the_papers_layer_shapes():
    model = HydraPicker(PRESETS["paper"])
    trunk = _convs(model.trunk)
    # two stem convs + 3 residual blocks x 2 conv pairs x 2 convs, all 3x3, 64 channels, stride 1
    assert len(trunk) == 2 + 3 * 2 * 2
    assert [tuple(c.weight.shape) for c in trunk] == [(64, 1, 3, 3)] + [(64, 64, 3, 3)] * 13
    assert all(c.stride == (1, 1) for c in trunk)
    assert not any(isinstance(m, (nn.Linear, nn.BatchNorm2d)) for m in model.modules())
    assert all(m.num_channels == 64 for m in model.trunk.modules() if isinstance(m, nn.GroupNorm))
    head = _convs(model.generic)
    assert [tuple(c.weight.shape) for c in head] == [
        (128, 64, 3, 3),
        (256, 128, 3, 3),
        (512, 256, 3, 3),
        (1024, 512, 3, 3),
        (3, 1024, 3, 3),
    ]
    assert [c.stride for c in head] == [(2, 2)] * 4 + [(1, 1)]
    kinds = [type(m) for m in model.generic.blocks]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.GroupNorm, nn.Dropout] * 4


def test_residual_block_conv_pairs_have_no_nonlinearity_between():
    block = HydraPicker(PRESETS["tiny"]).trunk.blocks[0]
    assert [type(m) for m in block.conv1] == [nn.Conv2d, nn.Conv2d]


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (100, 17), (16, 1)])
def test_output_grid_is_ceil_of_input_over_stride_for_any_size(size):
    model = HydraPicker(PRESETS["tiny"]).eval()
    out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, -(-size[0] // 16), -(-size[1] // 16))


def test_padding_does_not_move_predictions_of_the_unpadded_image():
    # An image already a multiple of 16 and the same image cut short by 5 px and padded back with
    # zeros must give the same output when the cut pixels were zero.
    model = HydraPicker(PRESETS["tiny"]).eval()
    image = torch.randn(1, 1, 48, 64)
    image[..., 43:, :] = 0
    image[..., :, 59:] = 0
    with torch.no_grad():
        assert torch.equal(model(image), model(image[..., :43, :59]))


def test_logit_bias_starts_at_the_low_prior():
    # The last conv's weights are small (std 0.01) but sum over 9 x head-width inputs, so the
    # probabilities scatter around the prior: pin the median and a factor-3 band.
    torch.manual_seed(0)
    model = HydraPicker(PRESETS["tiny"]).eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.randn(1, 1, 64, 64))[:, 2])
    assert abs(p.median().item() - LOGIT_PRIOR) < 0.003
    assert bool(((p > LOGIT_PRIOR / 3) & (p < LOGIT_PRIOR * 3)).all())


def test_add_head_copies_the_generic_head_and_owns_its_weights():
    model = HydraPicker(PRESETS["tiny"])
    with torch.no_grad():
        for p in model.generic.parameters():
            p.normal_()
    head = model.add_head("bgal")
    for (n1, p1), (n2, p2) in zip(model.generic.state_dict().items(), head.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    with torch.no_grad():
        next(head.parameters()).add_(1)
    assert not torch.equal(next(head.parameters()), next(model.generic.parameters()))
    assert model.head_names == ("bgal",)
    with pytest.raises(HydraPickerError, match="bgal"):
        model.add_head("bgal")


def test_named_head_and_generic_head_give_their_own_outputs():
    model = HydraPicker(PRESETS["tiny"], head_names=("a",)).eval()
    with torch.no_grad():
        model.heads["a"].predict.bias.add_(1.0)
        x = torch.randn(1, 1, 32, 32)
        assert torch.allclose(model(x, "a"), model(x, GENERIC) + 1.0, atol=1e-5)
    with pytest.raises(HydraPickerError, match="nope"):
        model(x, "nope")


def test_unknown_preset_is_a_user_error_naming_it():
    with pytest.raises(HydraPickerError, match="huge"):
        get_preset("huge")


def test_size_head_starts_at_the_trained_size_and_is_absent_unless_asked_for():
    assert HydraPicker(PRESETS["tiny"]).size_head is None
    model = HydraPicker(PRESETS["tiny"], size_head=True).eval()
    with torch.no_grad():
        _, sizes = model(torch.randn(1, 1, 80, 80), with_size=True)
    assert sizes.shape == (1, 1, 3, 3)  # one cell per 32 px
    assert torch.count_nonzero(sizes) == 0  # log size 0: "looks the trained size", so no correction
    with pytest.raises(HydraPickerError, match="no size head"):
        HydraPicker(PRESETS["tiny"])(torch.randn(1, 1, 32, 32), with_size=True)


def test_a_residual_block_in_inference_keeps_at_most_three_full_size_maps_alive():
    """The skip, a conv's input and its output: what bounds picking's memory per pass (a fourth
    map, the conv pair's input held through both convs, cost a 4096² micrograph ~0.5 GB)."""
    block = _ResidualBlock(8, 4).eval()
    shape = (1, 8, 96, 96)
    alive = []

    def count(module, inputs, output):
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and tuple(o.shape) == shape))

    for conv in (*block.conv1, *block.conv2):
        conv.register_forward_hook(count)
    with torch.inference_mode():
        block(torch.randn(shape))
    assert len(alive) == 4 and max(alive) <= 3, alive
