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
installed) continues where it stopped when run again with the same ``OUT``. ``OUT/protocol.json``
records the protocol, so that a run with another config (or without ``--quick``) cannot continue
the folder and mix the two protocols' results.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydrapicker.apps.benchmark.config import BenchmarkConfig
from hydrapicker.apps.benchmark.report import Table, _diameter_method, write_report
from hydrapicker.apps.benchmark.steps import (
    GroupData,
    baseline_picks,
    few_shot_head,
    multihead_model,
    network_picks,
    picks_path,
    pooled,
    real_datasets,
    score,
    single_model,
    truth,
)
from hydrapicker.bundled import pretrained_model_path
from hydrapicker.data.project import DatasetSpec
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import Evaluation
from hydrapicker.io.files import atomic_write_text

__all__ = ["PROTOCOL_RECORD", "check_protocol", "protocol_record", "run_benchmark"]

#: The protocol a benchmark folder holds (every config field but where it runs).
PROTOCOL_RECORD = "protocol.json"
_WHERE_IT_RUNS = ("device", "threads", "processes")


def _plain(value: Any) -> Any:
    # JSON's view of a config value: paths as text, tuples as lists (so a record read back compares equal).
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def protocol_record(config: BenchmarkConfig) -> dict[str, Any]:
    """What ``OUT/protocol.json`` holds: every field of ``config`` but where the networks run, as JSON values."""
    return {f.name: _plain(getattr(config, f.name)) for f in fields(config) if f.name not in _WHERE_IT_RUNS}


def check_protocol(config: BenchmarkConfig, out_dir: str | os.PathLike) -> None:
    """Refuse to continue ``out_dir`` with another protocol than the one it holds (``OUT/protocol.json``).

    Every step skips what is already there, so a run of another config into the same folder would
    quietly report the first protocol's models and picks as the second's. Where the networks run
    (device, threads, processes) may change. A folder without the record (made before it existed,
    or new) passes.
    """
    path = Path(out_dir) / PROTOCOL_RECORD
    if not path.is_file():
        return
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HydraPickerError(f"{path}: not a readable protocol record ({exc}); give another --out") from exc
    now = protocol_record(config)
    changes = [f"{key} {held.get(key)!r} before, {value!r} now" for key, value in now.items() if held.get(key) != value]
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise HydraPickerError(
            f"--out {out_dir}: holds a benchmark of another protocol ({shown}); give another --out, "
            "or the same CONFIG (and --quick) to continue it"
        )


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike,
    *,
    say: Callable[[str], None] = print,
    config_path: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> Path:
    """Run (or continue) the protocol into ``out_dir``; returns ``out_dir/REPORT.md``.

    ``on_start()`` is called once ``out_dir`` is found to hold this protocol (or none), before
    anything is written (the CLI writes its run record there).

    Raises:
        HydraPickerError: ``out_dir`` holds a benchmark of another protocol (:func:`check_protocol`).
    """
    out_dir = Path(out_dir)
    check_protocol(config, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start()
    atomic_write_text(out_dir / PROTOCOL_RECORD, json.dumps(protocol_record(config), indent=2) + "\n")
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

    def picks(
        method: str,
        checkpoint: Path | Callable[[DatasetSpec], Path],
        head: str | None = "generic",
        factor: float = 1.0,
        correct_size: bool = True,
    ):
        """A column maker: one head (None: the dataset's own) of a checkpoint (or one per dataset)."""

        def make(spec: DatasetSpec) -> Path:
            if picks_path(out_dir, method, spec.name).exists():
                return picks_path(out_dir, method, spec.name)
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
        t2[name] = timed(
            f"baseline {name}",
            column,
            zero_rows,
            lambda s, n=name, sc=script: baseline_picks(out_dir, n, sc, s, resolve),
        )
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
            curve[error] = timed(
                "picking",
                column,
                zero_rows,
                picks(method, multihead, factor=1.0 + error, correct_size=kind == "generic"),
            )
    real_results: dict[str, dict[str, Evaluation | str]] = {}
    if reals:
        say("zero-shot on the bundled real micrographs")
        real_results["shipped"] = column(reals, picks("shipped", pretrained_model_path()))
        real_results["generic"] = column(reals, picks("generic", multihead))
        for name, script in config.baselines:
            real_results[name] = column(reals, lambda s, n=name, sc=script: baseline_picks(out_dir, n, sc, s))

    def table(title: str, caption: str, rows: Sequence[DatasetSpec], results: dict, labels: dict[str, str]) -> Table:
        names = [r.name for r in rows]
        cut = {m: {n: results[m][n] for n in names if n in results[m]} for m in labels}
        curves = {m: pooled(cut[m], specs, out_dir, m, truths) for m in labels}
        return Table(title, caption, names, labels, cut, curves)

    baseline_labels = {name: name for name, _ in config.baselines}
    tables = [
        table(
            "Table 1: generic vs specialised heads (source test micrographs)",
            "HydraPicker_gen picks with the generic head, HydraPicker_spec with each dataset's own head.",
            sources,
            t1,
            {"generic": "HydraPicker_gen", "spec": "HydraPicker_spec"},
        ),
        table(
            "Table 2: zero-shot picking (target and unseen-protein test micrographs)",
            "The generic head has never seen these datasets; the unseen proteins were in no training run. "
            "'single models' are single-head models trained on each target's few training micrographs (none for unseen proteins).",
            zero_rows,
            t2,
            {"generic": "HydraPicker (generic head)", "single": "single models", **baseline_labels},
        ),
        table(
            "Table 3: few-shot picking (target test micrographs)",
            "A new head per target trained on its training micrographs, trunk and generic head frozen.",
            targets,
            t3,
            {"fewshot-multi": "HydraPicker few-shot", "single": "single models"},
        ),
        table(
            "Table 4: multi-head vs single-head, fine-tuned (target test micrographs)",
            "The same few-shot head training on the multi-head (stage 2) model and on the single-head (stage 1) model.",
            targets,
            t3,
            {"fewshot-multi": "multi-head", "fewshot-single-head": "single-head"},
        ),
    ]
    timings["total"] = sum(timings.values())
    return write_report(
        out_dir,
        config,
        tables,
        diameter,
        real_results,
        reals,
        timings,
        config_path,
        len(targets),
        {name: spec.diameter_px for name, spec in specs.items()},
    )
