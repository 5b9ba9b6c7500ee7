"""The in-memory type for the picks of one micrograph.

Convention, stated once: ``x`` is the column and ``y`` the row of the micrograph array as
mrcfile returns it (origin at the first stored pixel, pixel centres at integers), in the
micrograph's original pixel frame. Readers and writers of each peer format convert to and
from this and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Picks", "whole_pixel_box"]


@dataclass
class Picks:
    """Particle picks (or true particles) of one micrograph.

    Attributes:
        micrograph: the micrograph's name (its file stem), the key that matches files.
        x: float64 ``[n]`` particle centre columns.
        y: float64 ``[n]`` particle centre rows.
        score: float64 ``[n]``; higher is more confident. Truth files without scores get 1.
        box_size: box edge in pixels (square boxes), when known.
        shape: ``(rows, cols)`` of the micrograph, when known (needed by ``.cs`` and y-flips).
    """

    micrograph: str
    x: np.ndarray
    y: np.ndarray
    score: np.ndarray = field(default=None)  # type: ignore[assignment]
    box_size: float | None = None
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        if self.score is None:
            self.score = np.ones_like(self.x)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        if not (len(self.x) == len(self.y) == len(self.score)):
            raise ValueError(
                f"Picks({self.micrograph!r}): x, y, score lengths differ "
                f"({len(self.x)}, {len(self.y)}, {len(self.score)})"
            )
        if self.shape is not None:
            self.shape = (int(self.shape[0]), int(self.shape[1]))

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls, micrograph: str, box_size: float | None = None, shape: tuple[int, int] | None = None) -> Picks:
        return cls(micrograph, np.zeros(0), np.zeros(0), np.zeros(0), box_size, shape)

    def select(self, mask_or_index: np.ndarray) -> Picks:
        """A new Picks holding the rows chosen by a boolean mask or an index array."""
        return Picks(
            self.micrograph,
            self.x[mask_or_index],
            self.y[mask_or_index],
            self.score[mask_or_index],
            self.box_size,
            self.shape,
        )

    def above(self, threshold: float) -> Picks:
        """Picks whose score is at least ``threshold``."""
        return self.select(self.score >= threshold)

    def sorted_by_score(self) -> Picks:
        """Picks in descending score (stable for ties)."""
        return self.select(np.argsort(-self.score, kind="stable"))


def whole_pixel_box(box_size: float) -> int:
    """The whole-pixel box edge nearest ``box_size`` (at least 1): what BOX files carry (EMAN and crYOLO expect it)."""
    return max(1, int(np.floor(float(box_size) + 0.5)))
