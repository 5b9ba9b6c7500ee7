"""Realistic synthetic labelled micrographs from atomic models (``hydrapicker simulate``).

Modules, one job each: :mod:`.structure` (atoms from PDB/mmCIF, the particle-size convention),
:mod:`.potential` (projected potential), :mod:`.specimen` (placement, ice, carbon, junk),
:mod:`.optics` (CTF), :mod:`.detector` (crop, MTF, shot noise), :mod:`.micrograph` (one
micrograph with its truth), :mod:`.render` (the renderings pickers meet), :mod:`.dataset`
(writing a dataset), :mod:`.config` (settings and renderings), :mod:`.collection` (the
training collection), :mod:`.blocks` (full-field maps a block of rows at a time, so that a
K3-size micrograph fits in a few GB). docs/simulation.md records why it is built this way.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ASYMMETRIC_UNIT_CHAINS",
    "AtomicModel",
    "RENDERINGS",
    "Rendering",
    "SimulatedMicrograph",
    "SimulationConfig",
    "load_model",
    "particle_diameter",
    "render",
    "render_image",
    "rendering_by_name",
    "simulate_dataset",
    "simulate_micrograph",
]

# Names are loaded on first use, so that importing one light module of this package (the CLI
# does, to build --help) does not import the heavy ones.
_HOMES = {
    "ASYMMETRIC_UNIT_CHAINS": "hydrapicker.simulate.config",
    "AtomicModel": "hydrapicker.simulate.structure",
    "RENDERINGS": "hydrapicker.simulate.config",
    "Rendering": "hydrapicker.simulate.config",
    "SimulatedMicrograph": "hydrapicker.simulate.micrograph",
    "SimulationConfig": "hydrapicker.simulate.config",
    "load_model": "hydrapicker.simulate.structure",
    "particle_diameter": "hydrapicker.simulate.structure",
    "render": "hydrapicker.simulate.render",
    "render_image": "hydrapicker.simulate.render",
    "rendering_by_name": "hydrapicker.simulate.config",
    "simulate_dataset": "hydrapicker.simulate.dataset",
    "simulate_micrograph": "hydrapicker.simulate.micrograph",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
