"""The training collection: every usable structure under several imaging conditions.

Each (structure, condition) pair is one dataset (``sim-<id>-c<k>``) whose pixel size, defocus,
dose, ice, crowding and rendering are drawn from ``SeedSequence([seed, structure index, k])``:
the rendering is a property of a dataset, as it is for real data (one export pipeline per
session), and about half the datasets are plain float sums. Micrographs are spread over
processes; any one of them is reproducible on its own (see :mod:`.dataset`). A top-level
``collection.toml`` includes every dataset's ``dataset.toml``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hydrapicker.io.files import atomic_write_text
from hydrapicker.simulate.config import SimulationConfig
from hydrapicker.simulate.dataset import DatasetPlan, finish_dataset, plan_dataset, write_micrograph
from hydrapicker.simulate.render import random_rendering
from hydrapicker.simulate.structure import structure_id

__all__ = ["CollectionResult", "condition_config", "plan_collection", "simulate_collection", "structure_files"]

_MODEL_SUFFIXES = (".pdb", ".pdb.gz", ".cif", ".cif.gz", ".ent", ".ent.gz", ".mmcif", ".mmcif.gz")


@dataclass(frozen=True)
class CollectionResult:
    project: Path
    datasets: int
    micrographs: int
    seconds: float


def structure_files(folder: str | os.PathLike, only: list[str] | None = None) -> list[Path]:
    """Model files in ``folder`` (sorted), optionally only the given structure ids."""
    files = sorted(p for p in Path(folder).iterdir() if p.name.lower().endswith(_MODEL_SUFFIXES))
    if only:
        wanted = {o.lower() for o in only}
        files = [p for p in files if structure_id(p).lower() in wanted]
    return files


def condition_config(diameter: float, rng: np.random.Generator, size: int = 1024) -> SimulationConfig:
    """One imaging condition: particle 24-64 px across, realistic ranges, a random rendering."""
    rendering = random_rendering(rng)
    diameter_px = float(np.exp(rng.uniform(np.log(24.0), np.log(64.0))))
    pixel_size = float(np.clip(diameter / diameter_px, 0.6, 12.0))
    defocus = float(rng.uniform(0.8, 3.0))
    dose = float(rng.uniform(25.0, 60.0))
    ice = float(rng.uniform(200.0, 700.0))
    crowd = float(rng.uniform(0.05, 0.4))
    return SimulationConfig(
        shape=(size, size),
        pixel_size=pixel_size,
        defocus_um=(max(0.4, defocus - 0.4), defocus + 0.4),
        dose=(dose, min(dose + 15.0, 80.0)),
        ice_thickness=(ice, ice * 1.3),
        coverage=(crowd / 3, crowd),
        b_factor=(40.0, 160.0),
        rendering=rendering,
    )


def plan_collection(
    structures: list[Path], out_dir: str | os.PathLike, conditions: int, seed: int, size: int = 1024
) -> list[DatasetPlan]:
    """Fix every dataset's plan (loads each model once, to size it)."""
    plans = []
    for s_index, path in enumerate(structures):
        for k in range(conditions):
            rng = np.random.default_rng(np.random.SeedSequence([seed, s_index, k]))
            name = f"sim-{structure_id(path)}-c{k}"
            plan, _model = plan_dataset(path, Path(out_dir) / name, SimulationConfig(), seed, name)
            config = condition_config(plan.diameter, rng, size)
            plans.append(
                DatasetPlan(
                    plan.name,
                    plan.model_path,
                    plan.chains,
                    config,
                    int(rng.integers(2**31)),
                    plan.diameter,
                    plan.out_dir,
                )
            )
    return plans


_MODELS: dict = {}


def _work(task: tuple[DatasetPlan, int]) -> tuple[str, dict]:
    from hydrapicker.simulate.structure import load_model

    plan, index = task
    key = (plan.model_path, plan.chains)
    if key not in _MODELS:
        _MODELS.clear()  # tasks arrive grouped by dataset; keep one model per process
        _MODELS[key] = load_model(plan.model_path, plan.chains)
    return plan.name, write_micrograph(plan, _MODELS[key], index, workers=1)


def _single_threaded() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def simulate_collection(
    structures: list[Path],
    out_dir: str | os.PathLike,
    *,
    conditions: int = 3,
    micrographs: int = 10,
    seed: int = 0,
    processes: int = 2,
    size: int = 1024,
    progress: bool = True,
) -> CollectionResult:
    """Simulate ``micrographs`` per condition, ``conditions`` per structure, into ``out_dir``."""
    import multiprocessing

    from hydrapicker.progress import Progress

    start = time.perf_counter()
    plans = plan_collection(structures, out_dir, conditions, seed, size)
    tasks = [(plan, i) for plan in plans for i in range(micrographs)]
    summaries: dict[str, list[dict]] = {plan.name: [] for plan in plans}
    bar = Progress(len(tasks), "training collection", enabled=progress)
    if processes > 1:
        context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
        with context.Pool(processes, initializer=_single_threaded) as pool:
            for name, row in pool.imap_unordered(_work, tasks, chunksize=1):
                summaries[name].append(row)
                bar.update()
    else:
        for task in tasks:
            name, row = _work(task)
            summaries[name].append(row)
            bar.update()
    bar.close()
    includes = []
    for plan in plans:
        toml = finish_dataset(plan, summaries[plan.name], meta={"collection_seed": seed})
        includes.append(toml.relative_to(Path(out_dir)).as_posix())
    project = Path(out_dir) / "collection.toml"
    lines = [
        f"# Training collection: {len(plans)} simulated datasets, seed {seed}.",
        "include = [",
        *[f'  "{p}",' for p in includes],
        "]",
    ]
    atomic_write_text(project, "\n".join(lines) + "\n")
    return CollectionResult(project, len(plans), len(tasks), time.perf_counter() - start)
