"""The steps of a benchmark run: datasets (simulated and bundled real), models, picks, scores; each resumable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from hydrapicker.bundled import bundled_datasets
from hydrapicker.checkpoint import load_model
from hydrapicker.data.project import DatasetSpec, load_project
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import Evaluation, evaluate
from hydrapicker.io import Picks, read_micrograph, read_picks, write_picks
from hydrapicker.io.files import atomic_path, atomic_write_text
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.progress import Progress
from hydrapicker.simulate.collection import simulate_collection, structure_files
from hydrapicker.simulate.structure import structure_id
from hydrapicker.training.config import FinetuneConfig, TrainConfig
from hydrapicker.training.finetune import finetune, labelled_micrographs
from hydrapicker.training.stages import train

__all__ = [
    "GroupData",
    "baseline_picks",
    "few_shot_head",
    "group_datasets",
    "group_structures",
    "multihead_model",
    "network_picks",
    "picked_diameters",
    "picks_path",
    "pooled",
    "real_datasets",
    "score",
    "single_model",
    "train_config",
    "truth",
]

from hydrapicker.apps.benchmark.config import GROUPS, SCORE_FLOOR, BenchmarkConfig

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
        "structures": [p.name for p in group_structures(config)[group]],
        "seed": config.seed,
        "size": config.size,
        "conditions": config.source_conditions if sources else config.target_conditions,
        "micrographs": config.micrographs if sources else config.target_micrographs,
        "splits": [config.test_micrographs, config.val_micrographs, config.few_shot_micrographs],
    }


def group_datasets(config: BenchmarkConfig, out_dir: Path, group: str, say: Callable[[str], None]) -> list[DatasetSpec]:
    """Simulate ``group`` into ``out_dir/data/<group>`` (unless done with the same settings); its split datasets."""
    folder = out_dir / "data" / group
    files = group_structures(config)[group]
    params = _group_params(config, group)
    stamp = folder / "benchmark-params.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == params):
        shutil.rmtree(folder, ignore_errors=True)
        say(
            f"simulating {group}: {len(files)} structures x {params['conditions']} conditions x {params['micrographs']} micrographs"
        )
        simulate_collection(
            files,
            folder,
            conditions=params["conditions"],
            micrographs=params["micrographs"],
            seed=config.seed,
            processes=config.processes,
            size=config.size,
            progress=True,  # a bar on a terminal, lines in a log file
        )
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
                DatasetSpec(
                    name=d["name"],
                    micrographs=(),
                    coordinates={},
                    format="csv",
                    pixel_size=d["pixel_size"],
                    diameter=d["diameter"],
                    splits={k: tuple(v) for k, v in d["splits"].items()},
                )
                for d in record["datasets"]
            ]
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
            datasets = [
                {
                    "name": x.name,
                    "pixel_size": x.pixel_size,
                    "diameter": x.diameter,
                    "splits": {k: list(v) for k, v in x.splits.items()},
                }
                for x in specs
            ]
            atomic_write_text(
                self.manifest,
                json.dumps({"params": _group_params(self.config, self.group), "datasets": datasets}) + "\n",
            )
        return list(self._real.values())

    def real(self, spec: DatasetSpec) -> DatasetSpec:
        """``spec`` with its micrographs."""
        return next(x for x in self.real_specs() if x.name == spec.name)

    def truth(self, spec: DatasetSpec) -> dict[str, Picks]:
        """The test split's particles (from the record)."""
        path = self.out_dir / "truth" / f"{spec.name}.csv"
        found = _read_picks_csv(path)
        return {
            stem: replace(found[stem], box_size=spec.diameter_px)
            if stem in found
            else Picks.empty(stem, spec.diameter_px)
            for stem in spec.splits["test"]
        }


def real_datasets(names: Sequence[str]) -> list[DatasetSpec]:
    """The bundled real datasets as specs whose test split is every labelled micrograph."""
    known = {d.name: d for d in bundled_datasets()}
    specs = []
    for name in names:
        if name not in known:
            raise HydraPickerError(f"real dataset {name!r} is not bundled (bundled: {', '.join(known)})")
        d = known[name]
        mics = tuple(d.micrographs())
        specs.append(
            DatasetSpec(
                name=name,
                micrographs=mics,
                coordinates={p.stem: p.with_suffix(".csv") for p in mics},
                format="csv",
                pixel_size=d.pixel_size,
                diameter=d.box_size * d.pixel_size,
                splits={"train": (), "val": (), "test": tuple(p.stem for p in mics)},
            )
        )
    return specs


