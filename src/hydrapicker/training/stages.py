"""The training stages (paper, section 4), each a :class:`~hydrapicker.training.loop.StagePlan` for :func:`~hydrapicker.training.loop.fit`.

- **Stage 1**: a single head, trained on batches of every dataset, Adam with cosine annealing
  and warm restarts every ``t0_epochs`` (paper: 40). The single head is stored as the model's
  ``generic`` head, so a stage-1 checkpoint is already a zero-shot picker.
- **Stage 2**: a multi-head model initialised from stage 1's best checkpoint: the trunk, and
  every dataset head *and* the generic head copied from the single head; SGD with momentum at a
  constant learning rate; ``L = L_loc + lambda_cls L_cls + lambda_bias L_bias`` with loc and cls
  through the batch's dataset head (see :mod:`hydrapicker.loss`).
- **Fine-tuning** (:mod:`hydrapicker.training.finetune`): a given model whose parameters are
  frozen except one new head's; Adam with one cosine over the run, loc and cls through the
  batch's dataset head, no bias term.

:func:`train` runs stage 1, stage 2 or both into ``OUT/stage1`` and ``OUT/stage2``;
``OUT/model.pt`` is a copy of the last stage's ``best.pt``, ``OUT/config.json`` the config.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from hydrapicker import __version__, distributed
from hydrapicker.checkpoint import FINETUNED_STAGE, load_checkpoint
from hydrapicker.data.project import DatasetSpec
from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_path, atomic_write_text
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import HydraPicker
from hydrapicker.presets import get_preset
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.loop import StagePlan, check_start, fit, seed_everything

__all__ = ["build_stage_model", "finetune_plan", "stage1_plan", "stage2_plan", "train"]


def stage1_plan(config: TrainConfig) -> StagePlan:
    """One head on every dataset pooled: Adam with warm restarts."""
    return StagePlan(1, config.epochs, "adam", config.lr, t0_epochs=config.t0_epochs, pooled=True)


def stage2_plan(config: TrainConfig) -> StagePlan:
    """One head per dataset plus the generic head tied to them: SGD with momentum."""
    return StagePlan(2, config.stage2_epochs, "sgd", config.stage2_lr, momentum=config.stage2_momentum, head_bias=True)


def finetune_plan(epochs: int, lr: float) -> StagePlan:
    """One new head, everything else frozen: Adam annealed to 0 over the run (one cosine)."""
    return StagePlan(FINETUNED_STAGE, epochs, "adam", lr, t0_epochs=epochs)


def build_stage_model(
    plan: StagePlan, datasets: Sequence[DatasetSpec], config: TrainConfig, init_from: Path | None = None
) -> HydraPicker:
    """The model a stage starts from: a fresh single-head one (stage 1), or stage 1's best with a head per dataset.

    The global generators are seeded from the config's seed and the stage first, so the initial
    weights depend on nothing else.
    """
    seed_everything(config.seed + 1000 * plan.number)
    preset = get_preset(config.preset)
    if plan.number == 1:
        return HydraPicker(preset, size_head=config.size_head)
    assert init_from is not None, "stage 2 starts from stage 1's checkpoint"
    single, meta = load_checkpoint(init_from)
    if meta.preset != preset:
        raise HydraPickerError(
            f"{init_from}: stage-1 model has preset {meta.preset.name!r}, config asks for {preset.name!r}"
        )
    model = HydraPicker(preset, size_head=single.size_head is not None)
    model.trunk.load_state_dict(single.trunk.state_dict())
    model.generic.load_state_dict(single.generic.state_dict())
    if single.size_head is not None:
        model.size_head.load_state_dict(single.size_head.state_dict())
    for spec in datasets:
        model.add_head(spec.name, init_from=GENERIC)
    return model


def _check_run_folder(out_dir: Path, config: TrainConfig, resume: bool) -> None:
    """Fail before anything is written when a stage ``config`` runs cannot start in ``out_dir``.

    A run already there without ``resume``, or a ``last.pt`` to resume that is not readable, is an
    error here rather than in :func:`~hydrapicker.training.loop.fit`, after ``config.json`` and the
    run record of the run already there were replaced.
    """
    stages = {"1": ("stage1",), "2": ("stage2",), "both": ("stage1", "stage2")}[config.stage]
    for stage in stages:
        check_start(Path(out_dir) / stage, resume)


def train(
    datasets: Sequence[DatasetSpec],
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, int, dict], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> Path:
    """Train the stages ``config.stage`` asks for into ``out_dir``; returns ``out_dir/model.pt``.

    ``on_epoch_end(stage, epoch, row)`` is called after every epoch (tests use it to interrupt).
    A run that cannot start (a run already there without ``resume``, an unreadable ``last.pt``)
    fails before anything is written; ``on_start()`` is then called on the main process, before
    ``config.json`` is written (the CLI writes its run record there).
    """
    if not datasets:
        raise HydraPickerError("the project lists no datasets to train on")
    names = [spec.name for spec in datasets]
    if GENERIC in names or len(set(names)) != len(names):
        raise HydraPickerError(f"dataset names must be unique and not {GENERIC!r}: {names}")
    out_dir = Path(out_dir)
    _check_run_folder(out_dir, config, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None and distributed.is_main():
        on_start()
    keep_large_blocks()
    record = {
        "hydrapicker_version": __version__,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "datasets": names,
        "config": config.to_dict(),
        "world_size": distributed.world_size(),  # a step averages accumulate x world_size batches
    }
    if distributed.is_main():
        atomic_write_text(out_dir / "config.json", json.dumps(record, indent=2) + "\n")

    def callback(stage: int):
        return None if on_epoch_end is None else (lambda epoch, row: on_epoch_end(stage, epoch, row))

    stage1_best = out_dir / "stage1" / "best.pt"
    best = stage1_best
    if config.stage in ("1", "both"):
        plan = stage1_plan(config)
        model = build_stage_model(plan, datasets, config)
        best = fit(plan, model, datasets, out_dir / "stage1", config, resume=resume, on_epoch_end=callback(1))
    if config.stage in ("2", "both"):
        if not stage1_best.exists():
            raise HydraPickerError(
                f"{stage1_best}: stage 2 starts from stage 1's best model, which is not there (run --stage 1 first)"
            )
        plan = stage2_plan(config)
        model = build_stage_model(plan, datasets, config, init_from=stage1_best)
        best = fit(plan, model, datasets, out_dir / "stage2", config, resume=resume, on_epoch_end=callback(2))
    final = out_dir / "model.pt"
    if distributed.is_main():
        with atomic_path(final) as tmp:
            shutil.copyfile(best, tmp)
    distributed.barrier()
    return final
