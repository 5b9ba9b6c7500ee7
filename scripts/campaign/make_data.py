"""Generic model v2's training data: a seeded, resumable recipe (issue 18). Never committed.

    .venv/bin/python scripts/campaign/make_data.py --out data-generated/campaign [--processes 2]

Rerunning continues: a micrograph whose file and coordinates are already there is not
simulated again (each one is drawn from its own seed, so the result is the same either way).
The recipe, in groups of datasets (one dataset = one structure under one imaging condition):

- ``gen``: every training structure under several general conditions (particle 20-72 px,
  defocus 0.5-3.5 um, ice 150-1000 A, sparse to crowded, a random rendering incl. 16-bit).
- ``hollow``: apoferritin (4v1w, 6z6u) finely sampled (1-2.5 A/px, 45-75 px across: the shell
  resolved, the interior near background) and the rings 4blo / 3wip (30-60 px), crowded up to
  a touching monolayer, defocus up to 4 um (fringes between neighbours).
- ``crowd``: every structure once as a touching monolayer at high defocus.
- ``faint``: every structure once as small particles (16-28 px) in thick ice at low dose
  (like the bundled T20S frame).
- ``empty``: particle-free simulated micrographs (carbon, ice and ethane contamination,
  crystalline ice, aggregates), all background.
- ``real-empty``: real particle-free micrographs (empty holes, crystalline ice) from
  ``data/real/cianfrocco_quality_examples`` (MIT; the first two of each class, sorted by
  name; the other three of each are held out for validation), all background, listed at
  several particle diameters since they have no pixel size (12 entries: about one batch in
  thirty comes from real empty ice).
- ``realbg``: real texture under simulated particles (cycle 2): each structure's ``gen``
  micrographs of one condition, cropped to 494 x 512, plus one of the four training real
  negatives (flipped at random, weight 0.3-1.5 of the simulated image's spread), labels kept.
  Real negatives alone would let the model learn "real pixels mean no particle"; with these,
  real ice and hole texture is a nuisance seen under particles too. Made from the simulated
  micrographs already on disk (no new simulation), also by ``--project-only``.

Held out entirely: 1jnb and 6msm (the benchmark's unseen proteins) and 5a1a (beta-gal, so the
bundled EMPIAR-10017 frames stay zero-shot). Writes OUT/campaign.toml: every dataset, its last
micrograph as the validation split, the real negatives in train only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import starfile

from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.micrograph import read_micrograph, write_mrc
from hydrapicker.io.star import write_star
from hydrapicker.simulate.collection import structure_files
from hydrapicker.simulate.config import Rendering, SimulationConfig
from hydrapicker.simulate.dataset import DatasetPlan, finish_dataset, micrograph_name, plan_dataset, write_micrograph
from hydrapicker.simulate.render import random_rendering
from hydrapicker.simulate.structure import load_model, structure_id

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = ("1jnb", "6msm", "5a1a")
HOLLOW = ("4v1w", "6z6u")
RINGS = ("4blo", "3wip")
REAL_NEGATIVES = ROOT / "data" / "real" / "cianfrocco_quality_examples"
NEGATIVE_CLASSES = ("3Empty_no_ice", "4Crystalline_ice")
NEGATIVES_FOR_TRAINING = 2  # per class, first by name; the rest are the validation suite's
NEGATIVE_DIAMETERS_PX = (12, 14, 16, 20, 24, 28, 32, 38, 44, 52, 60, 72)
REALBG_WEIGHT = (0.3, 1.5)  # real texture's spread relative to the simulated micrograph's


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def campaign_rendering(rng: np.random.Generator) -> Rendering:
    """The collection's random rendering, with a 16-bit stretched-and-clipped export one time in eight."""
    if rng.random() < 0.125:
        lo, hi = float(rng.uniform(0.0, 2.0)), float(rng.uniform(98.0, 100.0))
        return Rendering("tif16", bin=int(rng.choice([1, 2])), sixteen_bit=True, stretch=(lo, hi))
    return random_rendering(rng)


