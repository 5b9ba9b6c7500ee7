"""The network: a shared fully convolutional trunk, one SSD-like head per dataset, a generic head.

Shapes, stated once: images enter as float32 ``[B, 1, H, W]`` (normalised, rescaled so the
particle is ``PARTICLE_DIAMETER_PX`` wide); a head returns ``[B, 3, ceil(H/16), ceil(W/16)]``,
channels ``(dx, dy, logit)`` per anchor, one anchor per 16x16 cell (see :mod:`hydrapicker.boxes`
for the anchor positions and the offset coding). Any H, W is accepted: the image is padded
with zeros (the mean of a normalised micrograph) at the bottom and right up to a multiple of
the stride, which leaves every anchor where it would be on the unpadded image.

Widths and depths come from a preset in :data:`hydrapicker.presets.PRESETS`; ``paper`` is the architecture of the
paper (section 3.1), the others are smaller versions that train on a laptop CPU.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.presets import ModelPreset

__all__ = ["Trunk", "Head", "SizeHead", "HydraPicker", "GENERIC", "LOGIT_PRIOR", "SIZE_STRIDE"]

#: Prior probability of "particle" that the logit bias starts at (RetinaNet's pi = 0.01), so the
#: focal loss is not swamped by the background anchors in the first steps.
LOGIT_PRIOR = 0.01


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, min(groups, channels)), channels)


def _conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class _ConvPair(nn.Sequential):
    """Two 3x3 convs with no non-linearity between: a 5x5 receptive field for 2/3 the weights."""

    def __init__(self, channels: int) -> None:
        super().__init__(_conv3x3(channels, channels), _conv3x3(channels, channels))


class _ResidualBlock(nn.Module):
    """ResNet basic block whose two 3x3 convs are each a conv pair; GroupNorm, identity skip."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _ConvPair(channels)
        self.norm1 = _norm(channels, groups)
        self.conv2 = _ConvPair(channels)
        self.norm2 = _norm(channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written so that at most three full-size maps are alive at once in inference (the skip,
        # a conv's input and its output), which bounds picking's memory: each conv is called on
        # its own (a module call keeps its argument alive until it returns, so calling a conv
        # pair would keep its input alive through both convs), and the rest runs in place (the
        # same arithmetic, the same numbers; autograd allows it, as GroupNorm's backward reads
        # its input and ReLU's its output).
        out = self.conv1[0](x)
        out = self.conv1[1](out)
        out = F.relu_(self.norm1(out))
        out = self.conv2[0](out)
        out = self.conv2[1](out)
        return F.relu_(self.norm2(out).add_(x))


class Trunk(nn.Module):
    """Shared feature extractor at full input resolution: ``[B,1,H,W] -> [B,C,H,W]``."""

    def __init__(self, preset: ModelPreset) -> None:
        super().__init__()
        c, g = preset.trunk_channels, preset.groups
        self.stem = nn.Sequential(
            _conv3x3(1, c),
            _norm(c, g),
            nn.ReLU(inplace=True),
            _conv3x3(c, c),
            _norm(c, g),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*(_ResidualBlock(c, g) for _ in range(preset.residual_blocks)))
        self.out_channels = c

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:  # not self.blocks(x), which would keep the stem's output alive throughout
            x = block(x)
        return x


class Head(nn.Module):
    """SSD-like single-class head: ``[B,C,H,W] -> [B,3,H/16,W/16]`` as ``(dx, dy, logit)``."""

    def __init__(self, preset: ModelPreset) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = preset.trunk_channels
        for c_out in preset.head_channels:
            layers += [
                _conv3x3(c_in, c_out, stride=2, bias=True),
                nn.ReLU(inplace=True),
                _norm(c_out, preset.groups),
                nn.Dropout(preset.dropout),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.predict = _conv3x3(c_in, 3, bias=True)
        # Offsets start near zero (anchor centres) and the logit at the low prior.
        nn.init.normal_(self.predict.weight, std=0.01)
        nn.init.zeros_(self.predict.bias)
        with torch.no_grad():
            self.predict.bias[2] = -math.log((1 - LOGIT_PRIOR) / LOGIT_PRIOR)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predict(self.blocks(features))


#: The size head works on the image shrunk by this factor and outputs one value per
#: ``SIZE_STRIDE`` x ``SIZE_STRIDE`` px cell (2 x 2 anchors).
SIZE_SHRINK = 4
SIZE_STRIDE = 32


class SizeHead(nn.Module):
    """How large the particles look: ``[B,1,H,W]`` image -> ``[B,1,ceil(H/32),ceil(W/32)]`` log(apparent / trained diameter).

    Its own small network on the image itself, not on the trunk's features: the detector's
    receptive field (~80 px) barely holds a particle shown 1.6x its 40 px, so features made
    for picking say little about size (benchmarks/scale_search.md). Shrunk 4x first, three
    stride-2 convs see about 130 px across around each cell, several particles; a 0.06
    M-parameter net, cheap beside the trunk.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AvgPool2d(SIZE_SHRINK, ceil_mode=True)]
        c_in = 1
        for i, c_out in enumerate(channels):
            layers += [
                _conv3x3(c_in, c_out, stride=1 if i == 0 else 2, bias=True),
                nn.ReLU(inplace=True),
                _norm(c_out, groups),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.predict = _conv3x3(c_in, 1, bias=True)
        # A log size of exactly zero (the trained size): an untrained size head corrects nothing.
        nn.init.zeros_(self.predict.weight)
        nn.init.zeros_(self.predict.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(self.blocks(images))


class HydraPicker(nn.Module):
    """Trunk + one head per training dataset (``heads``) + the ``generic`` head, and optionally
    a ``size_head``.

    ``forward(images, head)`` runs the trunk and one head; :meth:`features` and
    :meth:`run_head` split the two when several heads see the same features.

    The size head (:class:`SizeHead`, one for all datasets, sharing nothing with the rest)
    predicts per 32-px cell how large the particles there look: ``log(apparent diameter /
    trained diameter)``. Training shows particles at a random scale (scale jitter) and knows
    it; picking reads the size head where its picks are to correct a particle diameter the
    user gave wrong (:func:`hydrapicker.picking.size.estimate_diameter`).
    """

    def __init__(
        self, preset: ModelPreset, head_names: tuple[str, ...] | list[str] = (), size_head: bool = False
    ) -> None:
        super().__init__()
        self.preset = preset
        self.trunk = Trunk(preset)
        self.generic = Head(preset)
        self.heads = nn.ModuleDict()
        for name in head_names:
            self.add_head(name)
        self.size_head = SizeHead() if size_head else None

    @property
    def stride(self) -> int:
        return self.preset.stride

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def add_head(self, name: str, init_from: str | None = GENERIC) -> Head:
        """Add a dataset head called ``name``, a copy of head ``init_from`` (``None``: fresh weights)."""
        if name == GENERIC or name in self.heads:
            raise HydraPickerError(f"head {name!r} already exists")
        head = copy.deepcopy(self.head(init_from)) if init_from is not None else Head(self.preset)
        self.heads[name] = head
        return head

    def head(self, name: str) -> Head:
        """The head called ``name`` (``"generic"`` for the generic head)."""
        if name == GENERIC:
            return self.generic
        if name not in self.heads:
            known = ", ".join((GENERIC,) + self.head_names)
            raise HydraPickerError(f"the model has no head {name!r} (it has: {known})")
        return self.heads[name]

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``[B,1,H,W]`` at the bottom/right to a multiple of the stride."""
        h, w = images.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Trunk features of ``[B,1,H,W]`` images (padded to a multiple of the stride)."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be [B, 1, H, W], got {tuple(images.shape)}")
        return self.trunk(self.pad(images))

    def run_head(self, features: torch.Tensor, head: str = GENERIC) -> torch.Tensor:
        return self.head(head)(features)

    def forward(self, images: torch.Tensor, head: str = GENERIC, with_size: bool = False):
        """``[B,1,H,W]`` -> ``[B,3,ceil(H/16),ceil(W/16)]`` from head ``head``; with ``with_size``
        the pair (that, the size head's ``[B,1,ceil(H/32),ceil(W/32)]``)."""
        outputs = self.run_head(self.features(images), head)
        if not with_size:
            return outputs
        if self.size_head is None:
            raise HydraPickerError("the model has no size head")
        return outputs, self.size_head(self.pad(images))
