"""Row blocks: how the simulation makes full-field maps without holding their temporaries whole.

At K3 size the fine grid is about 8640 x 12000 pixels, so every float32 map of it is 400 MB and
every float64 or complex64 one 800 MB. Maps that are pure per-pixel functions (transfer
functions, ice, the exit wave) are therefore made one block of rows at a time into their
destination: each pixel goes through the same operations as a whole-field expression would, so
the result is the same bit for bit, and only one block's temporaries are alive at once.
"""

from __future__ import annotations

__all__ = ["BLOCK_PIXELS", "row_blocks"]

#: Pixels per block: a float64 temporary of one block is 8 MB, small beside the maps it fills.
BLOCK_PIXELS: int = 1 << 20


def row_blocks(rows: int, row_length: int, pixels: int | None = None) -> list[slice]:
    """Consecutive slices covering ``range(rows)``, each of about ``pixels`` (default
    :data:`BLOCK_PIXELS`, read at call time) // ``row_length`` rows."""
    step = max(1, (BLOCK_PIXELS if pixels is None else pixels) // max(1, row_length))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]
