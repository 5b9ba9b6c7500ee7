"""Training (paper, section 4): stage 1 one head on all datasets pooled, stage 2 one head per dataset.

- **Stage 1**: a single head, trained on batches of every dataset, Adam with cosine annealing
  and warm restarts every ``t0_epochs`` (paper: 40). The single head is stored as the model's
  ``generic`` head, so a stage-1 checkpoint is already a zero-shot picker.
- **Stage 2**: a multi-head model initialised from stage 1's best checkpoint: the trunk, and
  every dataset head *and* the generic head copied from the single head; SGD with momentum at a
  constant learning rate; ``L = L_loc + lambda_cls L_cls + lambda_bias L_bias`` with loc and cls
  through the batch's dataset head (see :mod:`hydrapicker.loss`).

- **Fine-tuning** (stage 3, :mod:`hydrapicker.finetune`): a given model whose parameters are
  frozen except one new head's (``requires_grad``); Adam with cosine annealing as stage 1, loc
  and cls through the batch's dataset head, no bias term; partial labels may be scored as
  positive-unlabelled (``particle_density``).

An epoch is ``batches_per_epoch`` batches. After each epoch the data loss (loc + lambda_cls cls)
is measured on a fixed set of validation crops (the ``val`` split; the ``train`` split, said so
in the log, when no dataset has one); the checkpoint with the lowest value is ``best.pt``, the
latest ``last.pt`` (with optimiser, scheduler and RNG state, for ``resume``). Each stage writes
``log.csv``, ``log.json`` and ``loss.png`` into its folder (``OUT/stage1``, ``OUT/stage2``);
``OUT/model.pt`` is a copy of the last stage's ``best.pt``, ``OUT/config.json`` the config.

A run is reproducible on one machine with one thread count: the seed fixes the initial weights,
the data stream (batch ``i`` of epoch ``e`` depends only on the seed, ``e`` and ``i``) and dropout
(re-seeded from the same three before each batch); a resumed run restores the RNG state saved at
the end of the last finished epoch and so follows the same path.

Several processes (``torchrun``, :mod:`hydrapicker.distributed`): the model is wrapped in
DistributedDataParallel and one optimiser step averages the gradients of ``accumulate`` batches
on each of the W ranks: rank ``r`` draws batches ``(step W + r) accumulate + k``, so a step sees
the same ``W x accumulate`` whole single-dataset batches as one process with ``accumulate``
``W x accumulate`` (same seed), and gives the same weights up to float rounding
(tests/test_distributed.py). The bias term depends only on the weights, which every rank holds
identically: each rank adds ``lambda_bias L_bias`` once per step (not once per batch), and DDP's
average of W identical gradients is that gradient once (adding it on rank 0 alone would divide
it by W). Validation batches are shared out between ranks and their losses gathered; rank 0
alone writes checkpoints, logs and plots; a resumed run reads ``last.pt`` on every rank.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydrapicker import __version__, distributed
from hydrapicker.defaults import (
    ANCHOR_STRIDE,
    BATCH_SIZE,
    CROP_SIZE,
    FOCAL_ALPHA,
    FOCAL_GAMMA,
    LAMBDA_BIAS,
    LAMBDA_CLS,
    LAMBDA_SIZE,
    MATCH_IOU,
    SIZE_HEAD_LR_FACTOR,
    PAD_TO,
    PARTICLE_DIAMETER_PX,
)
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_path, atomic_write_text, save_figure
from hydrapicker.loss import detection_loss, head_bias_loss, size_loss
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import GENERIC, HydraPicker, ModelPreset, get_preset

__all__ = ["TrainConfig", "check_device", "ModelMeta", "train", "train_stage", "load_checkpoint", "CHECKPOINT_FORMAT", "FINETUNE_STAGE"]

#: Tag of the checkpoint layout; bump when it changes.
CHECKPOINT_FORMAT = "hydrapicker-checkpoint/1"

STAGES = ("1", "2", "both")

#: The stage number of a fine-tuning run (one new head trained, everything else frozen).
FINETUNE_STAGE = 3


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is written."""
    if device != "cpu" and not torch.cuda.is_available():
        raise HydraPickerError(f"--device {device}: no CUDA device is available here (use --device cpu)")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved with every checkpoint and in ``config.json``).

    Paper values: Adam with warm restarts every 40 epochs (``t0_epochs``), SGD with momentum in
    stage 2, focal gamma 2, match IoU 0.6, 4 crops of 368 px from canvases of at least 520 px.
    The paper gives no learning rates, lambdas, dropout or epoch length; ``lr`` is Adam's usual
    1e-3; ``stage2_lr`` 1e-4: SGD at 0.01 (RetinaNet's rate) made the localisation loss diverge in
    stage 2 on the bundled micrographs, and 1e-3 on the benchmark's 22 source datasets (val loss
    0.74 after stage 1, 2.2-3.5 in stage 2); 1e-4 held it (tiny preset, measured, benchmarks/REPORT.md); ``max_grad_norm`` guards the first steps.
    ``ignore_iou`` (None: off, as the paper) leaves anchors that overlap a particle that much
    but are not matched out of the classification loss. ``channels_last`` only changes speed.
    ``size_head`` adds the size head (:class:`hydrapicker.model.HydraPicker`), trained with
    ``lambda_size`` times its loss on the scale jitter each crop was drawn with; it is what lets
    ``pick`` correct a wrong particle diameter, so it wants a wide ``scale_jitter``.
    """

    preset: str = "small"
    stage: str = "both"
    epochs: int = 120
    stage2_epochs: int = 40
    batches_per_epoch: int = 50
    val_batches: int = 8
    lr: float = 1e-3
    t0_epochs: int = 40
    stage2_lr: float = 1e-4
    stage2_momentum: float = 0.9
    weight_decay: float = 0.0
    max_grad_norm: float | None = 10.0
    lambda_cls: float = LAMBDA_CLS
    lambda_bias: float = LAMBDA_BIAS
    size_head: bool = False
    lambda_size: float = LAMBDA_SIZE
    focal_alpha: float = FOCAL_ALPHA
    focal_gamma: float = FOCAL_GAMMA
    match_iou: float = MATCH_IOU
    ignore_iou: float | None = None
    target_diameter_px: float = PARTICLE_DIAMETER_PX
    crop_size: int = CROP_SIZE
    pad_to: int = PAD_TO
    batch_size: int = BATCH_SIZE
    rotate: bool = True
    scale_jitter: tuple[float, float] = (1.0, 1.0)
    seed: int = 0
    #: Batches whose gradients one optimiser step averages, per process (under torchrun the
    #: step averages ``accumulate x world size`` batches).
    accumulate: int = 1
    threads: int | None = None
    channels_last: bool = True
    #: Where the network trains ("cpu" or "cuda"); data are prepared on the CPU either way.
    device: str = "cpu"
    #: Folder for prepared (rescaled, normalised) micrographs (CropBatches' ``cache_dir``);
    #: a big collection outgrows the in-memory cache, and re-preparing costs ~20x a disk read.
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        get_preset(self.preset)
        if self.stage not in STAGES:
            raise HydraPickerError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("epochs", "stage2_epochs", "batches_per_epoch", "val_batches", "t0_epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise HydraPickerError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_size % ANCHOR_STRIDE:
            raise HydraPickerError(f"crop_size must be a multiple of {ANCHOR_STRIDE}, got {self.crop_size}")
        check_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        data["scale_jitter"] = tuple(data["scale_jitter"])
        return cls(**data)


@dataclass(frozen=True)
class ModelMeta:
    """What a picker needs to know besides the weights."""

    preset: ModelPreset
    head_names: tuple[str, ...]
    target_diameter_px: float
    anchor_stride: int
    normalisation: dict = field(default_factory=dict)
    stage: int = 1
    epoch: int = 0
    val_loss: float | None = None
    version: str = __version__


def _normalisation_settings(config: TrainConfig) -> dict:
    # What the data pipeline did to the micrograph before the model saw it; pick repeats it.
    return {"function": "hydrapicker.data.normalise_micrograph", "diameter_px": config.target_diameter_px}


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _load_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HydraPickerError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = " ".join(str(exc).split()).split(". ")[0][:160]  # torch's zip errors run to five sentences
        raise HydraPickerError(f"{path}: not a readable HydraPicker checkpoint, cut short or not one ({type(exc).__name__}: {detail})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise HydraPickerError(f"{path}: not a HydraPicker checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    return payload


def _meta_from_payload(payload: dict) -> ModelMeta:
    return ModelMeta(
        preset=ModelPreset.from_dict(payload["preset"]),
        head_names=tuple(payload["head_names"]),
        target_diameter_px=float(payload["target_diameter_px"]),
        anchor_stride=int(payload["anchor_stride"]),
        normalisation=dict(payload["normalisation"]),
        stage=int(payload["stage"]),
        epoch=int(payload["epoch"]),
        val_loss=payload.get("val_loss"),
        version=str(payload["version"]),
    )


def load_checkpoint(path: str | Path) -> tuple[HydraPicker, ModelMeta]:
    """Load a checkpoint written by :func:`train` as a model in eval mode (channels-last), with its metadata."""
    payload = _load_payload(path)
    meta = _meta_from_payload(payload)
    size_head = any(key.startswith("size_head.") for key in payload["model"])
    model = HydraPicker(meta.preset, meta.head_names, size_head=size_head)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise HydraPickerError(f"{path}: weights do not fit preset {meta.preset.name!r} ({exc})") from exc
    # channels-last convs are 2-3x faster on CPU (benchmarks/train_step.py)
    return model.to(memory_format=torch.channels_last).eval(), meta


def _checkpoint(model: HydraPicker, config: TrainConfig, stage: int, epoch: int, val_loss: float | None, **extra: Any) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "preset": model.preset.to_dict(),
        "head_names": list(model.head_names),
        "target_diameter_px": config.target_diameter_px,
        "anchor_stride": model.stride,
        "normalisation": _normalisation_settings(config),
        "config": config.to_dict(),
        "stage": stage,
        "epoch": epoch,
        "val_loss": val_loss,
        "model": model.state_dict(),
        **extra,
    }


def _batches(datasets: Sequence, split: str, config: TrainConfig, n: int, *, train: bool, seed: int):
    from hydrapicker.data import CropBatches  # the data pipeline is only needed when training

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
    # (hydrapicker.data.split_stems); say so in the log.
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
    model: HydraPicker, batch, head: str, config: TrainConfig, density: Mapping[tuple[str, str], float] | None = None,
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


def _validate(model: HydraPicker, batches, stage: int, config: TrainConfig, density=None) -> dict[str, float]:
    model.eval()
    batches.set_epoch(0)  # the same crops every epoch, so epochs compare
    values = []
    with torch.no_grad():
        for index in distributed.shard(range(len(batches))):  # each rank its share; all of them in one process
            batch = batches.batch(index)
            loc, cls, size = _batch_losses(model, batch, GENERIC if stage == 1 else batch.dataset, config, density)
            values.append((index, loc.item(), cls.item(), size.item()))
    _, locs, clss, sizes = zip(*_in_batch_order(values))
    loc, cls = float(np.mean(locs)), float(np.mean(clss))
    # The best checkpoint is chosen on picking (loc + cls) alone; the size head is logged.
    return {"val_loss": loc + config.lambda_cls * cls, "val_loc": loc, "val_cls": cls, "val_size": float(np.mean(sizes))}


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
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


LOG_FIELDS = ("epoch", "train_loss", "train_loc", "train_cls", "train_bias", "train_size", "val_loss", "val_loc", "val_cls", "val_size",
              "lr", "seconds")


def _write_logs(stage_dir: Path, rows: list[dict], stage: int, val_split: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # .get: rows logged before the size columns existed (a resumed older run) leave them empty
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in LOG_FIELDS})
    atomic_write_text(stage_dir / "log.csv", text.getvalue())
    atomic_write_text(
        stage_dir / "log.json", json.dumps({"stage": stage, "validation_split": val_split, "epochs": rows}, indent=1) + "\n"
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


def _build_stage_model(stage: int, datasets: Sequence, config: TrainConfig, init_from: Path | None) -> HydraPicker:
    preset = get_preset(config.preset)
    if stage == 1:
        return HydraPicker(preset, size_head=config.size_head)
    assert init_from is not None
    single, meta = load_checkpoint(init_from)
    if meta.preset != preset:
        raise HydraPickerError(f"{init_from}: stage-1 model has preset {meta.preset.name!r}, config asks for {preset.name!r}")
    model = HydraPicker(preset, size_head=single.size_head is not None)
    model.trunk.load_state_dict(single.trunk.state_dict())
    model.generic.load_state_dict(single.generic.state_dict())
    if single.size_head is not None:
        model.size_head.load_state_dict(single.size_head.state_dict())
    for spec in datasets:
        model.add_head(spec.name, init_from=GENERIC)
    return model


def _optimiser(model: HydraPicker, stage: int, config: TrainConfig):
    # frozen parameters stay bit-identical; the size head learns at SIZE_HEAD_LR_FACTOR x the rate
    sized = {id(p) for p in model.size_head.parameters()} if model.size_head is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in sized]
    size_params = [p for p in model.parameters() if p.requires_grad and id(p) in sized]
    lr = config.lr if stage in (1, FINETUNE_STAGE) else config.stage2_lr
    groups = [{"params": params}] + ([{"params": size_params, "lr": lr * SIZE_HEAD_LR_FACTOR}] if size_params else [])
    if stage in (1, FINETUNE_STAGE):
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=config.t0_epochs)
        return opt, sched
    opt = torch.optim.SGD(groups, lr=lr, momentum=config.stage2_momentum, weight_decay=config.weight_decay)
    return opt, None


def train_stage(
    stage: int,
    datasets: Sequence,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    init_from: str | Path | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    model: HydraPicker | None = None,
    particle_density: Mapping[tuple[str, str], float] | None = None,
) -> Path:
    """Run one training stage into ``out_dir``; returns the path of its ``best.pt``.

    Args:
        stage: 1 (single head, pooled, Adam), 2 (multi-head, SGD; needs ``init_from``) or
            ``FINETUNE_STAGE`` (needs ``model``).
        datasets: the project's :class:`hydrapicker.data.DatasetSpec` list.
        init_from: stage-1 checkpoint that stage 2 starts from.
        model: the model to train instead of one built for the stage; only its parameters
            with ``requires_grad`` are optimised (fine-tuning: one new head).
        particle_density: partial labels: expected particles per rescaled px² of each
            ``(dataset, micrograph stem)``; its unlabelled anchors are then scored as
            positive-unlabelled (``expected_particles`` of :func:`hydrapicker.loss.detection_loss`).
        resume: continue from ``out_dir/last.pt``; a finished stage is left as it is.
        on_epoch_end: called with (epoch, log row) after each epoch's checkpoint is written.
    """
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    n_epochs = config.stage2_epochs if stage == 2 else config.epochs
    if config.threads:
        torch.set_num_threads(config.threads)
    if last_path.exists() and not resume:
        raise HydraPickerError(f"{last_path}: a training run is already there (use --resume to continue it, or another --out)")

    state = _load_payload(last_path) if resume and last_path.exists() else None
    if state is not None and state["epoch"] + 1 >= n_epochs:
        if distributed.is_main():  # a kill after the last checkpoint but before its logs: write them now
            _write_logs(out_dir, list(state["log"]), stage, _validation_split(datasets))
        return best_path
    _seed_everything(config.seed + 1000 * stage)
    if model is None:
        model = _build_stage_model(stage, datasets, config, Path(init_from) if init_from else None)
    model = model.to(config.device)
    if config.channels_last:
        # 2-3x faster convs on CPU (benchmarks/train_step.py); the numbers are the same layout-free.
        model = model.to(memory_format=torch.channels_last)
    optimiser, scheduler = _optimiser(model, stage, config)
    start, best_val, rows = 0, math.inf, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, best_val, rows = state["epoch"] + 1, state["best_val"], list(state["log"])

    val_split = _validation_split(datasets)
    world, rank, per_rank = distributed.world_size(), distributed.rank(), config.accumulate
    net = _data_parallel(model)
    train_batches = _batches(datasets, "train", config, config.batches_per_epoch * world * per_rank, train=True, seed=config.seed)
    val_batches = _batches(datasets, "val", config, config.val_batches, train=False, seed=config.seed + 1)
    from tqdm import tqdm

    for epoch in range(start, n_epochs):
        t0 = time.perf_counter()
        model.train()
        train_batches.set_epoch(epoch)
        values, biases = [], []
        bar = tqdm(range(config.batches_per_epoch), desc=f"stage {stage} epoch {epoch + 1}/{n_epochs}",
                   leave=False, disable=None if rank == 0 else True)  # fmt: skip
        for step in bar:
            optimiser.zero_grad(set_to_none=True)
            for k in range(per_rank):
                index = (step * world + rank) * per_rank + k
                batch = train_batches.batch(index)
                torch.manual_seed(_batch_seed(config, stage, epoch, index))
                last = k == per_rank - 1
                # DDP averages the gradients over ranks on the step's last backward only
                with contextlib.nullcontext() if last or net is model else net.no_sync():
                    loc, cls, size = _batch_losses(model, batch, GENERIC if stage == 1 else batch.dataset, config, particle_density, net)
                    loss = (loc + config.lambda_cls * cls + config.lambda_size * size) / per_rank
                    if last:  # the bias term once per step (see the module docstring)
                        bias = head_bias_loss(model) if stage == 2 else loc.new_zeros(())
                        loss = loss + config.lambda_bias * bias
                    loss.backward()
                values.append((index, loc.item(), cls.item(), size.item()))
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimiser.step()
            if scheduler is not None:
                scheduler.step(epoch + (step + 1) / config.batches_per_epoch)
            biases.append(bias.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
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
            **_validate(model, val_batches, stage, config, particle_density),
            "lr": float(optimiser.param_groups[0]["lr"]),
        }
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        improved = row["val_loss"] < best_val
        best_val = min(best_val, row["val_loss"])
        if rank == 0:  # every rank holds the same weights; one writes them
            if improved:
                _save(best_path, _checkpoint(model, config, stage, epoch, best_val))
            _save(
                last_path,
                _checkpoint(
                    model, config, stage, epoch, row["val_loss"],
                    optimiser=optimiser.state_dict(),
                    scheduler=scheduler.state_dict() if scheduler is not None else None,
                    rng=_rng_state(), best_val=best_val, log=rows,
                ),
            )  # fmt: skip
            _write_logs(out_dir, rows, stage, val_split)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    distributed.barrier()  # the next stage reads best.pt on every rank
    return best_path


def train(
    datasets: Sequence,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, int, dict], None] | None = None,
) -> Path:
    """Train the stages ``config.stage`` asks for into ``out_dir``; returns ``out_dir/model.pt``.

    ``on_epoch_end(stage, epoch, row)`` is called after every epoch (tests use it to interrupt).
    """
    if not datasets:
        raise HydraPickerError("the project lists no datasets to train on")
    names = [spec.name for spec in datasets]
    if GENERIC in names or len(set(names)) != len(names):
        raise HydraPickerError(f"dataset names must be unique and not {GENERIC!r}: {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_large_blocks()
    record = {
        "hydrapicker_version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
        best = train_stage(1, datasets, out_dir / "stage1", config, resume=resume, on_epoch_end=callback(1))
    if config.stage in ("2", "both"):
        if not stage1_best.exists():
            raise HydraPickerError(f"{stage1_best}: stage 2 starts from stage 1's best model, which is not there (run --stage 1 first)")
        best = train_stage(2, datasets, out_dir / "stage2", config, init_from=stage1_best, resume=resume,
                           on_epoch_end=callback(2))  # fmt: skip
    final = out_dir / "model.pt"
    if distributed.is_main():
        with atomic_path(final) as tmp:
            shutil.copyfile(best, tmp)
    distributed.barrier()
    return final