def truth(spec: DatasetSpec, split: str = "test") -> dict[str, Picks]:
    """The labelled particles of a split, keyed by micrograph stem."""
    out = {}
    for stem in spec.splits[split]:
        shape = read_micrograph(spec.micrograph_path(stem)).shape
        out[stem] = read_picks(
            spec.coordinates[stem], spec.format, micrograph=stem, box_size=spec.diameter_px, shape=shape
        )[stem]
    return out


# --- models ---------------------------------------------------------------------------------


def train_config(config: BenchmarkConfig, cache_dir: Path | None = None, **changes: object):
    base = TrainConfig(
        preset=config.preset,
        stage="both",
        epochs=config.epochs,
        stage2_epochs=config.stage2_epochs,
        t0_epochs=config.t0_epochs,
        batches_per_epoch=config.batches_per_epoch,
        val_batches=config.val_batches,
        scale_jitter=tuple(config.scale_jitter),
        seed=config.seed,
        threads=config.threads,
        device=config.device,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    return replace(base, **changes)


def multihead_model(
    config: BenchmarkConfig, out_dir: Path, sources: list[DatasetSpec], say: Callable[[str], None]
) -> Path:
    """Train (or continue) the multi-head model on the sources; its ``model.pt``."""
    run = out_dir / "models" / "multihead"
    final = run / "model.pt"
    if not final.exists():
        say(f"training the multi-head model on {len(sources)} source datasets ({config.preset}, stage 1 then 2)")
        # Prepared micrographs on disk: the in-memory cache holds a few, and re-preparing one costs ~20 batches.
        train(sources, run, train_config(config, out_dir / "prepared", size_head=config.size_head), resume=True)
    return final


def single_model(config: BenchmarkConfig, out_dir: Path, target: DatasetSpec, say: Callable[[str], None]) -> Path:
    """A single-head model trained from scratch on one target's training micrographs."""
    run = out_dir / "models" / "single" / target.name
    final = run / "model.pt"
    if not final.exists():
        say(f"training a single-head model on {target.name} ({len(target.splits['train'])} micrographs)")
        cfg = train_config(
            config,
            out_dir / "prepared",
            stage="1",
            epochs=config.single_epochs,
            t0_epochs=config.single_epochs,
            batches_per_epoch=config.single_batches,
        )
        train([target], run, cfg, resume=True)
    return final


def few_shot_head(
    config: BenchmarkConfig, out_dir: Path, base: str, base_model: Path, target: DatasetSpec, say: Callable[[str], None]
) -> Path:
    """A new head for ``target`` on ``base_model`` (trunk and generic head frozen); the checkpoint."""
    out = out_dir / "models" / f"fewshot-{base}" / f"{target.name}.pt"
    if not out.exists():
        train_stems, val_stems = target.splits["train"], target.splits["val"]
        data = labelled_micrographs(
            target.name,
            [target.micrograph_path(s) for s in train_stems],
            [target.coordinates[s] for s in train_stems],
            coords_format=target.format,
            val_micrographs=[target.micrograph_path(s) for s in val_stems],
            val_coordinates=[target.coordinates[s] for s in val_stems],
            size=ParticleSize(diameter_px=target.diameter_px),
        )
        cfg = FinetuneConfig(
            name=target.name,
            epochs=config.finetune_epochs,
            batches_per_epoch=config.finetune_batches,
            labels="complete",
            seed=config.seed,
            threads=config.threads,
            device=config.device,
        )
        finetune(data, out, cfg, model_path=base_model, resume=True, say=lambda line: None)
        say(f"few-shot head {target.name} on the {base} model: {out}")
    return out


# --- picks ----------------------------------------------------------------------------------


def picks_path(out_dir: Path, method: str, dataset: str) -> Path:
    return out_dir / "picks" / method / f"{dataset}.csv"


def _read_picks_csv(path: Path) -> dict[str, Picks]:
    """A picks CSV of this run (picks or truth); written for no micrograph with a particle it is empty: no picks."""
    return read_picks(path, "csv") if path.stat().st_size else {}


def _same(spec: DatasetSpec) -> DatasetSpec:
    return spec


def network_picks(
    out_dir: Path,
    method: str,
    checkpoint: Path,
    head: str,
    spec: DatasetSpec,
    config: BenchmarkConfig,
    diameter_factor: float = 1.0,
    resolve: Callable[[DatasetSpec], DatasetSpec] = _same,
    correct_size: bool = True,
) -> Path:
    """Pick the test micrographs of ``spec`` with one head into ``picks/<method>/<dataset>.csv`` (once);
    ``resolve`` gives the spec with its micrographs when they are needed.

    Picked as ``hydrapicker pick`` picks a dataset (:class:`hydrapicker.picking.picker.Picker`): with
    ``correct_size`` and a size head, the generic head's diameter (given x ``diameter_factor``)
    is corrected once, from a sample of every micrograph of the dataset (images only, no
    labels: a user picking zero-shot has them all), and the test micrographs are picked at it.
    The diameter each was picked at goes to ``<dataset>.diameters.json`` beside the picks."""
    target = picks_path(out_dir, method, spec.name)
    if target.exists():
        return target
    spec = resolve(spec)
    model, meta = load_model(checkpoint)
    settings = PickSettings(
        ParticleSize(diameter_px=spec.diameter_px * diameter_factor),
        head=head,
        threshold=SCORE_FLOOR,
        correct_size=correct_size,
        device=config.device,
    )
    picker = Picker(model, meta, settings)
    picker.calibrate(list(spec.micrographs))
    every = []
    with Progress(len(spec.splits["test"]), f"picking {spec.name} ({method})") as bar:
        for stem in spec.splits["test"]:
            every.append(picker.pick(picker.prepare(spec.micrograph_path(stem))))
            bar.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_diameters_path(target), json.dumps({p.micrograph: p.box_size for p in every}) + "\n")
    write_picks(target, every, "csv")
    return target


