"""The epoch loop every training stage runs: batches, losses, validation, checkpoints, logs, resume.

What differs between stages (stage 1, stage 2, fine-tuning) is a :class:`hydrapicker.training.stages.StagePlan`;
:func:`fit` runs any of them. An epoch is ``batches_per_epoch`` batches. After each epoch the
data loss (loc + lambda_cls cls) is measured on a fixed set of validation crops (the ``val``
split; the ``train`` split, said so in the log, when no dataset has one); the checkpoint with the
lowest value is ``best.pt``, the latest ``last.pt`` (with optimiser, scheduler and RNG state, for
``resume``). Each run writes ``log.csv``, ``log.json`` and ``loss.png`` into its folder.

A run is reproducible on one machine with one thread count: the seed fixes the initial weights,
the data stream (batch ``i`` of epoch ``e`` depends only on the seed, ``e`` and ``i``) and dropout
(re-seeded from the same three before each batch); a resumed run restores the RNG state saved at
the end of the last finished epoch and so follows the same path.

Several processes (``torchrun``, :mod:`hydrapicker.distributed`): the model is wrapped in
DistributedDataParallel and one optimiser step averages the gradients of ``accumulate`` batches
on each of the W ranks: rank ``r`` draws batches ``(step W + r) accumulate + k``, so a step sees
the same ``W x accumulate`` whole single-dataset batches as one process with ``accumulate``
``W x accumulate`` (same seed), and gives the same weights up to float rounding
(tests/training/test_distributed.py). The bias term depends only on the weights, which every rank
holds identically: each rank adds ``lambda_bias L_bias`` once per step (not once per batch), and
DDP's average of W identical gradients is that gradient once (adding it on rank 0 alone would
divide it by W). Validation batches are shared out between ranks and their losses gathered;
rank 0 alone writes checkpoints, logs and plots; a resumed run reads ``last.pt`` on every rank.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from hydrapicker import distributed
from hydrapicker.checkpoint import checkpoint_payload, read_checkpoint, save_checkpoint
from hydrapicker.data.batches import CropBatches
from hydrapicker.data.project import DatasetSpec
from hydrapicker.defaults import GENERIC, SIZE_HEAD_LR_FACTOR
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_write_text, save_figure
from hydrapicker.loss import detection_loss, head_bias_loss, size_loss
from hydrapicker.model import HydraPicker
from hydrapicker.progress import Progress
from hydrapicker.training.config import TrainConfig

__all__ = ["LOG_FIELDS", "StagePlan", "check_start", "fit", "seed_everything"]


@dataclass(frozen=True)
class StagePlan:
    """What one training stage does differently from another (:mod:`hydrapicker.training.stages` makes them).

    Attributes:
        number: the stage's number, recorded in its checkpoints and logs (1, 2, or
            :data:`hydrapicker.checkpoint.FINETUNED_STAGE`); it also seeds the stage's RNG.
        epochs: epochs to run.
        optimiser: ``"adam"`` (cosine annealing with warm restarts every ``t0_epochs``) or
            ``"sgd"`` (momentum ``momentum``, constant rate).
        lr: the learning rate (the size head's is ``SIZE_HEAD_LR_FACTOR`` times it).
        pooled: every batch trains the generic head (stage 1: one head, datasets pooled);
            otherwise each batch trains its own dataset's head.
        head_bias: add ``lambda_bias`` times the head-similarity term once per step (stage 2).
    """

    number: int
    epochs: int
    optimiser: Literal["adam", "sgd"]
    lr: float
    t0_epochs: int = 40
    momentum: float = 0.9
    pooled: bool = False
    head_bias: bool = False

    def head_for(self, dataset: str) -> str:
        """The head a batch of ``dataset`` trains."""
        return GENERIC if self.pooled else dataset


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _checkpoint(
    model: HydraPicker, config: TrainConfig, stage: int, epoch: int, val_loss: float | None, **extra: Any
) -> dict:
    return checkpoint_payload(
        model,
        target_diameter_px=config.target_diameter_px,
        config=config.to_dict(),
        stage=stage,
        epoch=epoch,
        val_loss=val_loss,
        **extra,
    )


def _batches(datasets: Sequence, split: str, config: TrainConfig, n: int, *, train: bool, seed: int):
    return CropBatches(
        datasets,
        split,
        target_diameter_px=config.target_diameter_px,
        crop_size=config.crop_size,
        pad_to=config.pad_to,
        batch_size=config.batch_size,
        batches_per_epoch=n,
        rotate=config.rotate if train else False,
        scale_jitter=config.scale_jitter if train else (1.0, 1.0),
        seed=seed,
        cache_dir=config.cache_dir,
    )


def _validation_split(datasets: Sequence) -> str:
    # CropBatches' "val" falls back to a dataset's train micrographs when it has no val split
    # (hydrapicker.data.project.split_stems); say so in the log.
    if all(len(spec.splits.get("val", ())) for spec in datasets):
        return "val"
    if any(len(spec.splits.get("val", ())) for spec in datasets):
        return "val (train where a dataset has no val)"
    return "train (no val split)"


def _expected_particles(batch, density: Mapping[tuple[str, str], float] | None) -> list[float] | None:
    # Particles expected in each crop: the micrograph's density times the crop's area that
    # shows the micrograph (not padding).
    if density is None:
        return None
    areas = (~batch.padding).flatten(1).sum(1).tolist()
    return [density[(batch.dataset, stem)] * area for stem, area in zip(batch.micrographs, areas)]


def _trains_size(model: HydraPicker) -> bool:
    # A size head that is there and not frozen (fine-tuning freezes it with the trunk).
    return model.size_head is not None and any(p.requires_grad for p in model.size_head.parameters())


def _batch_losses(
    model: HydraPicker,
    batch,
    head: str,
    config: TrainConfig,
    density: Mapping[tuple[str, str], float] | None = None,
    net: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loc, cls, size)`` of one batch; ``size`` is 0 unless the model trains a size head."""
    # net: the model as trained (its DistributedDataParallel wrapper under torchrun)
    device = next(model.parameters()).device
    with_size = _trains_size(model) and batch.sizes is not None
    outputs = (model if net is None else net)(batch.images.to(device, non_blocking=True), head, with_size=with_size)
    size = None
    if with_size:
        outputs, sizes = outputs
        size = size_loss(sizes, [c.to(device) for c in batch.centres], batch.sizes.to(device))
    loss = detection_loss(
        outputs,
        [c.to(device) for c in batch.centres],
        box_size=config.target_diameter_px,
        stride=model.stride,
        iou_threshold=config.match_iou,
        ignore_iou=config.ignore_iou,
        alpha=config.focal_alpha,
        gamma=config.focal_gamma,
        expected_particles=_expected_particles(batch, density),
    )
    return loss.loc, loss.cls, loss.loc.new_zeros(()) if size is None else size


def _validate(model: HydraPicker, batches, plan: StagePlan, config: TrainConfig, density=None) -> dict[str, float]:
    model.eval()
    batches.set_epoch(0)  # the same crops every epoch, so epochs compare
    values = []
    with torch.no_grad():
        for index in distributed.shard(range(len(batches))):  # each rank its share; all of them in one process
            batch = batches.batch(index)
            loc, cls, size = _batch_losses(model, batch, plan.head_for(batch.dataset), config, density)
            values.append((index, loc.item(), cls.item(), size.item()))
    _, locs, clss, sizes = zip(*_in_batch_order(values))
    loc, cls = float(np.mean(locs)), float(np.mean(clss))
    # The best checkpoint is chosen on picking (loc + cls) alone; the size head is logged.
    return {
        "val_loss": loc + config.lambda_cls * cls,
        "val_loc": loc,
        "val_cls": cls,
        "val_size": float(np.mean(sizes)),
    }


def _in_batch_order(values: list[tuple]) -> list[tuple]:
    # Every rank's (batch index, ...) tuples in index order, so means add up as in one process.
    return sorted(value for part in distributed.all_gather(values) for value in part)


def _batch_seed(config: TrainConfig, stage: int, epoch: int, index: int) -> int:
    # Dropout masks of a batch depend on the batch, not on which rank draws it or what ran before.
    return int(np.random.SeedSequence([config.seed, stage, epoch, index]).generate_state(1)[0])


def _data_parallel(model: HydraPicker) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun (itself otherwise)."""
    if not distributed.is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


LOG_FIELDS = (
    "epoch",
    "train_loss",
    "train_loc",
    "train_cls",
    "train_bias",
    "train_size",
    "val_loss",
    "val_loc",
    "val_cls",
    "val_size",
    "lr",
    "seconds",
)


def _write_logs(stage_dir: Path, rows: list[dict], stage: int, val_split: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # .get: rows logged before the size columns existed (a resumed older run) leave them empty
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in LOG_FIELDS})
    atomic_write_text(stage_dir / "log.csv", text.getvalue())
    atomic_write_text(
        stage_dir / "log.json",
        json.dumps({"stage": stage, "validation_split": val_split, "epochs": rows}, indent=1) + "\n",
    )
    _plot_losses(stage_dir / "loss.png", rows, stage, val_split)


def _plot_losses(path: Path, rows: list[dict], stage: int, val_split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], label="train (loc + cls)")
    ax.plot(epochs, [r["val_loss"] for r in rows], label=f"validation: {val_split}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"HydraPicker stage {stage}")
    ax.legend()
    save_figure(fig, path, dpi=100)


def _optimiser(model: HydraPicker, plan: StagePlan, config: TrainConfig):
    # frozen parameters stay bit-identical; the size head learns at SIZE_HEAD_LR_FACTOR x the rate
    sized = {id(p) for p in model.size_head.parameters()} if model.size_head is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in sized]
    size_params = [p for p in model.parameters() if p.requires_grad and id(p) in sized]
    lr = plan.lr
    groups = [{"params": params}] + ([{"params": size_params, "lr": lr * SIZE_HEAD_LR_FACTOR}] if size_params else [])
    if plan.optimiser == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=plan.t0_epochs)
        return opt, sched
    opt = torch.optim.SGD(groups, lr=lr, momentum=plan.momentum, weight_decay=config.weight_decay)
    return opt, None


def check_start(out_dir: str | Path, resume: bool) -> dict | None:
    """Whether a stage may start in ``out_dir``: ``last.pt``'s state when resuming one, None for a fresh start.

    Raises:
        HydraPickerError: a run is already there and ``resume`` is not set, or the ``last.pt`` to
            resume from is not a readable checkpoint.
    """
    last_path = Path(out_dir) / "last.pt"
    if last_path.exists() and not resume:
        raise HydraPickerError(
            f"{last_path}: a training run is already there (use --resume to continue it, or another --out)"
        )
    return read_checkpoint(last_path) if resume and last_path.exists() else None


def fit(
    plan: StagePlan,
    model: HydraPicker,
    datasets: Sequence[DatasetSpec],
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    particle_density: Mapping[tuple[str, str], float] | None = None,
) -> Path:
    """Train ``model`` as ``plan`` says into ``out_dir``; returns the path of its ``best.pt``
    (``last.pt`` for a finished stage resumed without its ``best.pt``).

    Args:
        plan: the stage (:mod:`hydrapicker.training.stages`): epochs, optimiser, which head each
            batch trains, whether the head-similarity term is added.
        model: the model to train; only its parameters with ``requires_grad`` are optimised
            (fine-tuning: one new head). A resumed run loads ``last.pt``'s weights into it.
        datasets: the project's :class:`hydrapicker.data.project.DatasetSpec` list.
        config: the data, loss and run settings (crops, lambdas, seed, device ...).
        particle_density: partial labels: expected particles per rescaled px² of each
            ``(dataset, micrograph stem)``; its unlabelled anchors are then scored as
            positive-unlabelled (``expected_particles`` of :func:`hydrapicker.loss.detection_loss`).
        resume: continue from ``out_dir/last.pt``; a finished stage is left as it is.
        on_epoch_end: called with (epoch, log row) after each epoch's checkpoint is written.
    """
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    n_epochs, stage = plan.epochs, plan.number
    if config.threads:
        torch.set_num_threads(config.threads)
    state = check_start(out_dir, resume)
    # A last.pt carried to another machine without its best.pt (the campaign commits last.pt
    # only): the best model is then the best since this resume, and a finished stage's is its last.
    best_carried = best_path.exists()
    if state is not None and state["epoch"] + 1 >= n_epochs:
        if distributed.is_main():  # a kill after the last checkpoint but before its logs: write them now
            _write_logs(out_dir, list(state["log"]), stage, _validation_split(datasets))
        return best_path if best_carried else last_path
    seed_everything(config.seed + 1000 * stage)
    model = model.to(config.device)
    if config.channels_last:
        # 2-3x faster convs on CPU (benchmarks/train_step.py); the numbers are the same layout-free.
        model = model.to(memory_format=torch.channels_last)
    optimiser, scheduler = _optimiser(model, plan, config)
    start, best_val, rows = 0, math.inf, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, best_val, rows = state["epoch"] + 1, state["best_val"] if best_carried else math.inf, list(state["log"])

    val_split = _validation_split(datasets)
    world, rank, per_rank = distributed.world_size(), distributed.rank(), config.accumulate
    net = _data_parallel(model)
    train_batches = _batches(
        datasets, "train", config, config.batches_per_epoch * world * per_rank, train=True, seed=config.seed
    )
    val_batches = _batches(datasets, "val", config, config.val_batches, train=False, seed=config.seed + 1)
    # rank 0 reports: a bar per epoch on a terminal; in a log file lines per epoch (at most every PROGRESS_LINE_S)
    epochs = Progress(n_epochs - start, f"stage {stage}", "epochs", enabled=rank == 0, bar=False)
    for epoch in range(start, n_epochs):
        t0 = time.perf_counter()
        model.train()
        train_batches.set_epoch(epoch)
        values, biases = [], []
        bar = Progress(
            config.batches_per_epoch,
            f"stage {stage} epoch {epoch + 1}/{n_epochs}",
            "batches",
            leave=False,
            enabled=rank == 0,
        )
        for step in range(config.batches_per_epoch):
            optimiser.zero_grad(set_to_none=True)
            for k in range(per_rank):
                index = (step * world + rank) * per_rank + k
                batch = train_batches.batch(index)
                torch.manual_seed(_batch_seed(config, stage, epoch, index))
                last = k == per_rank - 1
                # DDP averages the gradients over ranks on the step's last backward only
                with contextlib.nullcontext() if last or net is model else net.no_sync():
                    loc, cls, size = _batch_losses(
                        model, batch, plan.head_for(batch.dataset), config, particle_density, net
                    )
                    loss = (loc + config.lambda_cls * cls + config.lambda_size * size) / per_rank
                    if last:  # the bias term once per step (see the module docstring)
                        bias = head_bias_loss(model) if plan.head_bias else loc.new_zeros(())
                        loss = loss + config.lambda_bias * bias
                    loss.backward()
                values.append((index, loc.item(), cls.item(), size.item()))
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimiser.step()
            if scheduler is not None:
                scheduler.step(epoch + (step + 1) / config.batches_per_epoch)
            biases.append(bias.item())
            bar.update(note=f"loss {loss.item():.3f}")
        bar.close()
        if not values:
            raise HydraPickerError("the training split yielded no batches (no training micrographs?)")
        _, locs, clss, sizes = zip(*_in_batch_order(values))  # every rank's batches
        train_loc, train_cls, train_bias = np.mean(locs), np.mean(clss), np.mean(biases)
        row = {
            "epoch": epoch,
            "train_loss": float(train_loc + config.lambda_cls * train_cls),
            "train_loc": float(train_loc),
            "train_cls": float(train_cls),
            "train_bias": float(train_bias),
            "train_size": float(np.mean(sizes)),
            **_validate(model, val_batches, plan, config, particle_density),
            "lr": float(optimiser.param_groups[0]["lr"]),
        }
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        improved = row["val_loss"] < best_val
        best_val = min(best_val, row["val_loss"])
        if rank == 0:  # every rank holds the same weights; one writes them
            if improved:
                save_checkpoint(best_path, _checkpoint(model, config, stage, epoch, best_val))
            save_checkpoint(
                last_path,
                _checkpoint(
                    model,
                    config,
                    stage,
                    epoch,
                    row["val_loss"],
                    optimiser=optimiser.state_dict(),
                    scheduler=scheduler.state_dict() if scheduler is not None else None,
                    rng=_rng_state(),
                    best_val=best_val,
                    log=rows,
                ),
            )
            _write_logs(out_dir, rows, stage, val_split)
        epochs.update(note=f"val loss {row['val_loss']:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    epochs.close()
    distributed.barrier()  # the next stage reads best.pt on every rank
    return best_path
