"""Files in and out: micrographs (MRC, TIFF, PNG/JPEG) and particle coordinates.

Every writer is atomic (see :mod:`hydrapicker.io.files`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Micrograph",
    "Picks",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "guess_format",
    "is_micrograph_path",
    "micrograph_stem",
    "read_micrograph",
    "read_picks",
    "write_mrc",
    "write_picks",
]

# Names are loaded on first use, so that importing one light module of this package (the CLI
# does, to build --help) does not import the heavy ones.
_HOMES = {
    "Micrograph": "hydrapicker.io.micrograph",
    "Picks": "hydrapicker.io.picks",
    "atomic_path": "hydrapicker.io.files",
    "atomic_write_bytes": "hydrapicker.io.files",
    "atomic_write_text": "hydrapicker.io.files",
    "guess_format": "hydrapicker.io.coordinates",
    "is_micrograph_path": "hydrapicker.io.micrograph",
    "micrograph_stem": "hydrapicker.io.micrograph",
    "read_micrograph": "hydrapicker.io.micrograph",
    "read_picks": "hydrapicker.io.coordinates",
    "write_mrc": "hydrapicker.io.micrograph",
    "write_picks": "hydrapicker.io.coordinates",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