def _diameters_path(picks_file: Path) -> Path:
    return picks_file.with_suffix(".diameters.json")


def picked_diameters(out_dir: Path, method: str, dataset: str) -> list[float]:
    """The diameters (stored px) the test micrographs of ``dataset`` were picked at by ``method`` (empty if not recorded)."""
    path = _diameters_path(picks_path(out_dir, method, dataset))
    return list(json.loads(path.read_text()).values()) if path.exists() else []


def baseline_picks(
    out_dir: Path, name: str, script: Path, spec: DatasetSpec, resolve: Callable[[DatasetSpec], DatasetSpec] = _same
) -> Path | str:
    """Run a baseline script on the test micrographs of ``spec``; the picks file, or why there is none."""
    target = picks_path(out_dir, name, spec.name)
    if target.exists():
        return target
    if not script.exists():
        return f"{script} is not there"
    spec = resolve(spec)
    work = out_dir / "baselines" / name / spec.name
    shutil.rmtree(work, ignore_errors=True)
    command = [
        sys.executable,
        str(script),
        *[str(spec.micrograph_path(s)) for s in spec.splits["test"]],
        "--out",
        str(work),
        "--diameter-px",
        f"{spec.diameter_px:.4f}",
        "--pixel-size",
        f"{spec.pixel_size:.5f}",
    ]
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


def pooled(
    results: dict[str, Evaluation | str],
    specs: dict[str, DatasetSpec],
    out_dir: Path,
    method: str,
    truths: dict[str, dict[str, Picks]],
) -> Evaluation | None:
    """One evaluation over every dataset of a table (coordinates in units of each dataset's box)."""
    picks: dict[str, Picks] = {}
    every_truth: dict[str, Picks] = {}
    for name, result in results.items():
        if isinstance(result, str):
            continue
        d = specs[name].diameter_px
        found = _read_picks_csv(picks_path(out_dir, method, name))
        for stem, t in truths[name].items():
            key = f"{name}/{stem}"
            every_truth[key] = Picks(key, t.x / d, t.y / d, t.score, 1.0)
            if stem in found:
                p = found[stem]
                picks[key] = Picks(key, p.x / d, p.y / d, p.score, 1.0)
    return evaluate(picks, every_truth, box_size=1.0) if every_truth else None
