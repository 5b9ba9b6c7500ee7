"""The particle's diameter as a user gives it, and the rescale factor it sets.

Pure arithmetic, no arrays: the CLI builds a :class:`ParticleSize` from its options before
anything heavy is imported, and picking, fine-tuning and adaptation all take one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hydrapicker.errors import HydraPickerError

__all__ = ["ParticleSize", "rescale_factor"]


def rescale_factor(pixel_size: float, diameter_A: float, target_diameter_px: float) -> float:
    """New pixels per stored pixel that make a ``diameter_A`` particle ``target_diameter_px`` across."""
    for name, value in (("pixel size", pixel_size), ("diameter", diameter_A), ("target diameter", target_diameter_px)):
        if not (math.isfinite(value) and value > 0):
            raise HydraPickerError(f"{name} must be positive, got {value!r}")
    return float(target_diameter_px) * float(pixel_size) / float(diameter_A)


@dataclass(frozen=True)
class ParticleSize:
    """The particle diameter as a user gives it: in Å (with the pixel size) or in stored pixels.

    Attributes:
        diameter_A: the diameter in Å; needs a pixel size, given here or read from each file.
        diameter_px: the diameter in stored micrograph pixels (no pixel size needed).
        pixel_size: Å per stored pixel as given; None: each micrograph's own (its MRC header).
    """

    diameter_A: float | None = None
    diameter_px: float | None = None
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        if (self.diameter_A is None) == (self.diameter_px is None):
            raise HydraPickerError(
                "give the particle diameter either in Å (with the pixel size) or in pixels, not both or neither"
            )

    @property
    def in_angstrom(self) -> bool:
        """True when the diameter is in Å (so a pixel size is needed)."""
        return self.diameter_A is not None

    @property
    def needs_pixel_size(self) -> bool:
        """True when the diameter is in Å and no pixel size was given: each file must carry one."""
        return self.diameter_A is not None and self.pixel_size is None

    def given(self) -> tuple[float, str]:
        """The diameter as given and its unit (``"Å"`` or ``"px"``)."""
        return (self.diameter_A, "Å") if self.diameter_A is not None else (self.diameter_px, "px")  # type: ignore[return-value]

    def scale(self, target_diameter_px: float, file_pixel_size: float | None = None) -> float:
        """Rescaled px per stored px that make the particle ``target_diameter_px`` across.

        ``file_pixel_size`` (the micrograph's own) is used when none was given.
        """
        if self.diameter_px is not None:
            return rescale_factor(1.0, self.diameter_px, target_diameter_px)
        pixel_size = self.pixel_size if self.pixel_size is not None else file_pixel_size
        if pixel_size is None:
            raise HydraPickerError(
                f"a particle diameter of {self.diameter_A} Å needs the pixel size (--pixel-size, Å/px)"
            )
        return rescale_factor(pixel_size, self.diameter_A, target_diameter_px)  # type: ignore[arg-type]

    def diameter_in_px(self, file_pixel_size: float | None = None) -> float:
        """The diameter in stored pixels."""
        return 1.0 / self.scale(1.0, file_pixel_size)
