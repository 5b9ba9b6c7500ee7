"""Every training config: frozen dataclasses checked on construction, importable without torch.

:class:`TrainConfig` (``hydrapicker train``), :class:`FinetuneConfig` (``finetune``) and
:class:`AdaptConfig` (``adapt``). The CLI reads their defaults for ``--help``, which is why this
module imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hydrapicker.defaults import (
    ANCHOR_STRIDE,
    BATCH_SIZE,
    CROP_SIZE,
    FOCAL_ALPHA,
    FOCAL_GAMMA,
    GENERIC,
    LAMBDA_BIAS,
    LAMBDA_CLS,
    LAMBDA_SIZE,
    MATCH_IOU,
    PAD_TO,
    PARTICLE_DIAMETER_PX,
    PICK_THRESHOLD,
)
from hydrapicker.device import check_device
from hydrapicker.errors import HydraPickerError
from hydrapicker.presets import get_preset

__all__ = ["LABELS", "STAGES", "AdaptConfig", "FinetuneConfig", "TrainConfig"]

#: What ``hydrapicker train --stage`` accepts: stage 1, stage 2, or both in turn.
STAGES = ("1", "2", "both")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved with every checkpoint and in ``config.json``).

    Paper values: Adam with warm restarts every 40 epochs (``t0_epochs``), SGD with momentum in
    stage 2, focal gamma 2, match IoU 0.6, 4 crops of 368 px from canvases of at least 520 px.
    The paper gives no learning rates, lambdas, dropout or epoch length; ``lr`` is Adam's usual
    1e-3; ``stage2_lr`` is lower than RetinaNet's SGD rate, at which the localisation loss
    diverged in stage 2 (benchmarks/REPORT.md); ``max_grad_norm`` guards the first steps.
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
    #: a big collection outgrows the in-memory cache, and re-preparing costs far more than a disk read.
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        get_preset(self.preset)
        if self.stage not in STAGES:
            raise HydraPickerError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in (
            "epochs",
            "stage2_epochs",
            "batches_per_epoch",
            "val_batches",
            "t0_epochs",
            "batch_size",
            "accumulate",
        ):
            if getattr(self, name) < 1:
                raise HydraPickerError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_size % ANCHOR_STRIDE:
            raise HydraPickerError(f"crop_size must be a multiple of {ANCHOR_STRIDE}, got {self.crop_size}")
        check_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["scale_jitter"] = tuple(data["scale_jitter"])
        return cls(**data)


#: How the labels given cover the particles: ``partial`` (positive-unlabelled loss) or ``complete``.
LABELS: tuple[str, ...] = ("partial", "complete")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run besides the data and the base model.

    Attributes:
        name: the new head's name (the dataset's name).
        epochs, batches_per_epoch, val_batches: the schedule; Adam at ``lr``, annealed to 0
            over the run (one cosine).
        labels: ``partial`` (unlabelled anchors are unlabelled) or ``complete`` (background).
        expected_particles: particles per micrograph, for ``partial``; ``None``: estimated
            from the generic head's picks on each micrograph.
        batch_size, crop_size, pad_to: the crops, as in :class:`hydrapicker.training.config.TrainConfig`.
        device: where the head trains (``"cpu"`` or ``"cuda"``).
    """

    name: str
    epochs: int = 15
    batches_per_epoch: int = 20
    val_batches: int = 4
    lr: float = 1e-3
    labels: str = "partial"
    expected_particles: float | None = None
    batch_size: int = BATCH_SIZE
    crop_size: int = CROP_SIZE
    pad_to: int = PAD_TO
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise HydraPickerError("the new head needs a non-empty --name")
        if self.name == GENERIC:
            raise HydraPickerError(
                f"--name {GENERIC!r} is the generic head, which fine-tuning leaves frozen: choose another name"
            )
        if self.labels not in LABELS:
            raise HydraPickerError(f"labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        if self.expected_particles is not None and not (
            math.isfinite(self.expected_particles) and self.expected_particles > 0
        ):
            raise HydraPickerError(
                f"expected particles per micrograph must be positive, got {self.expected_particles!r}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise HydraPickerError(f"learning rate must be positive, got {self.lr!r}")

    def loop_settings(self, preset: str, target_diameter_px: float) -> TrainConfig:
        """The training loop's settings for this run (:func:`hydrapicker.training.loop.fit` takes a
        :class:`TrainConfig`): the base model's preset and trained diameter, this run's schedule
        (one cosine over all epochs, stage 1's Adam), crops, seed and device, and every loss
        setting at its default, as the generic model was trained."""
        return TrainConfig(
            preset=preset,
            stage="1",
            epochs=self.epochs,
            batches_per_epoch=self.batches_per_epoch,
            val_batches=self.val_batches,
            lr=self.lr,
            t0_epochs=self.epochs,
            target_diameter_px=target_diameter_px,
            crop_size=self.crop_size,
            pad_to=self.pad_to,
            batch_size=self.batch_size,
            seed=self.seed,
            threads=self.threads,
            device=self.device,
        )


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that decides an adaptation run besides the micrographs and the base model.

    Attributes:
        name: the new head's name.
        rounds: teach -> train rounds; round ``r > 1`` is taught by the head of round ``r - 1``.
        turns: quarter turns the teacher's outputs are averaged over (1: the head's own single
            pass, which teaches nothing new; 4 costs 4 trunk passes per micrograph per round).
        teacher_threshold: the teacher's picks scoring at least this are counted as the
            particles it teaches (reported; with none on any micrograph there is nothing to
            learn and adaptation stops with an error). The default pick threshold.
        loc_weight: weight of the offset term against the score term of :func:`distillation_loss`.
        steps, lr, batch_size, crop_size: the training of each round: Adam at ``lr``, annealed
            to 0 over ``steps`` mini-batches of ``batch_size`` crops of ``crop_size`` rescaled px.
        max_micrographs: at most this many micrographs are adapted on (evenly spaced).
    """

    name: str
    rounds: int = 1
    turns: int = 4
    teacher_threshold: float = PICK_THRESHOLD
    loc_weight: float = 1.0
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 2
    crop_size: int = 512
    max_micrographs: int = 20
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise HydraPickerError("the new head needs a non-empty --name")
        if self.name == GENERIC:
            raise HydraPickerError(
                f"--name {GENERIC!r} is the generic head, which adaptation leaves frozen: choose another name"
            )
        for label in ("rounds", "steps", "batch_size", "crop_size", "max_micrographs", "turns"):
            if getattr(self, label) < 1:
                raise HydraPickerError(f"{label} must be at least 1, got {getattr(self, label)}")
        if not 1 <= self.turns <= 4:
            raise HydraPickerError(f"turns must be 1 to 4 quarter turns, got {self.turns}")
        if not (0 <= self.teacher_threshold <= 1):
            raise HydraPickerError(f"teacher_threshold must be between 0 and 1, got {self.teacher_threshold!r}")
        for label in ("lr", "loc_weight"):
            value = getattr(self, label)
            if not (math.isfinite(value) and value >= 0 and (value > 0 or label != "lr")):
                raise HydraPickerError(f"{label} must be {'positive' if label == 'lr' else '>= 0'}, got {value!r}")