def condition(group: str, diameter_A: float, rng: np.random.Generator, size: int) -> SimulationConfig:
    """One imaging condition of ``group`` for a particle ``diameter_A`` across."""
    if group == "hollow":
        diameter_px = rng.uniform(45.0, 75.0)
        pixel_size = float(np.clip(diameter_A / diameter_px, 1.0, 2.5))
        coverage = (0.25, float(rng.uniform(0.4, 0.6)))
        min_distance = (0.78, 0.95)
        defocus = float(rng.uniform(1.0, 4.0))
        ice = float(rng.uniform(250.0, 700.0))
    elif group == "ring":
        pixel_size = float(np.clip(diameter_A / rng.uniform(30.0, 60.0), 0.8, 6.0))
        coverage = (0.05, float(rng.uniform(0.2, 0.6)))
        min_distance = (0.78, 1.0)
        defocus = float(rng.uniform(0.8, 3.5))
        ice = float(rng.uniform(200.0, 800.0))
    elif group == "crowd":
        pixel_size = float(np.clip(diameter_A / _log_uniform(rng, 24.0, 64.0), 0.6, 12.0))
        coverage = (0.45, 0.6)
        min_distance = (0.75, 0.85)
        defocus = float(rng.uniform(2.5, 4.0))
        ice = float(rng.uniform(250.0, 700.0))
    elif group == "faint":
        pixel_size = float(np.clip(diameter_A / _log_uniform(rng, 16.0, 28.0), 0.6, 12.0))
        coverage = (0.1, float(rng.uniform(0.3, 0.55)))
        min_distance = (0.78, 1.0)
        defocus = float(rng.uniform(1.0, 3.0))
        ice = float(rng.uniform(700.0, 1200.0))
    elif group == "empty":
        pixel_size = float(np.clip(diameter_A / _log_uniform(rng, 12.0, 64.0), 0.6, 12.0))
        coverage = (0.0, 0.0)
        min_distance = (0.75, 1.0)
        defocus = float(rng.uniform(0.5, 3.5))
        ice = float(rng.uniform(150.0, 1000.0))
    else:  # gen
        pixel_size = float(np.clip(diameter_A / _log_uniform(rng, 20.0, 72.0), 0.6, 12.0))
        coverage = (0.03, float(rng.uniform(0.1, 0.55)))
        min_distance = (0.75, 1.0)
        defocus = float(rng.uniform(0.5, 3.5))
        ice = float(rng.uniform(150.0, 1000.0))
    dose = float(rng.uniform(20.0, 35.0)) if group == "faint" else float(rng.uniform(25.0, 65.0))
    extra = {}
    if group == "empty":
        extra = {"carbon_probability": 0.6, "contamination_probability": 0.8, "aggregate_probability": 0.5}
    return SimulationConfig(
        shape=(size, size),
        pixel_size=pixel_size,
        defocus_um=(max(0.3, defocus - 0.4), defocus + 0.4),
        dose=(dose, min(dose + 15.0, 80.0)),
        ice_thickness=(ice, ice * 1.3),
        coverage=(min(coverage), max(coverage)),
        min_distance=min_distance,
        b_factor=(40.0, 180.0),
        rendering=campaign_rendering(rng),
        **extra,
    )


