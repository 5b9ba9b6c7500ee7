"""Zero-label adaptation: a new head for a new dataset, taught by the generic head's scores of its unlabelled micrographs.

A user has hundreds of unlabelled micrographs of a new sample. Each round of :func:`adapt`:

1. the teacher (round 1: the generic head; later rounds: the head of the round before) scores
   every anchor of the micrographs *averaged over their four quarter turns*
   (:func:`turned_outputs`). On the real β-gal micrographs that average alone lifts the generic
   head's AP from 0.685 to 0.714: the head's mistakes depend on the particle's orientation on
   the grid, the particles do not;
2. a new head, started from the generic head with trunk and generic head frozen (the few-shot
   protocol, :func:`hydrapicker.training.finetune.add_frozen_head`), learns to give in *one* pass what
   the teacher gives in four (:func:`distillation_loss`): each anchor's teacher probability as a
   soft target (every anchor is a pseudo-label, scored as confidently as the teacher is; no
   threshold throws the ranking away), and the teacher's averaged offsets where it sees a particle.

``pick --head NAME`` then runs the new head once, at the generic head's cost.

The trunk is frozen, so its features of each micrograph are computed once (in float16, 2 bytes
per rescaled px per trunk channel; the turned passes of the teacher are not kept) and the head
trains on random crops of them: a training step costs a head pass, not a trunk pass. At most
``max_micrographs`` micrographs (evenly spaced over the list) are adapted on. There is no label
to validate on: the head kept is the one after the last step.

Hard pseudo-labels (the best half of the generic picks as positives, low-scoring places far from
them as negatives, the rest unlabelled, trained with the positive-unlabelled loss) were tried
first and did not beat the generic head (benchmarks/adapt_real.md): thresholded, the teacher's
ranking, which is what AP scores, is lost.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hydrapicker.checkpoint import FINETUNED_STAGE, checkpoint_payload, load_model, save_checkpoint
from hydrapicker.defaults import GENERIC, MATCH_IOU, PICK_THRESHOLD
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import match_picks
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.micrograph import expand_micrographs
from hydrapicker.io.picks import Picks
from hydrapicker.loss import distillation_loss
from hydrapicker.model import HydraPicker
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.decode import picks_from_outputs
from hydrapicker.picking.picker import Picker, PickSettings, evenly_spaced
from hydrapicker.progress import Progress
from hydrapicker.training.config import AdaptConfig
from hydrapicker.training.finetune import add_frozen_head

__all__ = ["AdaptReport", "RoundReport", "adapt", "run_folder", "turned_outputs"]


@dataclass(frozen=True)
class RoundReport:
    """What one round used and did (summed over the micrographs adapted on).

    ``taught``: the teacher's picks scoring >= ``teacher_threshold`` (the particles it teaches);
    ``picks_before`` / ``picks_after``: single-pass picks >= the default pick threshold of the
    head that taught (the generic head in round 1) / of the new head; ``kept``: how many of the
    teacher's best ``taught`` picks are among the new head's best ``taught`` (IoU >= 0.6),
    ``new``: how many of the new head's are not; ``loss``: the mean loss of the last fifth of
    the steps.
    """

    round: int
    turns: int
    taught: int
    picks_before: int
    picks_after: int
    kept: int
    new: int
    loss: float
    seconds: float

    def line(self) -> str:
        return (
            f"round {self.round}: taught by the {self.turns}-turn average, {self.taught} particles (teacher picks >= "
            f"threshold); single-pass picks >= {PICK_THRESHOLD}: {self.picks_before} -> {self.picks_after}; best "
            f"{self.taught}: {self.kept} kept, {self.new} new; loss {self.loss:.4f} ({self.seconds:.0f} s)"
        )


@dataclass
class AdaptReport:
    """The run: the micrographs adapted on, the rounds, the checkpoint written."""

    micrographs: list[str]
    rounds: list[RoundReport] = field(default_factory=list)
    checkpoint: str = ""
    seconds: float = 0.0


def run_folder(out: str | os.PathLike) -> Path:
    """The folder of an adaptation run writing checkpoint ``out``: ``NAME.pt`` -> ``NAME.adapt/``."""
    out = Path(out)
    return out.with_name(out.stem + ".adapt")


def turned_outputs(
    model: HydraPicker,
    image: torch.Tensor | np.ndarray,
    head: str,
    turns: int = 4,
    *,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head outputs ``[3, h, w]`` of a prepared image averaged over ``turns`` quarter turns of it.

    The image is zero-padded at the bottom and right to a multiple of the stride (as the model
    does), so each turn maps the anchor grid onto itself; each turn's outputs are turned back,
    offsets included. Scores are averaged as probabilities, offsets as they are. ``features``:
    the trunk's features ``[C, H, W]`` of the unturned padded image, if already computed. The
    image goes through the trunk whole (``pick`` tiles images over ``PICK_TILE_SIZE`` px).
    """
    stride = model.stride
    x = torch.as_tensor(image, dtype=torch.float32)
    x = F.pad(x, (0, (-x.shape[1]) % stride, 0, (-x.shape[0]) % stride))
    was_training = model.training
    model.eval()
    offsets, scores = [], []
    with torch.inference_mode():
        for k in range(turns):
            if k == 0 and features is not None:
                f = features[None].float()
            else:
                f = model.features(torch.rot90(x, k, (-2, -1))[None, None])
            out = torch.rot90(model.run_head(f, head)[0], -k, (-2, -1))
            dx, dy = out[0], out[1]
            for _ in range(k):  # an offset (u, v) in the turned frame is (-v, u) in the frame before the turn
                dx, dy = -dy, dx
            offsets.append(torch.stack([dx, dy]))
            scores.append(torch.sigmoid(out[2]))
    model.train(was_training)
    score = torch.stack(scores).mean(0).clamp(1e-7, 1 - 1e-7)
    return torch.cat([torch.stack(offsets).mean(0), torch.logit(score)[None]])


