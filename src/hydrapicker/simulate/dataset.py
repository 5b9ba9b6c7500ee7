"""Write a labelled synthetic dataset in the project's data layout.

``DIR/micrographs/NAME.mrc`` (or ``.png``/``.jpg`` for 8-bit renderings),
``DIR/coordinates/NAME.star`` (true particles: ``rlnMicrographName``, ``rlnCoordinateX/Y``
with x = column and y = row of the stored image, ``rlnAngleRot/Tilt/Psi``,
``rlnDefocusU/V/Angle``), ``DIR/coordinates/NAME_decoys.star`` (what is not a particle:
``rlnClassNumber`` from :data:`~hydrapicker.simulate.specimen.DECOY_KINDS` and a
``hpDecoyKind`` name; project loaders skip ``*_decoys.*``), ``DIR/dataset.toml`` (a dataset
entry ``train`` reads directly) and ``DIR/config.json`` (settings, seed, version).

Micrograph ``i`` of a dataset is drawn from ``SeedSequence([seed, i])``, so any one of them can
be remade alone, in any order, by any process.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hydrapicker import __version__
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.star import write_star
from hydrapicker.simulate.config import ASYMMETRIC_UNIT_CHAINS, SimulationConfig
from hydrapicker.simulate.micrograph import simulate_micrograph
from hydrapicker.simulate.render import render, write_rendered
from hydrapicker.simulate.specimen import DECOY_KINDS
from hydrapicker.simulate.structure import AtomicModel, load_model, particle_diameter, structure_id

__all__ = [
    "DatasetPlan",
    "finish_dataset",
    "plan_dataset",
    "simulate_dataset",
    "write_micrograph",
    "write_dataset_toml",
    "micrograph_name",
]


@dataclass(frozen=True)
class DatasetPlan:
    """What :func:`write_micrograph` needs for any micrograph of one dataset."""

    name: str
    model_path: str
    chains: str | None
    config: SimulationConfig
    seed: int
    diameter: float  # Å, :func:`particle_diameter`
    out_dir: str


def micrograph_name(dataset: str, index: int) -> str:
    return f"{dataset}_{index:04d}"


def plan_dataset(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SimulationConfig,
    seed: int,
    name: str | None = None,
) -> tuple[DatasetPlan, AtomicModel]:
    """Load the model (chain selection for known multi-copy asymmetric units) and fix the plan."""
    sid = structure_id(model_path)
    chains = config.chains if config.chains is not None else ASYMMETRIC_UNIT_CHAINS.get(sid.lower())
    model = load_model(model_path, chains)
    plan = DatasetPlan(
        name=name or f"sim-{sid}",
        model_path=str(model_path),
        chains=chains,
        config=config,
        seed=int(seed),
        diameter=particle_diameter(model),
        out_dir=str(out_dir),
    )
    return plan, model


def write_micrograph(plan: DatasetPlan, model: AtomicModel, index: int, workers: int = 1) -> dict:
    """Simulate, render and write micrograph ``index`` of the dataset; returns a summary row."""
    import pandas as pd

    rng = np.random.default_rng(np.random.SeedSequence([plan.seed, index]))
    sim = simulate_micrograph(model, plan.config, rng, diameter=plan.diameter, workers=workers)
    rendered, particles, decoys = render(sim, plan.config.rendering, rng)
    name = micrograph_name(plan.name, index)
    out = Path(plan.out_dir)
    file_name = name + plan.config.rendering.suffix
    write_rendered(out / "micrographs" / file_name, rendered)

    p = sim.params
    n = len(particles["x"])
    table = pd.DataFrame(
        {
            "rlnMicrographName": [file_name] * n,
            "rlnCoordinateX": particles["x"],
            "rlnCoordinateY": particles["y"],
            "rlnAngleRot": particles["rot"],
            "rlnAngleTilt": particles["tilt"],
            "rlnAnglePsi": particles["psi"],
            "rlnDefocusU": np.full(n, p.defocus_u),
            "rlnDefocusV": np.full(n, p.defocus_v),
            "rlnDefocusAngle": np.full(n, p.astigmatism_angle),
        }
    )
    m = len(decoys["x"])
    decoy_table = pd.DataFrame(
        {
            "rlnMicrographName": [file_name] * m,
            "rlnCoordinateX": decoys["x"],
            "rlnCoordinateY": decoys["y"],
            "rlnClassNumber": [DECOY_KINDS[k] for k in decoys["kind"]],
            "hpDecoyKind": [str(k) for k in decoys["kind"]],
            "hpDecoyDiameterPx": decoys["diameter"],
        }
    )
    for path, frame in (
        (out / "coordinates" / f"{name}.star", table),
        (out / "coordinates" / f"{name}_decoys.star", decoy_table),
    ):
        write_star(path, {"": frame}, float_format="%.3f")
    return {"name": name, "particles": n, "decoys": m, **p.as_dict()}


def write_dataset_toml(plan: DatasetPlan, meta: dict | None = None) -> Path:
    """Write ``dataset.toml`` (one ``[[dataset]]`` entry, globs relative to its folder)."""
    config = plan.config
    suffix = config.rendering.suffix
    meta = {
        "simulated": True,
        "structure": structure_id(plan.model_path),
        "rendering": config.rendering.name,
        "decoys": "coordinates/*_decoys.star",
        "diameter_convention": "median projected max width (hydrapicker.simulate.particle_diameter)",
        **(meta or {}),
    }
    lines = [
        f"# Simulated by hydrapicker {__version__}; see config.json for every setting.",
        "[[dataset]]",
        f'name = "{plan.name}"',
        f'micrographs = "micrographs/*{suffix}"',
        'coordinates = "coordinates/*.star"  # *_decoys.star (not particles) are skipped by loaders',
        'format = "star"',
        f"pixel_size = {config.pixel_size:.6g}",
        f"diameter = {plan.diameter:.1f}",
        "",
        "[dataset.meta]",
    ]
    for key, value in meta.items():
        lines.append(f"{key} = {_toml_value(value)}")
    path = Path(plan.out_dir) / "dataset.toml"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _config_record(plan: DatasetPlan, n_micrographs: int, summaries: list[dict]) -> dict:
    import gemmi

    return {
        "hydrapicker_version": __version__,
        "gemmi_version": gemmi.__version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command_line": sys.argv,
        "dataset": plan.name,
        "model": plan.model_path,
        "chains": plan.chains,
        "seed": plan.seed,
        "n_micrographs": n_micrographs,
        "diameter_A": plan.diameter,
        "config": dataclasses.asdict(plan.config),
        "micrographs": summaries,
    }


def simulate_dataset(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SimulationConfig,
    n_micrographs: int,
    seed: int = 0,
    *,
    name: str | None = None,
    progress: bool = True,
    workers: int = -1,
    overwrite: bool = False,
) -> Path:
    """Simulate ``n_micrographs`` micrographs of one model into ``out_dir``; returns ``dataset.toml``.

    ``out_dir`` must not hold micrographs already (a dataset's glob would mix two runs), nor the
    ``config.json`` / ``dataset.toml`` this writes (another run's, or a file of the user's), unless
    ``overwrite``, which first removes the micrograph and coordinate files found there.

    Raises:
        HydraPickerError: bad model file or settings, or an occupied ``out_dir`` (one line).
    """
    from hydrapicker.progress import Progress

    if int(n_micrographs) != n_micrographs or n_micrographs < 1:
        raise HydraPickerError(f"number of micrographs {n_micrographs!r}: must be a whole number >= 1")
    plan, model = plan_dataset(model_path, out_dir, config, seed, name)
    old = [p for sub in ("micrographs", "coordinates") for p in sorted((Path(out_dir) / sub).glob("*")) if p.is_file()]
    records = [file for file in ("config.json", "dataset.toml") if (Path(out_dir) / file).is_file()]
    if (old or records) and not overwrite:
        held = [f"{len(old)} micrograph/coordinate file(s)"] if old else []
        them = "them" if len(old) + len(records) > 1 else "it"
        raise HydraPickerError(
            f"{out_dir}: already holds {' and '.join(held + records)} (use --overwrite to replace {them})"
        )
    for path in old:
        path.unlink()
    if workers == -1:
        workers = os.cpu_count() or 1
    summaries = []
    with Progress(n_micrographs, f"simulate {plan.name}", enabled=progress) as bar:
        for index in range(n_micrographs):
            summaries.append(write_micrograph(plan, model, index, workers=workers))
            bar.update()
    return finish_dataset(plan, summaries)


def finish_dataset(plan: DatasetPlan, summaries: list[dict], meta: dict | None = None) -> Path:
    """Write ``config.json`` (settings, seed, version, command line, per-micrograph draws) and
    ``dataset.toml`` once every micrograph is written; returns the TOML's path."""
    summaries = sorted(summaries, key=lambda row: row["name"])
    record = _config_record(plan, len(summaries), summaries)
    atomic_write_text(Path(plan.out_dir) / "config.json", json.dumps(record, indent=2, default=str) + "\n")
    return write_dataset_toml(plan, meta)
