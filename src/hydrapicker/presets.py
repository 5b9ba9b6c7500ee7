"""Network sizes: the preset registry (every preset name and its numbers live here and nowhere else).

``paper`` is the architecture of the paper (section 3.1); the others are smaller versions that
train on a laptop CPU. Kept apart from :mod:`hydrapicker.model` so that configs and the CLI can
name presets without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hydrapicker.errors import HydraPickerError

__all__ = ["PRESETS", "ModelPreset", "get_preset"]


@dataclass(frozen=True)
class ModelPreset:
    """Widths and depths of a HydraPicker network.

    Attributes:
        name: registry key.
        trunk_channels: channels of every trunk conv (paper: 64).
        residual_blocks: residual blocks after the two stem convs (paper: 3).
        head_channels: channels of the head's stride-2 blocks (paper: 128, 256, 512, 1024);
            their number fixes the output stride at ``2 ** len(head_channels)``.
        groups: GroupNorm groups (Wu & He's default 32, capped by the channel count).
        dropout: dropout probability in the head blocks (the paper does not give it).
    """

    name: str
    trunk_channels: int
    residual_blocks: int
    head_channels: tuple[int, ...]
    groups: int = 32
    dropout: float = 0.1

    @property
    def stride(self) -> int:
        return 2 ** len(self.head_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelPreset:
        data = dict(data)
        data["head_channels"] = tuple(data["head_channels"])
        return cls(**data)


#: The preset registry: every preset name and its numbers live here and nowhere else.
PRESETS: dict[str, ModelPreset] = {
    "paper": ModelPreset("paper", trunk_channels=64, residual_blocks=3, head_channels=(128, 256, 512, 1024)),
    "small": ModelPreset("small", trunk_channels=32, residual_blocks=3, head_channels=(32, 64, 128, 256), groups=8),
    # tiny: the head is cheap (it runs at stride 2..16), so it keeps more width than the trunk.
    "tiny": ModelPreset("tiny", trunk_channels=16, residual_blocks=2, head_channels=(32, 64, 128, 128), groups=8),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; a user error naming the choices if there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise HydraPickerError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})") from None
