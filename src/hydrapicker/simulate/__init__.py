"""Realistic synthetic labelled micrographs from atomic models (``hydrapicker simulate``).

Modules, one job each: :mod:`.structure` (atoms from PDB/mmCIF, the particle-size convention),
:mod:`.potential` (projected potential), :mod:`.specimen` (placement, ice, carbon, junk),
:mod:`.optics` (CTF), :mod:`.detector` (crop, MTF, shot noise), :mod:`.micrograph` (one
micrograph with its truth), :mod:`.render` (the renderings pickers meet), :mod:`.dataset`
(writing a dataset), :mod:`.config` (settings and renderings), :mod:`.collection` (the
training collection). SIMULATION.md (shared notes) records why it is built this way.
"""

from hydrapicker.simulate.config import ASYMMETRIC_UNIT_CHAINS, RENDERINGS, Rendering, SimulationConfig, rendering_by_name
from hydrapicker.simulate.dataset import simulate_dataset
from hydrapicker.simulate.micrograph import SimulatedMicrograph, simulate_micrograph
from hydrapicker.simulate.render import render, render_image
from hydrapicker.simulate.structure import AtomicModel, load_model, particle_diameter

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
