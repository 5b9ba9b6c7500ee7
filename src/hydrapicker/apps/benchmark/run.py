"""The paper's evaluation protocol (section 4) as one resumable run that writes ``REPORT.md``.

Structures are split into *sources* (trained on), *targets* (new datasets: zero-shot, few-shot)
and *unseen* proteins (never in any training run of the benchmark, only picked). Each group is
simulated from a seed (:func:`hydrapicker.simulate.collection.simulate_collection`), every dataset
split by micrograph into train / val / test. Then:

- a multi-head model on the sources (stage 1, then stage 2); its stage-1 model is the
  single-head model of Table 4;
- Table 1: the generic head vs each source's own head, on the sources' test micrographs;
- Table 2: zero-shot (generic head) on the targets' and unseen proteins' test micrographs vs a
  single-head model trained on each target's few training micrographs ("7 models"), and the
  baselines (scripts that pick a list of micrographs, e.g. ``benchmarks/peers/``);
- Table 3: few-shot, a new head per target trained on its training micrographs with trunk and
  generic head frozen;
- Table 4: that few-shot head on the multi-head model vs on the single-head (stage-1) model;
- the zero-shot AP against the error of the particle diameter the user gives;
- zero-shot on the bundled real micrographs (the shipped model, this run's model, the baselines).

Every step writes its result (checkpoints, picks as CSV) under ``OUT`` before the next starts and
is skipped when its result is there, so a killed or partial run (a baseline that was not
installed) continues where it stopped when run again with the same ``OUT``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hydrapicker.preprocess import ParticleSize
from hydrapicker.data.project import DatasetSpec, load_project
from hydrapicker.defaults import NMS_IOU, REFINE_RADIUS
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import Evaluation, evaluate
from hydrapicker.io import Picks, read_micrograph, read_picks, write_picks
from hydrapicker.io.files import atomic_path, atomic_write_text, save_figure
from hydrapicker.simulate.collection import structure_files
from hydrapicker.simulate.structure import structure_id
from hydrapicker.simulate.collection import simulate_collection
from hydrapicker.bundled import bundled_datasets
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train
from hydrapicker.training.config import FinetuneConfig
from hydrapicker.training.finetune import finetune, labelled_micrographs
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.checkpoint import load_model
from hydrapicker.bundled import pretrained_model_path
from hydrapicker import __version__
from hydrapicker.device import check_device

__all__ = ["BenchmarkConfig", "GROUPS", "load_config", "run_benchmark"]

#: The structure groups of the protocol.
GROUPS: tuple[str, ...] = ("sources", "targets", "unseen")

#: Picks are kept down to this score so that AP and AUROC see the whole ranking.
SCORE_FLOOR = 0.001


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark protocol (a TOML file; ``[quick]`` overrides any key for ``--quick``).

    Attributes:
        structures: folder of atomic models; ``targets`` and ``unseen`` are structure ids in it;
            ``sources`` (empty: every other structure but ``exclude``).
        source_conditions, target_conditions: imaging conditions (datasets) per structure.
        micrographs, target_micrographs: micrographs per dataset; the last ``test_micrographs``
            are test, the ``val_micrographs`` before them validation, the rest training (of a
            target only the first ``few_shot_micrographs``).
        preset ... size_head: the multi-head model's training (:class:`hydrapicker.train.TrainConfig`;
            the single-head models never have a size head).
        single_epochs, single_batches: each target's single-head model (Table 2's "7 models").
        finetune_epochs, finetune_batches: each few-shot head (Tables 3 and 4).
        diameter_errors: relative errors of the particle diameter given at pick time.
        baselines: name -> script run as ``SCRIPT MICROGRAPHS... --out DIR --diameter-px N
            --pixel-size A`` that writes ``DIR/picks.csv``; paths relative to the config file.
        real: bundled real datasets (:func:`hydrapicker.demo.bundled_datasets`) picked zero-shot.
        device, threads, processes: where the networks run; torch threads; simulation processes.
    """

    structures: Path
    targets: tuple[str, ...]
    unseen: tuple[str, ...]
    sources: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    seed: int = 0
    size: int = 1024
    source_conditions: int = 2
    target_conditions: int = 1
    micrographs: int = 6
    target_micrographs: int = 6
    test_micrographs: int = 2
    val_micrographs: int = 1
    few_shot_micrographs: int = 2
    preset: str = "tiny"
    epochs: int = 40
    stage2_epochs: int = 20
    t0_epochs: int = 40
    batches_per_epoch: int = 50
    val_batches: int = 8
    scale_jitter: tuple[float, float] = (0.7, 1.4)
    size_head: bool = False
    single_epochs: int = 10
    single_batches: int = 25
    finetune_epochs: int = 10
    finetune_batches: int = 20
    diameter_errors: tuple[float, ...] = (-0.2, -0.1, 0.0, 0.1, 0.25)
    baselines: tuple[tuple[str, Path], ...] = ()
    real: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int | None = None
    processes: int = 2

    def __post_init__(self) -> None:
        for name in ("micrographs", "target_micrographs"):
            if getattr(self, name) < self.test_micrographs + self.val_micrographs + 1:
                raise HydraPickerError(f"{name} = {getattr(self, name)}: too few for {self.test_micrographs} test, "
                                       f"{self.val_micrographs} val and a training micrograph")  # fmt: skip
        if not self.targets or not self.unseen:
            raise HydraPickerError("the benchmark needs target structures and unseen structures")
        if 0.0 not in self.diameter_errors:
            raise HydraPickerError("diameter_errors must include 0 (the true diameter)")
        check_device(self.device)