def plan(structures: list[Path], out: Path, seed: int, size: int, general: int, hollow: int) -> list[DatasetPlan]:
    """Every simulated dataset of the recipe, each drawn from SeedSequence([seed, group, structure, k])."""
    by_id = {structure_id(p).lower(): p for p in structures}
    groups: list[tuple[str, Path, int]] = []
    for path in structures:
        groups += [("gen", path, k) for k in range(general)]
        groups += [("crowd", path, 0), ("faint", path, 0), ("empty", path, 0)]
    for sid in HOLLOW:
        groups += [("hollow", by_id[sid], k) for k in range(hollow)]
    for sid in RINGS:
        groups += [("ring", by_id[sid], k) for k in range(hollow // 2)]
    names = ["gen", "crowd", "faint", "empty", "hollow", "ring"]
    plans = []
    for group, path, k in groups:
        s_index = structures.index(path)
        rng = np.random.default_rng(np.random.SeedSequence([seed, names.index(group), s_index, k]))
        name = f"{group}-{structure_id(path)}-c{k}"
        base, _ = plan_dataset(path, out / name, SimulationConfig(), seed, name)
        config = condition(group, base.diameter, rng, size)
        plans.append(
            DatasetPlan(
                name, base.model_path, base.chains, config, int(rng.integers(2**31)), base.diameter, base.out_dir
            )
        )
    return plans


_MODELS: dict = {}


def _work(task: tuple[DatasetPlan, int]) -> tuple[str, dict]:
    plan_, index = task
    key = (plan_.model_path, plan_.chains)
    if key not in _MODELS:  # every structure stays loaded: tasks come round-robin over datasets
        _MODELS[key] = load_model(plan_.model_path, plan_.chains)
    return plan_.name, write_micrograph(plan_, _MODELS[key], index, workers=1)


def _done(plan_: DatasetPlan, index: int) -> bool:
    name = micrograph_name(plan_.name, index)
    out = Path(plan_.out_dir)
    return (out / "micrographs" / (name + plan_.config.rendering.suffix)).exists() and (
        out / "coordinates" / f"{name}_decoys.star"
    ).exists()


def _single_threaded() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def real_negatives(out: Path) -> list[str]:
    """Copy the training share of the real particle-free micrographs, with empty coordinate files."""
    lines = []
    folder = out / "real-empty"
    (folder / "micrographs").mkdir(parents=True, exist_ok=True)
    (folder / "coordinates").mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL_NEGATIVES / "LICENSE", folder / "LICENSE")
    stems = []
    for src in _training_negatives():
        shutil.copy(src, folder / "micrographs" / src.name)
        atomic_write_text(folder / "coordinates" / f"{src.stem}.csv", "x,y\n")
        stems.append(src.stem)
    for d in NEGATIVE_DIAMETERS_PX:
        lines += [
            "[[dataset]]",
            f'name = "real-empty-d{d}"',
            'micrographs = "real-empty/micrographs/*.png"',
            'coordinates = "real-empty/coordinates/*.csv"',
            'format = "csv"',
            "pixel_size = 1.0",
            f"diameter = {float(d)!r}",
            "",
        ]
    return lines


def _training_negatives() -> list[Path]:
    return [
        src for cls in NEGATIVE_CLASSES for src in sorted((REAL_NEGATIVES / cls).glob("*.png"))[:NEGATIVES_FOR_TRAINING]
    ]


def _unit(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def _flipped(real: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        real = real[::-1]
    if rng.random() < 0.5:
        real = real[:, ::-1]
    return real.T if rng.random() < 0.5 else real


def composite_plans(plans: list[DatasetPlan]) -> list[DatasetPlan]:
    """The ``gen`` dataset each ``realbg`` dataset is made from: one condition per structure, in turn."""
    gen = [p for p in plans if p.name.startswith("gen-")]
    ids = list(dict.fromkeys(p.name.split("-")[1] for p in gen))  # structures in plan order
    return [next(p for p in gen if p.name == f"gen-{sid}-c{k % 7}") for k, sid in enumerate(ids)]


def realbg_name(source: DatasetPlan) -> str:
    return "realbg-" + source.name.split("-")[1]


def make_composites(plans: list[DatasetPlan], args: argparse.Namespace) -> int:
    """Write the ``realbg`` micrographs whose simulated source is on disk; returns how many were new."""
    negatives = [_unit(read_micrograph(p).data) for p in _training_negatives()]
    made = 0
    for k, source in enumerate(composite_plans(plans)):
        folder = args.out / realbg_name(source)
        for i in range(args.micrographs):
            stem = micrograph_name(source.name, i)
            target = folder / "micrographs" / f"{stem}.mrc"
            if target.exists() or not _done(source, i):
                continue
            rng = np.random.default_rng(np.random.SeedSequence([args.seed, 99, k, i]))
            src_dir = Path(source.out_dir)
            sim = read_micrograph(src_dir / "micrographs" / (stem + source.config.rendering.suffix)).data
            real = _flipped(negatives[int(rng.integers(len(negatives)))], rng)
            # The simulated micrograph cropped to the real one's size (tiling the real one instead
            # showed its mirror seams), each scaled to unit spread, the real texture weighted.
            rows, cols = (min(a, b) for a, b in zip(sim.shape, real.shape))
            r0 = int(rng.integers(0, sim.shape[0] - rows + 1))
            c0 = int(rng.integers(0, sim.shape[1] - cols + 1))
            sim = _unit(sim[r0 : r0 + rows, c0 : c0 + cols])
            weight = float(rng.uniform(*REALBG_WEIGHT))
            image = sim + weight * real[:rows, :cols]
            table = starfile.read(src_dir / "coordinates" / f"{stem}.star", always_dict=True)
            frame = next(iter(table.values()))
            x, y = frame["rlnCoordinateX"] - c0, frame["rlnCoordinateY"] - r0
            # centres on the crop's pixels (the loaders refuse one past the last pixel's centre + 0.5)
            frame = frame[(x >= 0) & (x <= cols - 1) & (y >= 0) & (y <= rows - 1)].copy()
            frame["rlnCoordinateX"] -= c0
            frame["rlnCoordinateY"] -= r0
            frame["rlnMicrographName"] = target.name
            (folder / "coordinates").mkdir(parents=True, exist_ok=True)
            write_star(folder / "coordinates" / f"{stem}.star", {"": frame}, float_format="%.3f")
            write_mrc(target, image)  # coordinates first: a micrograph is only listed once whole
            made += 1
    return made


def composite_lines(plans: list[DatasetPlan], args: argparse.Namespace) -> list[str]:
    lines = []
    for source in composite_plans(plans):
        folder = args.out / realbg_name(source)
        stems = sorted(p.stem for p in (folder / "micrographs").glob("*.mrc"))
        if not stems:
            continue
        lines += [
            "[[dataset]]",
            f'name = "{realbg_name(source)}"',
            f'micrographs = "{folder.name}/micrographs/*.mrc"',
            f'coordinates = "{folder.name}/coordinates/*.star"',
            'format = "star"',
            f"pixel_size = {source.config.pixel_size:.6g}",
            f"diameter = {source.diameter:.1f}",
            "",
        ]
    return lines


def write_project(plans: list[DatasetPlan], args: argparse.Namespace, path: Path, partial: bool) -> Path:
    """The project file: every dataset, its last micrograph the validation split, and the real negatives.

    ``partial``: only the micrographs already written (a dataset with one is train-only, one
    with none is left out), so that training can start while the data is being made.
    """
    lines = ["# Written by scripts/campaign/make_data.py: generic model v2's training data.", ""]
    for p in plans:
        done = [i for i in range(args.micrographs) if _done(p, i)] if partial else list(range(args.micrographs))
        if not done:
            continue
        folder = Path(p.out_dir).name
        lines += [
            "[[dataset]]",
            f'name = "{p.name}"',
            f'micrographs = "{folder}/micrographs/*{p.config.rendering.suffix}"',
            f'coordinates = "{folder}/coordinates/*.star"',
            'format = "star"',
            f"pixel_size = {p.config.pixel_size:.6g}",
            f"diameter = {p.diameter:.1f}",
        ]
        if len(done) > 1:
            lines.append(f'val = ["{micrograph_name(p.name, done[-1])}"]')
        lines.append("")
    lines += composite_lines(plans, args)
    lines += real_negatives(args.out)
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data-generated" / "campaign")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--micrographs", type=int, default=10, help="per dataset (default: %(default)s)")
    parser.add_argument(
        "--general", type=int, default=7, help="general conditions per structure (default: %(default)s)"
    )
    parser.add_argument("--hollow", type=int, default=10, help="conditions per hollow structure (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--project-only",
        action="store_true",
        help="write OUT/campaign-partial.toml from what is there, simulate nothing",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="ID", help="structure ids (a quick check; default: all but the held-out)"
    )
    args = parser.parse_args(argv)

    files = [
        p for p in structure_files(ROOT / "data" / "structures", args.only) if structure_id(p).lower() not in HELD_OUT
    ]
    plans = (
        plan(files, args.out, args.seed, args.size, args.general, args.hollow)
        if not args.only
        else [
            p
            for p in plan(
                structure_files(ROOT / "data" / "structures"), args.out, args.seed, args.size, args.general, args.hollow
            )
            if any(p.name.split("-")[1] == s for s in args.only)
        ]
    )
    if not plans:
        print(f"make_data: error: no training structure matches {args.only}", file=sys.stderr)
        return 1
    # Micrograph-index-major order: every dataset gets its first micrographs before any gets its
    # last, so a training run started from a partial project (--project-only) sees every group.
    tasks = [(p, i) for i in range(args.micrographs) for p in plans]
    if args.project_only:
        print(f"realbg: {make_composites(plans, args)} composite micrographs made", flush=True)
        path = write_project(plans, args, args.out / "campaign-partial.toml", partial=True)
        print(f"partial project: {path}", flush=True)
        return 0
    todo = [t for t in tasks if not _done(*t)]
    print(
        f"campaign data: {len(plans)} datasets, {len(tasks)} micrographs, {len(todo)} to simulate into {args.out}",
        flush=True,
    )
    start = time.perf_counter()
    done = 0
    if todo:
        with multiprocessing.get_context("fork").Pool(args.processes, initializer=_single_threaded) as pool:
            for _name, _row in pool.imap(_work, todo, chunksize=1):
                done += 1
                if done % 25 == 0 or done == len(todo):
                    rate = done / (time.perf_counter() - start)
                    print(
                        f"  {done}/{len(todo)} micrographs, {rate * 60:.1f}/min, {(len(todo) - done) / rate / 60:.0f} min left",
                        flush=True,
                    )
    for p in plans:
        if not (Path(p.out_dir) / "dataset.toml").exists():
            rows = [{"name": micrograph_name(p.name, i)} for i in range(args.micrographs)]
            finish_dataset(p, rows, meta={"campaign_seed": args.seed})
    print(f"realbg: {make_composites(plans, args)} composite micrographs made", flush=True)
    path = write_project(plans, args, args.out / "campaign.toml", partial=False)
    print(f"project: {path}; {done} simulated in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