@dataclass
class _Micrograph:
    name: str
    image: torch.Tensor  # prepared (rescaled, normalised) float32 [row, col]
    features: torch.Tensor  # trunk features of the padded image, float16 [C, H, W]
    scale: float
    shape: tuple[int, int]  # as stored


def _picks(outputs: torch.Tensor, meta, mic: _Micrograph) -> Picks:
    return picks_from_outputs(outputs, meta, mic.scale, mic.shape, 0.0, name=mic.name)


def _single_pass(model: HydraPicker, head: str, mic: _Micrograph) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model.run_head(mic.features[None].float(), head)[0]


def _count_above(picks: Sequence[Picks], threshold: float) -> int:
    return int(sum(np.sum(p.score >= threshold) for p in picks))


def _nth_best(scores: np.ndarray, n: int) -> float:
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(len(ranked), max(1, n)) - 1])


def _agreement(before: Sequence[Picks], after: Sequence[Picks], n: int) -> tuple[int, int]:
    """Each side's best ``n`` picks: (``before``'s that ``after`` still has at IoU >= 0.6, ``after``'s matching none of ``before``'s)."""

    def best(picks: Sequence[Picks]) -> dict[str, Picks]:
        score = _nth_best(np.concatenate([p.score for p in picks]), n)
        return {
            p.micrograph: Picks(
                p.micrograph,
                p.x[p.score >= score],
                p.y[p.score >= score],
                p.score[p.score >= score],
                box_size=p.box_size,
                shape=p.shape,
            )
            for p in picks
        }

    box = next((p.box_size for p in before if p.box_size), 1.0)
    tp, hit = match_picks(best(after), best(before), box, MATCH_IOU)
    return int(sum(m.sum() for m in hit.values())), int(sum((~m).sum() for m in tp.values()))