def load_config(path: str | os.PathLike, *, quick: bool = False, **overrides: object) -> BenchmarkConfig:
    """Read a benchmark TOML; ``quick`` applies its ``[quick]`` table; ``overrides`` win over both."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HydraPickerError(f"{path}: no such benchmark config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HydraPickerError(f"{path}: not a valid TOML file ({exc})") from None
    quick_table = data.pop("quick", {})
    if quick:
        data.update(quick_table)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(BenchmarkConfig)}
    for key in data:
        if key not in known:
            raise HydraPickerError(f"{path}: unknown field {key!r} (known: {', '.join(sorted(known))})")
    for key in ("structures", "targets", "unseen"):
        if key not in data:
            raise HydraPickerError(f"{path}: missing field {key!r}")
    if not isinstance(data.get("size_head", False), bool):
        raise HydraPickerError(f"{path}: field 'size_head' must be true or false, got {data['size_head']!r}")
    base = path.resolve().parent
    data["structures"] = (base / data["structures"]).resolve()
    data["baselines"] = tuple((name, (base / script).resolve()) for name, script in dict(data.get("baselines", {})).items())
    for key in ("targets", "unseen", "sources", "exclude", "real", "diameter_errors", "scale_jitter"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        return BenchmarkConfig(**data)
    except TypeError as exc:
        raise HydraPickerError(f"{path}: {exc}") from None


# --- data -----------------------------------------------------------------------------------


def group_structures(config: BenchmarkConfig) -> dict[str, list[Path]]:
    """The model files of each group; a user error for an unknown or doubly assigned id."""
    files = {structure_id(p).lower(): p for p in structure_files(config.structures)}
    if not files:
        raise HydraPickerError(f"{config.structures}: no atomic models found")
    chosen: dict[str, list[str]] = {"targets": list(config.targets), "unseen": list(config.unseen)}
    taken = {s.lower() for s in (*config.targets, *config.unseen, *config.exclude)}
    chosen["sources"] = list(config.sources) or [s for s in sorted(files) if s not in taken]
    seen: dict[str, str] = {}
    for group in GROUPS:
        for sid in chosen[group]:
            if sid.lower() not in files:
                raise HydraPickerError(f"{group}: structure {sid!r} is not in {config.structures}")
            if sid.lower() in seen:
                raise HydraPickerError(f"structure {sid!r} is in both {seen[sid.lower()]} and {group}")
            seen[sid.lower()] = group
    return {group: [files[s.lower()] for s in chosen[group]] for group in GROUPS}


def _splits(stems: Sequence[str], group: str, config: BenchmarkConfig) -> dict[str, tuple[str, ...]]:
    stems = sorted(stems)
    n_test, n_val = config.test_micrographs, config.val_micrographs
    test = stems[len(stems) - n_test :]
    rest = stems[: len(stems) - n_test]
    val = rest[len(rest) - n_val :] if n_val else []
    train = rest[: len(rest) - len(val)]
    if group == "targets":
        train = train[: config.few_shot_micrographs]
    if group == "unseen":
        train, val = [], []
    return {"train": tuple(train), "val": tuple(val), "test": tuple(test)}


def _group_params(config: BenchmarkConfig, group: str) -> dict:
    sources = group == "sources"
    return {
        "structures": [p.name for p in group_structures(config)[group]], "seed": config.seed, "size": config.size,
        "conditions": config.source_conditions if sources else config.target_conditions,
        "micrographs": config.micrographs if sources else config.target_micrographs,
        "splits": [config.test_micrographs, config.val_micrographs, config.few_shot_micrographs],
    }  # fmt: skip


def group_datasets(config: BenchmarkConfig, out_dir: Path, group: str, say: Callable[[str], None]) -> list[DatasetSpec]:
    """Simulate ``group`` into ``out_dir/data/<group>`` (unless done with the same settings); its split datasets."""
    folder = out_dir / "data" / group
    files = group_structures(config)[group]
    params = _group_params(config, group)
    stamp = folder / "benchmark-params.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == params):
        shutil.rmtree(folder, ignore_errors=True)
        say(f"simulating {group}: {len(files)} structures x {params['conditions']} conditions x {params['micrographs']} micrographs")
        simulate_collection(
            files, folder, conditions=params["conditions"], micrographs=params["micrographs"], seed=config.seed,
            processes=config.processes, size=config.size, progress=False,
        )  # fmt: skip
        atomic_write_text(stamp, json.dumps(params) + "\n")
    specs = load_project(folder / "collection.toml")
    return [replace(spec, splits=_splits(list(spec.coordinates), group, config)) for spec in specs]


class GroupData:
    """The datasets of one group, recorded once simulated (``data/<group>.json`` and the test
    split's truth in ``truth/<dataset>.csv``), so that a continued run simulates the group
    again only for a step whose result is missing (e.g. a baseline added later)."""

    def __init__(self, config: BenchmarkConfig, out_dir: Path, group: str, say: Callable[[str], None]) -> None:
        self.config, self.out_dir, self.group, self.say = config, out_dir, group, say
        self.manifest = out_dir / "data" / f"{group}.json"
        self._real: dict[str, DatasetSpec] | None = None
        record = json.loads(self.manifest.read_text()) if self.manifest.exists() else None
        if record is not None and record["params"] == _group_params(config, group):
            self.specs = [
                DatasetSpec(name=d["name"], micrographs=(), coordinates={}, format="csv", pixel_size=d["pixel_size"],
                            diameter=d["diameter"], splits={k: tuple(v) for k, v in d["splits"].items()})
                for d in record["datasets"]
            ]  # fmt: skip
        else:
            self.specs = self.real_specs()

    def real_specs(self) -> list[DatasetSpec]:
        """The datasets with their micrographs (simulated now if they are not on disk)."""
        if self._real is None:
            specs = group_datasets(self.config, self.out_dir, self.group, self.say)
            self._real = {spec.name: spec for spec in specs}
            for spec in specs:
                target = self.out_dir / "truth" / f"{spec.name}.csv"
                target.parent.mkdir(parents=True, exist_ok=True)
                write_picks(target, list(truth(spec).values()), "csv")
            datasets = [{"name": x.name, "pixel_size": x.pixel_size, "diameter": x.diameter, "splits": {k: list(v) for k, v in x.splits.items()}}
                        for x in specs]  # fmt: skip
            atomic_write_text(self.manifest, json.dumps({"params": _group_params(self.config, self.group), "datasets": datasets}) + "\n")
        return list(self._real.values())

    def real(self, spec: DatasetSpec) -> DatasetSpec:
        """``spec`` with its micrographs."""
        return next(x for x in self.real_specs() if x.name == spec.name)

    def truth(self, spec: DatasetSpec) -> dict[str, Picks]:
        """The test split's particles (from the record)."""
        path = self.out_dir / "truth" / f"{spec.name}.csv"
        found = _read_picks_csv(path)
        return {stem: replace(found[stem], box_size=spec.diameter_px) if stem in found else Picks.empty(stem, spec.diameter_px)
                for stem in spec.splits["test"]}  # fmt: skip


def real_datasets(names: Sequence[str]) -> list[DatasetSpec]:
    """The bundled real datasets as specs whose test split is every labelled micrograph."""
    known = {d.name: d for d in bundled_datasets()}
    specs = []
    for name in names:
        if name not in known:
            raise HydraPickerError(f"real dataset {name!r} is not bundled (bundled: {', '.join(known)})")
        d = known[name]
        mics = tuple(d.micrographs())
        specs.append(DatasetSpec(
            name=name, micrographs=mics, coordinates={p.stem: p.with_suffix(".csv") for p in mics}, format="csv",
            pixel_size=d.pixel_size, diameter=d.box_size * d.pixel_size,
            splits={"train": (), "val": (), "test": tuple(p.stem for p in mics)},
        ))  # fmt: skip
    return specs


def truth(spec: DatasetSpec, split: str = "test") -> dict[str, Picks]:
    """The labelled particles of a split, keyed by micrograph stem."""
    out = {}
    for stem in spec.splits[split]:
        shape = read_micrograph(spec.micrograph_path(stem)).shape
        out[stem] = read_picks(spec.coordinates[stem], spec.format, micrograph=stem, box_size=spec.diameter_px, shape=shape)[stem]
    return out


# --- models ---------------------------------------------------------------------------------


def _train_config(config: BenchmarkConfig, cache_dir: Path | None = None, **changes: object):
    base = TrainConfig(
        preset=config.preset, stage="both", epochs=config.epochs, stage2_epochs=config.stage2_epochs,
        t0_epochs=config.t0_epochs, batches_per_epoch=config.batches_per_epoch, val_batches=config.val_batches,
        scale_jitter=tuple(config.scale_jitter), seed=config.seed, threads=config.threads, device=config.device,
        cache_dir=str(cache_dir) if cache_dir else None,
    )  # fmt: skip
    return replace(base, **changes)


def multihead_model(config: BenchmarkConfig, out_dir: Path, sources: list[DatasetSpec], say: Callable[[str], None]) -> Path:
    """Train (or continue) the multi-head model on the sources; its ``model.pt``."""
    run = out_dir / "models" / "multihead"
    final = run / "model.pt"
    if not final.exists():
        say(f"training the multi-head model on {len(sources)} source datasets ({config.preset}, stage 1 then 2)")
        # Prepared micrographs on disk: the in-memory cache holds a few, and re-preparing one costs ~20 batches.
        train(sources, run, _train_config(config, out_dir / "prepared", size_head=config.size_head), resume=True)
    return final


def single_model(config: BenchmarkConfig, out_dir: Path, target: DatasetSpec, say: Callable[[str], None]) -> Path:
    """A single-head model trained from scratch on one target's training micrographs."""
    run = out_dir / "models" / "single" / target.name
    final = run / "model.pt"
    if not final.exists():
        say(f"training a single-head model on {target.name} ({len(target.splits['train'])} micrographs)")
        cfg = _train_config(config, out_dir / "prepared", stage="1", epochs=config.single_epochs, t0_epochs=config.single_epochs,
                            batches_per_epoch=config.single_batches)  # fmt: skip
        train([target], run, cfg, resume=True)
    return final


def few_shot_head(config: BenchmarkConfig, out_dir: Path, base: str, base_model: Path, target: DatasetSpec,
                  say: Callable[[str], None]) -> Path:  # fmt: skip
    """A new head for ``target`` on ``base_model`` (trunk and generic head frozen); the checkpoint."""
    out = out_dir / "models" / f"fewshot-{base}" / f"{target.name}.pt"
    if not out.exists():
        train_stems, val_stems = target.splits["train"], target.splits["val"]
        data = labelled_micrographs(
            target.name, [target.micrograph_path(s) for s in train_stems], [target.coordinates[s] for s in train_stems], coords_format=target.format,
            val_micrographs=[target.micrograph_path(s) for s in val_stems], val_coordinates=[target.coordinates[s] for s in val_stems], size=ParticleSize(diameter_px=target.diameter_px))  # fmt: skip
        cfg = FinetuneConfig(name=target.name, epochs=config.finetune_epochs, batches_per_epoch=config.finetune_batches,
                             labels="complete", seed=config.seed, threads=config.threads, device=config.device)  # fmt: skip
        finetune(data, out, cfg, model_path=base_model, resume=True, say=lambda line: None)
        say(f"few-shot head {target.name} on the {base} model: {out}")
    return out


# --- picks ----------------------------------------------------------------------------------


def _picks_path(out_dir: Path, method: str, dataset: str) -> Path:
    return out_dir / "picks" / method / f"{dataset}.csv"


def _read_picks_csv(path: Path) -> dict[str, Picks]:
    """A picks CSV of this run (picks or truth); written for no micrograph with a particle it is empty: no picks."""
    return read_picks(path, "csv") if path.stat().st_size else {}


def _same(spec: DatasetSpec) -> DatasetSpec:
    return spec


def network_picks(out_dir: Path, method: str, checkpoint: Path, head: str, spec: DatasetSpec, config: BenchmarkConfig,
                  diameter_factor: float = 1.0, resolve: Callable[[DatasetSpec], DatasetSpec] = _same,
                  correct_size: bool = True) -> Path:  # fmt: skip
    """Pick the test micrographs of ``spec`` with one head into ``picks/<method>/<dataset>.csv`` (once);
    ``resolve`` gives the spec with its micrographs when they are needed.

    Picked as ``hydrapicker pick`` picks a dataset (:class:`hydrapicker.pick.Picker`): with
    ``correct_size`` and a size head, the generic head's diameter (given x ``diameter_factor``)
    is corrected once, from a sample of every micrograph of the dataset (images only, no
    labels: a user picking zero-shot has them all), and the test micrographs are picked at it.
    The diameter each was picked at goes to ``<dataset>.diameters.json`` beside the picks."""
    target = _picks_path(out_dir, method, spec.name)
    if target.exists():
        return target
    spec = resolve(spec)
    model, meta = load_model(checkpoint)
    settings = PickSettings(ParticleSize(diameter_px=spec.diameter_px * diameter_factor), head=head, threshold=SCORE_FLOOR,
                            correct_size=correct_size, device=config.device)  # fmt: skip
    picker = Picker(model, meta, settings)
    picker.calibrate(list(spec.micrographs))
    every = [picker.pick(picker.prepare(spec.micrograph_path(stem))) for stem in spec.splits["test"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_diameters_path(target), json.dumps({p.micrograph: p.box_size for p in every}) + "\n")
    write_picks(target, every, "csv")
    return target


def _diameters_path(picks_file: Path) -> Path:
    return picks_file.with_suffix(".diameters.json")


def picked_diameters(out_dir: Path, method: str, dataset: str) -> list[float]:
    """The diameters (stored px) the test micrographs of ``dataset`` were picked at by ``method`` (empty if not recorded)."""
    path = _diameters_path(_picks_path(out_dir, method, dataset))
    return list(json.loads(path.read_text()).values()) if path.exists() else []


def baseline_picks(out_dir: Path, name: str, script: Path, spec: DatasetSpec,
                   resolve: Callable[[DatasetSpec], DatasetSpec] = _same) -> Path | str:  # fmt: skip
    """Run a baseline script on the test micrographs of ``spec``; the picks file, or why there is none."""
    target = _picks_path(out_dir, name, spec.name)
    if target.exists():
        return target
    if not script.exists():
        return f"{script} is not there"
    spec = resolve(spec)
    work = out_dir / "baselines" / name / spec.name
    shutil.rmtree(work, ignore_errors=True)
    command = [sys.executable, str(script), *[str(spec.micrograph_path(s)) for s in spec.splits["test"]],
               "--out", str(work), "--diameter-px", f"{spec.diameter_px:.4f}", "--pixel-size", f"{spec.pixel_size:.5f}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    produced = work / "picks.csv"
    if result.returncode != 0 or not produced.exists():
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit status {result.returncode}"]
        return f"{script.name} failed: {lines[-1][:200]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(produced, tmp)
    return target


def score(picks_file: Path | str, spec: DatasetSpec, truth_picks: dict[str, Picks]) -> Evaluation | str:
    """``evaluate`` of a picks file against the truth of ``spec``'s test split (a reason string passes through)."""
    if isinstance(picks_file, str):
        return picks_file
    picks = _read_picks_csv(picks_file)
    picks = {k: v for k, v in picks.items() if k in truth_picks}
    return evaluate(picks, truth_picks, box_size=spec.diameter_px)


def pooled(results: dict[str, Evaluation | str], specs: dict[str, DatasetSpec], out_dir: Path, method: str,
           truths: dict[str, dict[str, Picks]]) -> Evaluation | None:  # fmt: skip
    """One evaluation over every dataset of a table (coordinates in units of each dataset's box)."""
    picks: dict[str, Picks] = {}
    every_truth: dict[str, Picks] = {}
    for name, result in results.items():
        if isinstance(result, str):
            continue
        d = specs[name].diameter_px
        found = _read_picks_csv(_picks_path(out_dir, method, name))
        for stem, t in truths[name].items():
            key = f"{name}/{stem}"
            every_truth[key] = Picks(key, t.x / d, t.y / d, t.score, 1.0)
            if stem in found:
                p = found[stem]
                picks[key] = Picks(key, p.x / d, p.y / d, p.score, 1.0)
    return evaluate(picks, every_truth, box_size=1.0) if every_truth else None


# --- the run --------------------------------------------------------------------------------


@dataclass
class _Table:
    title: str
    caption: str
    rows: list[str]  # dataset names
    columns: dict[str, str]  # method key -> column label
    results: dict[str, dict[str, Evaluation | str]]  # method -> dataset -> result
    curves: dict[str, Evaluation | None]


def run_benchmark(config: BenchmarkConfig, out_dir: str | os.PathLike, *, say: Callable[[str], None] = print,
                  config_path: str | None = None) -> Path:  # fmt: skip
    """Run (or continue) the protocol into ``out_dir``; returns ``out_dir/REPORT.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Seconds per step, summed over every run into this folder (a continued run adds its own).
    timings_file = out_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    timings.pop("total", None)

    def timed(label: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[label] = timings.get(label, 0.0) + time.perf_counter() - t0
        atomic_write_text(timings_file, json.dumps(timings) + "\n")
        return value

    groups = {g: timed("simulation", GroupData, config, out_dir, g, say) for g in ("targets", "unseen", "sources")}
    sources, targets, unseen = groups["sources"].specs, groups["targets"].specs, groups["unseen"].specs
    owner = {spec.name: group for group in groups.values() for spec in group.specs}

    def resolve(spec: DatasetSpec) -> DatasetSpec:
        return timed("simulation", owner[spec.name].real, spec) if spec.name in owner else spec

    multihead = out_dir / "models" / "multihead" / "model.pt"
    if not multihead.exists():
        multihead = timed("multi-head training", multihead_model, config, out_dir, groups["sources"].real_specs(), say)
    single_head = out_dir / "models" / "multihead" / "stage1" / "best.pt"
    reals = real_datasets(config.real)
    specs = {s.name: s for s in [*sources, *targets, *unseen, *reals]}
    truths = {name: (owner[name].truth(spec) if name in owner else truth(spec)) for name, spec in specs.items()}

    def column(rows: Sequence[DatasetSpec], make: Callable[[DatasetSpec], Path | str]) -> dict[str, Evaluation | str]:
        return {spec.name: score(make(spec), spec, truths[spec.name]) for spec in rows}

    def picks(method: str, checkpoint: Path | Callable[[DatasetSpec], Path], head: str | None = "generic", factor: float = 1.0,
              correct_size: bool = True):  # fmt: skip
        """A column maker: one head (None: the dataset's own) of a checkpoint (or one per dataset)."""
        def make(spec: DatasetSpec) -> Path:
            if _picks_path(out_dir, method, spec.name).exists():
                return _picks_path(out_dir, method, spec.name)
            path = checkpoint(spec) if callable(checkpoint) else checkpoint
            return network_picks(out_dir, method, path, head or spec.name, spec, config, factor, resolve, correct_size)
        return make

    say("Table 1: generic vs specialised heads on the source test micrographs")
    t1 = {
        "generic": timed("picking", column, sources, picks("generic", multihead)),
        "spec": timed("picking", column, sources, picks("spec", multihead, None)),
    }
    zero_rows = [*targets, *unseen]
    say("Table 2: zero-shot on targets and unseen proteins")
    t2 = {"generic": timed("picking", column, zero_rows, picks("generic", multihead))}

    def single(spec: DatasetSpec) -> Path:
        return timed("single-head models", single_model, config, out_dir, resolve(spec), say)

    t2["single"] = timed("picking", column, targets, picks("single", single))
    for name, script in config.baselines:
        t2[name] = timed(f"baseline {name}", column, zero_rows, lambda s, n=name, sc=script: baseline_picks(out_dir, n, sc, s, resolve))
    say("Tables 3 and 4: few-shot heads on the multi-head and on the single-head model")
    t3 = {"single": t2["single"]}
    for base, checkpoint in (("single-head", single_head), ("multi", multihead)):
        def head(spec: DatasetSpec, base: str = base, checkpoint: Path = checkpoint) -> Path:
            return timed("few-shot heads", few_shot_head, config, out_dir, base, checkpoint, resolve(spec), say)

        t3[f"fewshot-{base}"] = timed("picking", column, targets, picks(f"fewshot-{base}", head, None))
    say("zero-shot AP against the error of the given diameter")
    diameter: dict[str, dict[float, dict]] = {"generic": {}}
    if config.size_head:  # the same picks with the diameter used as given, to show what the size head does
        diameter["fixed"] = {}
    for kind, curve in diameter.items():
        for error in config.diameter_errors:
            method = _diameter_method(kind, error)
            curve[error] = timed("picking", column, zero_rows, picks(method, multihead, factor=1.0 + error, correct_size=kind == "generic"))
    real_results: dict[str, dict[str, Evaluation | str]] = {}
    if reals:
        say("zero-shot on the bundled real micrographs")
        real_results["shipped"] = column(reals, picks("shipped", pretrained_model_path()))
        real_results["generic"] = column(reals, picks("generic", multihead))
        for name, script in config.baselines:
            real_results[name] = column(reals, lambda s, n=name, sc=script: baseline_picks(out_dir, n, sc, s))

    def table(title: str, caption: str, rows: Sequence[DatasetSpec], results: dict, labels: dict[str, str]) -> _Table:
        names = [r.name for r in rows]
        cut = {m: {n: results[m][n] for n in names if n in results[m]} for m in labels}
        curves = {m: pooled(cut[m], specs, out_dir, m, truths) for m in labels}
        return _Table(title, caption, names, labels, cut, curves)

    baseline_labels = {name: name for name, _ in config.baselines}
    tables = [
        table("Table 1: generic vs specialised heads (source test micrographs)",
              "HydraPicker_gen picks with the generic head, HydraPicker_spec with each dataset's own head.",
              sources, t1, {"generic": "HydraPicker_gen", "spec": "HydraPicker_spec"}),
        table("Table 2: zero-shot picking (target and unseen-protein test micrographs)",
              "The generic head has never seen these datasets; the unseen proteins were in no training run. "
              "'single models' are single-head models trained on each target's few training micrographs (none for unseen proteins).",
              zero_rows, t2, {"generic": "HydraPicker (generic head)", "single": "single models", **baseline_labels}),
        table("Table 3: few-shot picking (target test micrographs)",
              "A new head per target trained on its training micrographs, trunk and generic head frozen.",
              targets, t3, {"fewshot-multi": "HydraPicker few-shot", "single": "single models"}),
        table("Table 4: multi-head vs single-head, fine-tuned (target test micrographs)",
              "The same few-shot head training on the multi-head (stage 2) model and on the single-head (stage 1) model.",
              targets, t3, {"fewshot-multi": "multi-head", "fewshot-single-head": "single-head"}),
    ]  # fmt: skip
    timings["total"] = sum(timings.values())
    return write_report(out_dir, config, tables, diameter, real_results, reals, timings, config_path, len(targets),
                        {name: spec.diameter_px for name, spec in specs.items()})  # fmt: skip


# --- the report -----------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _cell(result: Evaluation | str | None, field_name: str) -> str:
    if result is None:
        return "–"
    if isinstance(result, str):
        return "n/a"
    value = getattr(result, field_name)
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def _table_markdown(t: _Table) -> list[str]:
    methods = list(t.columns)
    header = "| dataset | " + " | ".join(f"{t.columns[m]} AP | {t.columns[m]} AUROC" for m in methods) + " |"
    lines = [f"### {t.title}", "", t.caption, "", header, "|---|" + "---:|" * (2 * len(methods))]
    for name in t.rows:
        cells = [f"{_cell(t.results[m].get(name), 'ap')} | {_cell(t.results[m].get(name), 'auroc')}" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        got = [t.results[m][n] for n in t.rows if isinstance(t.results[m].get(n), Evaluation)]
        full = len(got) == len(t.rows)
        ap, auroc = _mean([g.ap for g in got]), _mean([g.auroc for g in got])
        mark = "" if full else f" ({len(got)}/{len(t.rows)})"
        means.append(f"**{ap:.3f}**{mark} | **{auroc:.3f}**{mark}" if got else "n/a | n/a")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    failures = sorted({r for m in methods for r in t.results[m].values() if isinstance(r, str)})
    lines += [""] + [f"n/a: {reason}" for reason in failures]
    return lines


def _plot_curves(path: Path, t: _Table) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pr, roc) = plt.subplots(1, 2, figsize=(10, 4.2))
    for method, ev in t.curves.items():
        if ev is None:
            continue
        label = f"{t.columns[method]} (AP {ev.ap:.3f})"
        pr.plot(ev.recall, ev.precision, label=label)
        roc.plot(ev.fpr, ev.tpr, label=f"{t.columns[method]} (AUROC {ev.auroc:.3f})")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall (pooled)")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02), title="ROC (pooled)")
    pr.legend(fontsize=8, loc="lower left")
    roc.legend(fontsize=8, loc="lower right")
    fig.suptitle(t.title, fontsize=10)
    save_figure(fig, path, dpi=90)


#: The curves of the diameter-error section: picks with the size head's correction, and the diameter used as given.
_DIAMETER_KINDS = {"generic": "size corrected", "fixed": "diameter as given"}


def _diameter_method(kind: str, error: float) -> str:
    """The picks folder of one point of a diameter curve (the true diameter's is the kind itself: Table 2's picks)."""
    return kind if error == 0 else f"{kind}-d{error:+.2f}"


def _plot_diameter(path: Path, curves: dict[str, dict[float, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, curve in curves.items():
        errors = sorted(curve)
        style = "-" if kind == "generic" else "--"
        for key, label, colour in (("targets", "targets", "C0"), ("unseen", "unseen proteins", "C1")):
            ax.plot([100 * e for e in errors], [curve[e][key] for e in errors], style, marker="o", color=colour,
                    label=f"{label}, {_DIAMETER_KINDS[kind]}")  # fmt: skip
    ax.axhline(curves["generic"][0.0]["targets"] - 0.05, color="grey", linestyle=":", label="targets at true size − 0.05")
    ax.set(xlabel="error of the given particle diameter (%)", ylabel="zero-shot AP (generic head)", ylim=(0, 1))
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=90)


def write_report(out_dir: Path, config: BenchmarkConfig, tables: list[_Table], diameter: dict, real_results: dict,
                 reals: list[DatasetSpec], timings: dict[str, float], config_path: str | None, n_targets: int,
                 truths_px: dict[str, float]) -> Path:  # fmt: skip
    """``REPORT.md`` and its figures (``figures/*.png``) in ``out_dir``; ``truths_px``: each dataset's true diameter (px)."""
    import torch

    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    groups = group_structures(config)
    lines = [
        "# HydraPicker benchmark report",
        "",
        f"Written by `hydrapicker benchmark {config_path or 'CONFIG'} --out {out_dir}` (hydrapicker {__version__}, "
        f"torch {torch.__version__}, device {config.device}"
        + (f" = {torch.cuda.get_device_name(0)}" if config.device == "cuda" else "") + ").",
        "",
        "## Protocol",
        "",
        f"- Sources ({len(groups['sources'])} structures × {config.source_conditions} imaging conditions): "
        + ", ".join(sorted(p.name.split('.')[0] for p in groups["sources"])),
        f"- Targets ({len(groups['targets'])} × {config.target_conditions}): " + ", ".join(config.targets),
        "- Unseen proteins (in no training run): " + ", ".join(config.unseen),
        f"- Excluded from every group: {', '.join(config.exclude) or 'none'} (see the config for why).",
        f"- {config.micrographs} simulated micrographs of {config.size}² per source dataset, {config.target_micrographs} per target; "
        f"per dataset the last {config.test_micrographs} are test, {config.val_micrographs} validation; a target trains on "
        f"{config.few_shot_micrographs} micrographs. Seed {config.seed}.",
        f"- Multi-head model: preset `{config.preset}`, stage 1 {config.epochs} epochs, stage 2 {config.stage2_epochs} epochs, "
        f"{config.batches_per_epoch} batches of 4 crops each (Adam lr {_train_config(config).lr:g}, then SGD lr "
        f"{_train_config(config).stage2_lr:g} with momentum), scale jitter {tuple(config.scale_jitter)}"
        f"{', with a size head' if config.size_head else ''}. Single models (no size head): "
        f"{config.single_epochs} × {config.single_batches} batches from scratch. Few-shot heads: {config.finetune_epochs} × "
        f"{config.finetune_batches} batches.",
        "- Scores: `hydrapicker.evaluate` (IoU ≥ 0.6 with the true diameter as box, AP all-point interpolated, AUROC with "
        f"misses at −∞), picks kept down to score 0.001 (NMS IoU {NMS_IOU:g}, centres refined within {REFINE_RADIUS:g} box). The mean is over datasets; the curves pool every dataset of a table "
        "(coordinates in units of each dataset's box).",
        "",
        "## Tables",
        "",
    ]  # fmt: skip
    for i, t in enumerate(tables, 1):
        lines += _table_markdown(t)
        figure = figures / f"table{i}.png"
        _plot_curves(figure, t)
        lines += ["", f"![{t.title}](figures/{figure.name})", ""]
    lines += ["## Robustness to the particle diameter", "",
              "Zero-shot picks of the generic head with the diameter given to `pick` off by the error shown. "
              + ("'Size corrected' is `pick`'s default: the model's size head reads how large the particles look and "
                 "corrects the diameter once per dataset, read over its micrographs (images only, as `pick` reads it once over "
                 "the micrographs of a run); 'as given' is `pick --fixed-diameter`. 'Picked at' is the diameter "
                 "the corrected picks were made at over the true one (mean over the target micrographs)."
                 if "fixed" in diameter else "The model has no size head: the diameter is used as given."), ""]  # fmt: skip
    target_names = {name for name in tables[1].rows[:n_targets]}
    curves: dict[str, dict[float, dict[str, float]]] = {}
    for kind, by_error in diameter.items():
        curves[kind] = {}
        for error, results in sorted(by_error.items()):
            good = {n: r for n, r in results.items() if isinstance(r, Evaluation)}
            curves[kind][error] = {
                "targets": _mean([r.ap for n, r in good.items() if n in target_names]),
                "unseen": _mean([r.ap for n, r in good.items() if n not in target_names]),
                "auroc_targets": _mean([r.auroc for n, r in good.items() if n in target_names]),
                "picked_at": _mean([d / truths_px[n] for n in target_names for d in
                                    picked_diameters(out_dir, _diameter_method(kind, error), n)]),
            }  # fmt: skip
    kinds = list(curves)
    header = "| diameter error | " + " | ".join(
        f"AP targets ({_DIAMETER_KINDS[k]}) | AP unseen ({_DIAMETER_KINDS[k]}) | AUROC targets ({_DIAMETER_KINDS[k]})" for k in kinds
    ) + (" | picked at / true (targets) |" if "fixed" in curves else " |")  # fmt: skip
    lines += [header, "|---:|" + "---:|" * (3 * len(kinds) + ("fixed" in curves))]
    for error in sorted(curves["generic"]):
        cells = [f"{curves[k][error]['targets']:.3f} | {curves[k][error]['unseen']:.3f} | {curves[k][error]['auroc_targets']:.3f}" for k in kinds]
        extra = f" | ×{curves['generic'][error]['picked_at']:.2f}" if "fixed" in curves else ""
        lines.append(f"| {100 * error:+.0f} % | " + " | ".join(cells) + extra + " |")
    lines.append("")
    for kind in kinds:
        drop = max(curves[kind][0.0]["targets"] - curves[kind][e]["targets"] for e in curves[kind])
        lines.append(f"Largest drop of the mean target AP from the true diameter, {_DIAMETER_KINDS[kind]}: {drop:.3f} "
                     "(goal: at most 0.05 for −20 % and +25 %).")  # fmt: skip
    lines += ["", "![AP against diameter error](figures/diameter.png)", ""]
    _plot_diameter(figures / "diameter.png", curves)
    if reals:
        labels = {"shipped": "shipped model", "generic": "this run's generic head", **{n: n for n, _ in config.baselines}}
        t = _Table("Zero-shot on real micrographs", "", [s.name for s in reals], labels,
                   {m: real_results[m] for m in labels}, {})  # fmt: skip
        lines += ["## Zero-shot on the bundled real micrographs", "",
                  "Neither model was trained on real micrographs or on the protein of EMPIAR-10017 (5a1a excluded). "
                  "The EMPIAR-10025 labels are partial: unlabelled true particles count as false picks, so its AP is a lower bound.",
                  ""] + _table_markdown(t)[4:] + [""]  # fmt: skip
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "Seconds summed over every run into the output folder (a continued run adds only the steps it ran; "
              "a run on another machine, e.g. baselines added later on a CPU, adds its own seconds).", ""]
    report = out_dir / "REPORT.md"
    atomic_write_text(report, "\n".join(lines))
    summary = {
        "tables": {t.title: {m: {n: (r.to_json() if isinstance(r, Evaluation) else r) for n, r in t.results[m].items()} for m in t.columns}
                   for t in tables},
        "diameter": {kind: {str(e): c for e, c in curve.items()} for kind, curve in curves.items()},
        "timings": timings,
    }  # fmt: skip
    atomic_write_text(out_dir / "results.json", json.dumps(summary, indent=1) + "\n")
    return report
