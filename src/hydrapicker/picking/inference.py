"""The network over one prepared micrograph: trunk + one head, in tiles when it is large; the size head.

Large micrographs (tiles): the net is fully convolutional, but its GroupNorm layers normalise
each channel group by its mean and variance over *all* positions of the image, so a tile run
on its own would see other statistics than the whole micrograph. :func:`head_outputs` therefore
measures every GroupNorm's statistics once, in a pass over a central window of at most
``tile_size`` px (the whole micrograph when it fits), then runs the tiles with those statistics
frozen (each GroupNorm becomes a per-channel affine map). Tiles start on multiples of the anchor
stride and overlap by the receptive field of trunk + head, so every anchor is computed from
exactly the pixels the whole-image pass uses. Result: a micrograph that fits in the window
gives the whole-image outputs (to float rounding) however it is tiled; a larger one gives
whole-image inference with GroupNorm statistics from its central window instead of from all
of it (benchmarks/pick_real/run.py measures the difference on a real micrograph). The network's
memory is bounded by the tile size; the whole micrograph is still read and normalised in memory.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hydrapicker.defaults import GENERIC, PICK_TILE_SIZE
from hydrapicker.errors import HydraPickerError
from hydrapicker.memory import large_blocks_returned
from hydrapicker.model import HydraPicker

__all__ = ["head_outputs", "receptive_radius", "size_map", "tile_margin", "tile_spans"]


def receptive_radius(model: HydraPicker) -> int:
    """How far the input an anchor's output depends on reaches: anchor ``j`` (its cell starts at
    input px ``16 j``) depends on input px ``16 j - r .. 16 j + r`` (which covers its cell).

    Walks the convs in the order the network runs them (trunk, then a head): each adds
    ``(kernel // 2) * dilation`` times the stride accumulated before it. Identity skips add
    nothing, so this is exact for the trunk + head chain (``paper``: 14 + 31 = 45 px).
    """
    radius, jump = 0, 1
    for module in (*model.trunk.modules(), *model.generic.modules()):
        if isinstance(module, nn.Conv2d):
            radius += (module.kernel_size[0] // 2) * module.dilation[0] * jump
            jump *= module.stride[0]
    assert jump == model.stride, "the head's strides should multiply to the anchor stride"
    return radius


def tile_margin(model: HydraPicker) -> int:
    """Overlap each side of a tile: the receptive radius rounded up to the anchor stride."""
    return -(-receptive_radius(model) // model.stride) * model.stride


def tile_spans(length: int, tile_size: int, margin: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``length`` input px: ``(start, stop, first, last)`` per tile.

    ``[start, stop)`` is the tile in input px (``start`` a multiple of ``stride``), and
    ``[first, last)`` the anchor rows (or columns) it is trusted for: those whose receptive
    field lies inside the tile or reaches past it only where the micrograph itself ends. The
    trusted ranges partition ``[0, ceil(length / stride))``.
    """
    most = (tile_size - 2 * margin) // stride  # anchors a tile can be trusted for
    if most < 1:
        raise HydraPickerError(
            f"tile size {tile_size} px is too small: it must exceed twice the overlap of {margin} px"
        )
    n_anchors = -(-length // stride)
    # As few tiles as fit, sharing the anchors evenly: 4096 px in tiles of at most 2048 is three
    # tiles of ~1470 px, not two full ones and a sliver.
    n_tiles = -(-n_anchors // most)
    core = -(-n_anchors // n_tiles)
    spans = []
    for first in range(0, n_anchors, core):
        last = min(first + core, n_anchors)
        start = max(0, first * stride - margin)
        stop = min(length, last * stride + margin)
        spans.append((start, stop, first, last))
    return spans


class _GroupNorm(nn.Module):
    """GroupNorm that can measure its statistics on one image and then keep them (frozen) for tiles.

    ``frozen = False``: normalise by the input's own statistics and store them, like
    ``nn.GroupNorm`` on one image. ``frozen = True``: normalise by the stored ones. Either
    way the normalisation is one per-channel affine map ``x * scale + shift``.
    The statistics are per-channel sums (float32, ~5e-7 relative) pooled per group in float64:
    torch's own float32 GroupNorm kernel is off by up to ~1e-3 in variance on a 1500² map, an
    error its next GroupNorm hides but frozen statistics would pass on (2e-3 in score).
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        channels = norm.num_channels
        self.weight = nn.Parameter(
            norm.weight.detach().clone() if norm.affine else torch.ones(channels), requires_grad=False
        )
        self.bias = nn.Parameter(
            norm.bias.detach().clone() if norm.affine else torch.zeros(channels), requires_grad=False
        )
        self.frozen = False
        self.scale: torch.Tensor | None = None  # [1, C, 1, 1]
        self.shift: torch.Tensor | None = None  # [1, C, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            self._measure(x)
        assert self.scale is not None and self.shift is not None, "frozen before any statistics were measured"
        # In place: every GroupNorm of the net normalises a conv's output that nothing else reads.
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype), out=x)

    def _measure(self, x: torch.Tensor) -> None:
        if x.shape[0] != 1:
            raise ValueError(f"statistics are measured on one image at a time, got a batch of {x.shape[0]}")
        channels = x.shape[1]
        # Sums over pixels as a reduction over the outer axis of a [pixels, C] or [C, pixels] view
        # (no copy): 2-3x faster than var_mean over the spatial dims of a channels-last map.
        if x.is_contiguous(memory_format=torch.channels_last):
            values, axis = x[0].permute(1, 2, 0).reshape(-1, channels), 0
        else:
            values, axis = x[0].reshape(channels, -1), 1
        values = values.float()
        n = values.shape[axis]
        mean_c = values.sum(axis).double() / n
        # The squares are a full-size copy, alive beside the map and its block's input: no more
        # than a conv's input and output are, so they do not raise the pass's peak.
        second_c = torch.square(values).sum(axis).double() / n
        mean = mean_c.reshape(self.groups, -1).mean(1)
        var = (second_c.reshape(self.groups, -1).mean(1) - mean**2).clamp(min=0)
        per_group = channels // self.groups
        scale = self.weight.double() * torch.rsqrt(var + self.eps).repeat_interleave(per_group)
        shift = self.bias.double() - mean.repeat_interleave(per_group) * scale
        self.scale = scale.float().reshape(1, -1, 1, 1)
        self.shift = shift.float().reshape(1, -1, 1, 1)


def _with_measured_norms(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose GroupNorms are :class:`_GroupNorm` (not frozen)."""
    copied = copy.deepcopy(net)
    for name, module in list(copied.named_modules()):
        if isinstance(module, nn.GroupNorm):
            parent_name, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent_name) if parent_name else copied, child, _GroupNorm(module))
    return copied


def _freeze_norms(net: nn.Module, frozen: bool = True) -> None:
    for module in net.modules():
        if isinstance(module, _GroupNorm):
            module.frozen = frozen


def head_outputs(
    model: HydraPicker,
    image: np.ndarray | torch.Tensor,
    head: str = GENERIC,
    *,
    tile_size: int = PICK_TILE_SIZE,
    one_pass_size: int | None = None,
    stats_size: int | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> torch.Tensor:
    """Run trunk + ``head`` over a prepared (rescaled, normalised) image: float32 ``[3, ceil(H/16), ceil(W/16)]`` on the CPU.

    An image no larger than ``one_pass_size`` (default ``tile_size``) in both axes goes through
    in one pass. A larger one: GroupNorm statistics from a pass over its central ``stats_size``
    window (default ``tile_size``), then tiles of at most ``tile_size`` px with those statistics
    frozen (see the module docstring). Picking passes ``PICK_ONE_PASS_SIZE`` (2048) and
    ``PICK_TILE_SIZE`` (1536): micrographs up to 2048 px keep their whole-image statistics, and
    a larger one costs the memory of a 1536-px pass, not a 2048-px one. ``bf16`` runs
    the convs under bfloat16 autocast: faster on CPUs with bf16 units, scores move slightly
    (benchmarks/REPORT.md records by how much).
    """
    model.head(head)  # a clear error for an unknown head before any work
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 2:
        raise HydraPickerError(f"expected a 2-D prepared micrograph, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    stride = model.stride
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    net = _with_measured_norms(nn.Sequential(model.trunk, model.head(head))).to(device).eval()

    def run(crop: torch.Tensor) -> torch.Tensor:
        with autocast:
            return net(model.pad(crop[None, None].to(device))).float()[0].cpu()

    with torch.inference_mode():
        one_pass = one_pass_size or tile_size
        if rows <= one_pass and cols <= one_pass:
            return run(x)
        window = stats_size or tile_size
        r0 = max(0, (rows - window) // 2) // stride * stride
        c0 = max(0, (cols - window) // 2) // stride * stride
        with large_blocks_returned():  # the window's and the tiles' maps differ in size (see there)
            run(x[r0 : r0 + window, c0 : c0 + window])
            _freeze_norms(net)
            margin = tile_margin(model)
            out = torch.empty(3, -(-rows // stride), -(-cols // stride))
            for r_start, r_stop, r_first, r_last in tile_spans(rows, tile_size, margin, stride):
                for c_start, c_stop, c_first, c_last in tile_spans(cols, tile_size, margin, stride):
                    tile = run(x[r_start:r_stop, c_start:c_stop])
                    i0, j0 = r_first - r_start // stride, c_first - c_start // stride
                    out[:, r_first:r_last, c_first:c_last] = tile[
                        :, i0 : i0 + r_last - r_first, j0 : j0 + c_last - c_first
                    ]
        return out


def size_map(model: HydraPicker, image: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """The size head over a whole prepared image: float32 ``[ceil(H/32), ceil(W/32)]`` log apparent size, on the CPU.

    One pass however large the image: the size head shrinks it 4x first, so a 4096² micrograph
    costs it about what a 1024² one costs the trunk.
    """
    if model.size_head is None:
        raise HydraPickerError("the model has no size head")
    x = torch.as_tensor(image, dtype=torch.float32)[None, None].to(device)
    with torch.inference_mode():
        return model.size_head.to(device).eval()(model.pad(x)).float()[0, 0].cpu()