def _train_head(
    base: HydraPicker,
    name: str,
    micrographs: list[_Micrograph],
    teachers: list[torch.Tensor],
    config: AdaptConfig,
    rng: np.random.Generator,
    say: Callable[[str], None],
) -> tuple[HydraPicker, float]:
    """Head ``name`` (from the generic head) trained on crops of the cached features to give the teachers' outputs."""
    model = add_frozen_head(copy.deepcopy(base), name)
    head = model.heads[name]
    optimiser = torch.optim.Adam(head.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    stride = model.stride
    sizes = [min(m.features.shape[-2:]) for m in micrographs]
    size = min(config.crop_size // stride * stride or stride, min(sizes))  # one crop size per run: crops stack
    weights = np.array([float(m.features[0].numel()) for m in micrographs])
    model.eval()
    head.train()  # dropout on in the head only
    losses = []
    report_every = max(1, config.steps // 5)
    bar = Progress(config.steps, f"training head {name}", "steps", leave=False)
    for step in range(config.steps):
        crops, targets = [], []
        for _ in range(config.batch_size):
            k = int(rng.choice(len(micrographs), p=weights / weights.sum()))
            features, teacher = micrographs[k].features, teachers[k]
            rows, cols = features.shape[-2:]
            r0 = stride * int(rng.integers(0, (rows - size) // stride + 1))
            c0 = stride * int(rng.integers(0, (cols - size) // stride + 1))
            crops.append(features[:, r0 : r0 + size, c0 : c0 + size].float())
            targets.append(teacher[:, r0 // stride : (r0 + size) // stride, c0 // stride : (c0 + size) // stride])
        loss = distillation_loss(head(torch.stack(crops)), torch.stack(targets), config.loc_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.update()
        if (step + 1) % report_every == 0:
            say(f"  step {step + 1}/{config.steps}: loss {np.mean(losses[-report_every:]):.4f}")
    bar.close()
    return model.eval(), float(np.mean(losses[-report_every:]))


def adapt(
    micrographs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: AdaptConfig,
    *,
    size: ParticleSize,
    model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> AdaptReport:
    """Adapt: add head ``config.name`` to the base model, taught by the turn-averaged head on ``micrographs``; write checkpoint ``out``.

    Args:
        micrographs: unlabelled micrographs of the new dataset (files, folders, globs).
        out: the checkpoint to write (``.pt``): every head of the base model plus the new one.
            The run record (config, per-round reports) goes to :func:`run_folder` of it,
            ``adapt.json``.
        size: the particle diameter, as for ``pick``.
        model_path: the base checkpoint; ``None``: the shipped pretrained generic model.
        overwrite: replace a checkpoint already at ``out`` (without it, an error before any work).
        say: where progress lines go.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.suffix != ".pt":
        raise HydraPickerError(f"--out {out}: a checkpoint file name ending in .pt")
    if out.exists() and not overwrite:
        raise HydraPickerError(
            f"--out {out}: a checkpoint is already there; pass --overwrite to replace it, or another --out"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    base, meta = load_model(model_path)
    base.eval()
    if config.name in base.head_names:
        known = ", ".join((GENERIC,) + base.head_names)
        raise HydraPickerError(f"the model already has a head {config.name!r} (it has: {known}): choose another --name")
    picker = Picker(base, meta, PickSettings(size))
    paths = expand_micrographs(micrographs)
    picker.check_paths(paths)
    chosen = evenly_spaced(paths, config.max_micrographs)
    say(
        f"adapting head {config.name!r} on {len(chosen)} micrograph(s)"
        + (
            f" ({len(paths) - len(chosen)} of {len(paths)} left out: --max-micrographs {config.max_micrographs})"
            if len(chosen) < len(paths)
            else ""
        )
    )
    mics, teachers = [], []
    reading = Progress(len(chosen), "features and teacher")
    for path in chosen:
        prepared = picker.prepare(path)
        image = torch.from_numpy(np.ascontiguousarray(prepared.image))
        if min(image.shape) < base.stride * 4:
            raise HydraPickerError(
                f"{prepared.name}: too small to adapt on after rescaling ({tuple(image.shape)}, under {base.stride * 4} px)"
            )
        with torch.inference_mode():
            features = base.features(image[None, None])[0]
        # Round 1's teacher now, while the float32 features are at hand.
        teachers.append(turned_outputs(base, image, GENERIC, config.turns, features=features))
        mics.append(
            _Micrograph(prepared.name, image, features.to(torch.float16), prepared.scale, tuple(prepared.data.shape))
        )
        reading.update()
    reading.close()
    report = AdaptReport([m.name for m in mics])
    say(f"features and {config.turns}-turn teacher of {len(mics)} micrograph(s): {time.perf_counter() - start:.0f} s")

    model, head = base, GENERIC
    after: list[Picks] = []
    for r in range(config.rounds):
        t0 = time.perf_counter()
        if r > 0:
            teachers = [turned_outputs(model, m.image, head, config.turns, features=m.features) for m in mics]
        taught_picks = [_picks(t, meta, m) for t, m in zip(teachers, mics)]
        taught = _count_above(taught_picks, config.teacher_threshold)
        if taught == 0:
            raise HydraPickerError(
                f"the {config.turns}-turn average of the {'generic' if r == 0 else 'round ' + str(r)} head scores no pick "
                f"{config.teacher_threshold} or more on any micrograph: nothing to learn from (check the particle diameter)"
            )
        # the single-pass picks of the head that teaches: the round before's new head, picked at its end
        before = after or [_picks(_single_pass(model, head, m), meta, m) for m in mics]
        say(f"round {r + 1}/{config.rounds}: teaching {taught} particles")
        model, loss = _train_head(base, config.name, mics, teachers, config, rng, say)
        head = config.name
        after = [_picks(_single_pass(model, head, m), meta, m) for m in mics]
        kept, new = _agreement(taught_picks, after, taught)
        row = RoundReport(
            round=r + 1,
            turns=config.turns,
            taught=taught,
            picks_before=_count_above(before, PICK_THRESHOLD),
            picks_after=_count_above(after, PICK_THRESHOLD),
            kept=kept,
            new=new,
            loss=round(loss, 5),
            seconds=round(time.perf_counter() - t0, 1),
        )
        report.rounds.append(row)
        say(row.line())

    record = {
        "base_model": str(model_path) if model_path is not None else "shipped pretrained generic model",
        "head": config.name,
        "config": asdict(config),
        "particle": asdict(size),
        "micrographs": report.micrographs,
        "rounds": [asdict(row) for row in report.rounds],
        "loss": "distillation of the turn-averaged teacher (hydrapicker.loss.distillation_loss)",
    }
    payload = checkpoint_payload(
        model,
        target_diameter_px=meta.target_diameter_px,
        config=asdict(config),
        stage=FINETUNED_STAGE,
        epoch=config.rounds - 1,
        val_loss=None,
        adapt=record,
    )
    save_checkpoint(out, payload)
    report.checkpoint = str(out)
    report.seconds = round(time.perf_counter() - start, 1)
    record["seconds"] = report.seconds
    folder = run_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "adapt.json", json.dumps(record, indent=2) + "\n")
    return report
