"""Zero-label adaptation: a new head for a new dataset, taught by the generic head's own picks of its micrographs.

A user has hundreds of unlabelled micrographs of a new sample. Each round of :func:`adapt`:

1. picks the micrographs (round 1 with the generic head, later rounds with the head of the
   round before), exactly as ``pick`` does (:func:`hydrapicker.pick.head_outputs`);
2. turns the picks into pseudo-labels (:func:`pseudo_labels`): the confident picks are
   positives; anchors that score very low *and* lie far from every pick that scores more than
   that are negatives (confidently empty places); everything else is unlabelled;
3. trains a new head, started from the generic head with trunk and generic head frozen (the
   few-shot protocol, :func:`hydrapicker.finetune.add_frozen_head`), with the
   positive-unlabelled focal loss (:func:`hydrapicker.loss.pu_focal_loss`, the idea of Topaz's
   GE-binomial / nnPU for partial labels): unlabelled anchors are expected to hide the
   particles the positives leave out, as many as the generic head's picks above
   ``prior_threshold`` say the micrograph holds; negatives pay the plain background loss.

Every round starts again from the generic head (only the pseudo-labels carry over), so a
round cannot drift on its own mistakes beyond what its labels say. The report of each round
(:class:`RoundReport`) gives the pseudo-labels used and how the picks changed.

With ``turns=4`` the teacher of each round is the head of the round before *averaged over the
micrograph's four quarter turns* (:func:`turned_outputs`): on the real β-gal micrographs that alone lifts the
generic head's AP from 0.685 to 0.714, so its picks are better labels than the head's own
single-pass picks. The new head learns them from one pass, on crops turned by a random quarter
turn and flip (the anchor grid turns onto itself), and ``pick --head NAME`` runs it once.

Prepared (rescaled, normalised) micrographs are kept in memory (4 bytes per rescaled px), at most
``max_micrographs`` of them (evenly spaced over the list). There is no label to validate on: the
head kept is the one after the last step.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from hydrapicker.boxes import anchor_centres
from hydrapicker.data import to_rescaled
from hydrapicker.defaults import BATCH_SIZE, CROP_SIZE, MATCH_IOU, PICK_THRESHOLD
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.picks import Picks
from hydrapicker.model import GENERIC, HydraPicker

__all__ = [
    "AdaptConfig",
    "AdaptReport",
    "PseudoLabels",
    "RoundReport",
    "adapt",
    "pseudo_labels",
    "run_folder",
    "turn_crop",
    "turned_outputs",
]


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that decides an adaptation run besides the micrographs and the base model.

    Attributes:
        name: the new head's name.
        rounds: pick -> pseudo-label -> train rounds.
        prior_threshold: the generic head's picks scoring at least this are the particles a
            micrograph holds (the positive-unlabelled class prior, counted once, kept for every
            round); the default pick threshold. Call that count N.
        positive_quantile: positives are the best ``(1 - positive_quantile) N`` picks of the
            round's head, pooled over the micrographs (0.5: the more confident half).
        negative_quantile: an anchor scoring in this lowest share of all anchors' scores
            (pooled), farther than ``negative_distance`` particle diameters from each of the
            round's best N picks, is a negative. A share, not a score: the shipped generic
            head scores no anchor of a real β-gal micrograph below 0.04.
        steps, lr, batch_size, crop_size: the training of each round: Adam at ``lr``,
            annealed to 0 over ``steps`` mini-batches of ``batch_size`` crops.
        max_micrographs: at most this many micrographs are adapted on (evenly spaced).
        turns: quarter turns the teacher's outputs are averaged over (1: the head's own picks; 4
            costs ~4x the picking and did not pay on the real data yet, benchmarks/adapt_real.md).
    """

    name: str
    rounds: int = 2
    prior_threshold: float = PICK_THRESHOLD
    positive_quantile: float = 0.5
    negative_quantile: float = 0.3
    negative_distance: float = 1.0
    steps: int = 150
    lr: float = 1e-3
    batch_size: int = BATCH_SIZE
    crop_size: int = CROP_SIZE
    max_micrographs: int = 20
    turns: int = 1
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise HydraPickerError("the new head needs a non-empty --name")
        if self.name == GENERIC:
            raise HydraPickerError(f"--name {GENERIC!r} is the generic head, which adaptation leaves frozen: choose another name")
        for label in ("rounds", "steps", "batch_size", "max_micrographs", "turns"):
            if getattr(self, label) < 1:
                raise HydraPickerError(f"{label} must be at least 1, got {getattr(self, label)}")
        for label in ("prior_threshold", "positive_quantile", "negative_quantile"):
            value = getattr(self, label)
            if not (0 <= value <= 1):
                raise HydraPickerError(f"{label} must be between 0 and 1, got {value!r}")
        if not 1 <= self.turns <= 4:
            raise HydraPickerError(f"turns must be 1 to 4 quarter turns, got {self.turns}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise HydraPickerError(f"learning rate must be positive, got {self.lr!r}")
        if not (self.negative_distance >= 0):
            raise HydraPickerError(f"negative_distance must be >= 0 diameters, got {self.negative_distance!r}")


@dataclass(frozen=True)
class PseudoLabels:
    """One micrograph's pseudo-labels, in the rescaled frame the model sees.

    Attributes:
        positives: float ``[n, 2]`` particle centres ``(x, y)`` in rescaled px.
        negatives: bool ``[h, w]`` over the anchor grid, True for known-background anchors.
        expected: particles the micrograph is taken to hold, at least ``len(positives)``.
    """

    positives: np.ndarray
    negatives: np.ndarray
    expected: float


def pseudo_labels(
    outputs: torch.Tensor,
    picks: Picks,
    scale: float,
    *,
    positive_score: float,
    particle_score: float,
    negative_score: float,
    expected: float,
    negative_distance: float,
    stride: int,
) -> PseudoLabels:
    """Pseudo-labels of one micrograph from a head's outputs ``[3, h, w]`` and its picks (stored frame).

    Positives: picks scoring ``positive_score`` or more. Negatives: anchors scoring under
    ``negative_score`` farther than ``negative_distance`` particle diameters from every pick
    scoring ``particle_score`` or more (distances in the rescaled frame, where a diameter is
    ``picks.box_size * scale``). ``expected``: the particles the micrograph holds (kept at
    least the number of positives).
    """
    h, w = outputs.shape[-2:]
    xy = to_rescaled(np.column_stack([picks.x, picks.y]), scale).reshape(-1, 2)
    positives = xy[picks.score >= positive_score]
    negatives = torch.sigmoid(outputs[2].float()).numpy() < negative_score
    candidates = xy[picks.score >= particle_score]
    if len(candidates) and negative_distance > 0:
        anchors = anchor_centres(h, w, stride).numpy()
        distance, _ = cKDTree(candidates).query(anchors)
        negatives &= (distance > negative_distance * (picks.box_size or 0.0) * scale).reshape(h, w)
    return PseudoLabels(positives.astype(np.float32), negatives, float(max(expected, len(positives))))


def _nth_best(scores: np.ndarray, n: float) -> float:
    """The score of the ``n``-th best of ``scores`` (rounded up; the lowest when ``n`` exceeds them)."""
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(len(ranked), max(1, math.ceil(n))) - 1])


@dataclass(frozen=True)
class RoundReport:
    """What one round used and did (summed over the micrographs adapted on).

    ``positives``: particle pseudo-labels; ``negatives``: known-background anchors (of
    ``anchors``); ``expected``: particles the PU loss assumed (N); ``picks_before`` /
    ``picks_after``: picks scoring >= the default pick threshold with the head that made the
    labels / the new head; ``kept``: how many of the old head's best N picks are among the new
    head's best N (IoU >= 0.6), ``new``: how many of the new head's best N are not.
    """

    round: int
    positive_score: float
    negative_score: float
    positives: int
    negatives: int
    anchors: int
    expected: float
    picks_before: int
    picks_after: int
    kept: int
    new: int
    seconds: float

    def line(self) -> str:
        return (
            f"round {self.round}: {self.positives} positives (score >= {self.positive_score:.3f}), "
            f"{self.negatives} negative anchors (score < {self.negative_score:.3f}) of {self.anchors}, "
            f"{self.expected:.0f} particles assumed; "
            f"picks >= {PICK_THRESHOLD}: {self.picks_before} -> {self.picks_after}; best {self.expected:.0f} picks: "
            f"{self.kept} kept, {self.new} new ({self.seconds:.0f} s)"
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


@dataclass
class _Micrograph:
    name: str
    image: torch.Tensor  # prepared (rescaled, normalised) float32 [row, col]
    scale: float
    shape: tuple[int, int]  # as stored


def _evenly_spaced(paths: Sequence[Path], most: int) -> list[Path]:
    if len(paths) <= most:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, most).round().astype(int)]


def turn_crop(image: torch.Tensor, points: np.ndarray, grid: torch.Tensor, quarter_turns: int, flip: bool):
    """Turn a square crop ``[S, S]``, its points ``(x, y)`` and its anchor grid ``[S/16, S/16]`` alike.

    ``quarter_turns`` counter-clockwise turns as :func:`torch.rot90` does on ``[row, col]``, then
    a left-right flip. Anchors sit at cell centres, so the anchor grid turns onto itself.
    """
    size = image.shape[-1]
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for _ in range(quarter_turns % 4):
        # torch.rot90 on [row, col]: new[i, j] = old[j, S - 1 - i], so (x, y) -> (y, S - 1 - x).
        points = np.column_stack([points[:, 1], size - 1 - points[:, 0]])
    image, grid = torch.rot90(image, quarter_turns, (-2, -1)), torch.rot90(grid, quarter_turns, (-2, -1))
    if flip:
        points = np.column_stack([size - 1 - points[:, 0], points[:, 1]])
        image, grid = torch.flip(image, (-1,)), torch.flip(grid, (-1,))
    return image, points, grid


def turned_outputs(model: HydraPicker, image: torch.Tensor | np.ndarray, head: str, turns: int = 4) -> torch.Tensor:
    """Head outputs ``[3, h, w]`` of a prepared image averaged over ``turns`` quarter turns of it.

    The image is zero-padded at the bottom and right to a multiple of the stride (as the model
    does), so each turn maps the anchor grid onto itself; each turn's outputs are turned back,
    offsets included. Scores are averaged as probabilities, offsets as they are.
    """
    from hydrapicker.pick import head_outputs

    stride = model.stride
    x = torch.as_tensor(image, dtype=torch.float32)
    x = torch.nn.functional.pad(x, (0, (-x.shape[1]) % stride, 0, (-x.shape[0]) % stride))
    offsets, scores = [], []
    for k in range(turns):
        out = torch.rot90(head_outputs(model, torch.rot90(x, k, (-2, -1)), head), -k, (-2, -1))
        dx, dy = out[0], out[1]
        for _ in range(k):  # an offset (u, v) in the turned frame is (-v, u) in the frame before the turn
            dx, dy = -dy, dx
        offsets.append(torch.stack([dx, dy]))
        scores.append(torch.sigmoid(out[2]))
    score = torch.stack(scores).mean(0).clamp(1e-7, 1 - 1e-7)
    return torch.cat([torch.stack(offsets).mean(0), torch.logit(score)[None]])


def _pick_all(model: HydraPicker, meta, head: str, micrographs: list[_Micrograph], turns: int) -> list[tuple[torch.Tensor, Picks]]:
    """Turn-averaged head outputs ``[3, h, w]`` and every pick NMS keeps (stored frame) of each micrograph."""
    from hydrapicker.pick import picks_from_outputs

    model.eval()
    result = []
    for mic in micrographs:
        outputs = turned_outputs(model, mic.image, head, turns)
        result.append((outputs, picks_from_outputs(outputs, meta, mic.scale, mic.shape, 0.0, name=mic.name)))
    return result


def _count_above(picks: Sequence[Picks], threshold: float) -> int:
    return int(sum(np.sum(p.score >= threshold) for p in picks))


def _agreement(before: Sequence[Picks], after: Sequence[Picks], n: float) -> tuple[int, int]:
    """Each head's best ``n`` picks: (``before``'s that ``after`` still has at IoU >= 0.6, ``after``'s matching none of ``before``'s)."""
    from hydrapicker.evaluate import match_picks

    def best(picks: Sequence[Picks]) -> dict[str, Picks]:
        score = _nth_best(np.concatenate([p.score for p in picks]), n)
        return {
            p.micrograph: Picks(p.micrograph, p.x[p.score >= score], p.y[p.score >= score], p.score[p.score >= score],
                                box_size=p.box_size, shape=p.shape)  # fmt: skip
            for p in picks
        }

    box = next((p.box_size for p in before if p.box_size), 1.0)
    tp, hit = match_picks(best(after), best(before), box, MATCH_IOU)
    return int(sum(m.sum() for m in hit.values())), int(sum((~m).sum() for m in tp.values()))


def _train_head(
    base: HydraPicker, name: str, micrographs: list[_Micrograph], labels: list[PseudoLabels], config: AdaptConfig,
    meta, rng: np.random.Generator, say: Callable[[str], None],
) -> HydraPicker:  # fmt: skip
    from hydrapicker.finetune import add_frozen_head
    from hydrapicker.loss import detection_loss

    model = add_frozen_head(copy.deepcopy(base), name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    stride = model.stride
    # Hidden particles per unlabelled anchor of each micrograph: what the positives leave of
    # the expected count, spread over the anchors that are neither positive nor negative.
    anchors = [int(np.prod(lab.negatives.shape)) for lab in labels]
    hidden_per_anchor = [
        max(0.0, lab.expected - len(lab.positives)) / max(1, n - int(lab.negatives.sum())) for lab, n in zip(labels, anchors)
    ]
    weights = np.array([float(m.image.numel()) for m in micrographs])
    model.train()
    losses = []
    for step in range(config.steps):
        images, centres, negatives, expected = [], [], [], []
        for _ in range(config.batch_size):
            k = int(rng.choice(len(micrographs), p=weights / weights.sum()))
            mic, lab = micrographs[k], labels[k]
            rows, cols = mic.image.shape
            size = min(config.crop_size, rows // stride * stride, cols // stride * stride)
            r0 = stride * int(rng.integers(0, (rows - size) // stride + 1))
            c0 = stride * int(rng.integers(0, (cols - size) // stride + 1))
            crop = mic.image[r0 : r0 + size, c0 : c0 + size]
            grid = torch.from_numpy(lab.negatives[r0 // stride : (r0 + size) // stride, c0 // stride : (c0 + size) // stride].copy())
            xy = lab.positives - np.array([c0, r0], dtype=np.float32)
            inside = (xy[:, 0] >= -0.5) & (xy[:, 0] < size - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < size - 0.5)
            crop, xy, grid = turn_crop(crop, xy[inside], grid, int(rng.integers(4)), bool(rng.integers(2)))
            n_unlabelled = grid.numel() - int(grid.sum())
            images.append(crop)
            centres.append(torch.from_numpy(xy.astype(np.float32)))
            negatives.append(grid)
            expected.append(len(xy) + hidden_per_anchor[k] * n_unlabelled)
        if len({im.shape for im in images}) > 1:  # micrographs smaller than a crop: one size per batch
            side = min(im.shape[-1] for im in images)
            keep = [(im, c, g, e) for im, c, g, e in zip(images, centres, negatives, expected) if im.shape[-1] == side]
            images, centres, negatives, expected = (list(t) for t in zip(*keep))
        outputs = model(torch.stack(images)[:, None], name)
        loss = detection_loss(
            outputs, centres, box_size=meta.target_diameter_px, stride=stride, expected_particles=expected, negatives=negatives
        )
        total = loss.loc + loss.cls
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimiser.step()
        schedule.step()
        losses.append(total.item())
        if (step + 1) % max(1, config.steps // 5) == 0:
            say(f"  step {step + 1}/{config.steps}: loss {np.mean(losses[-max(1, config.steps // 5):]):.4f}")
    return model.eval()



def adapt(
    micrographs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: AdaptConfig,
    *,
    diameter_px: float | None = None,
    diameter_A: float | None = None,
    pixel_size: float | None = None,
    model_path: str | os.PathLike | None = None,
    say: Callable[[str], None] = print,
) -> AdaptReport:
    """Adapt: add head ``config.name`` to the base model, taught by pseudo-labels of ``micrographs``; write checkpoint ``out``.

    Args:
        micrographs: unlabelled micrographs of the new dataset (files, folders, globs).
        out: the checkpoint to write (``.pt``): every head of the base model plus the new one.
            The run record (config, per-round reports) goes to :func:`run_folder` of it,
            ``adapt.json``.
        diameter_px / diameter_A (+ pixel_size): the particle size, as for ``pick``.
        model_path: the base checkpoint; ``None``: the shipped pretrained generic model.
        say: where progress lines go.
    """
    from hydrapicker.pick import Picker, PickSettings, expand_micrographs, load_picking_model
    from hydrapicker.train import FINETUNE_STAGE, TrainConfig, _checkpoint, _save

    start = time.perf_counter()
    out = Path(out)
    if out.suffix != ".pt":
        raise HydraPickerError(f"--out {out}: a checkpoint file name ending in .pt")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    base, meta = load_picking_model(model_path)
    if config.name in base.head_names:
        known = ", ".join((GENERIC,) + base.head_names)
        raise HydraPickerError(f"the model already has a head {config.name!r} (it has: {known}): choose another --name")
    picker = Picker(base, meta, PickSettings(diameter_A=diameter_A, diameter_px=diameter_px, pixel_size=pixel_size))
    paths = expand_micrographs(micrographs)
    picker.check_paths(paths)
    chosen = _evenly_spaced(paths, config.max_micrographs)
    mics = []
    for path in chosen:
        prepared = picker.prepare(path)
        mics.append(_Micrograph(prepared.name, torch.from_numpy(np.ascontiguousarray(prepared.image)), prepared.scale,
                                tuple(prepared.data.shape)))  # fmt: skip
    if min(min(m.image.shape) for m in mics) < base.stride * 4:
        raise HydraPickerError(f"micrographs are too small to adapt on after rescaling (under {base.stride * 4} px)")
    report = AdaptReport([m.name for m in mics])
    say(f"adapting head {config.name!r} on {len(mics)} micrograph(s)"
        + (f" ({len(paths) - len(mics)} of {len(paths)} left out: --max-micrographs {config.max_micrographs})" if len(mics) < len(paths) else ""))  # fmt: skip

    model, head = base, GENERIC
    picked = _pick_all(model, meta, head, mics, config.turns)
    # The class prior is a property of the micrographs, not of a head: counted once, from the
    # generic head's picks, and kept. Later rounds take the same number of best picks as
    # particles (scores rise as a head adapts, counts above a fixed score would inflate).
    expected = [float(np.sum(p.score >= config.prior_threshold)) for _, p in picked]
    n_particles = sum(expected)
    if n_particles == 0:
        raise HydraPickerError(
            f"no pick scores {config.prior_threshold} or more on any micrograph, so there is nothing to learn from "
            "(check the particle diameter, or lower --prior-threshold)"
        )
    for r in range(config.rounds):
        t0 = time.perf_counter()
        before = [p for _, p in picked]
        scores = np.concatenate([p.score for p in before])
        particle_score = _nth_best(scores, n_particles)
        positive_score = _nth_best(scores, (1 - config.positive_quantile) * n_particles)
        anchor_scores = np.concatenate([torch.sigmoid(outputs[2]).flatten().numpy() for outputs, _ in picked])
        negative_score = float(np.quantile(anchor_scores, config.negative_quantile)) if config.negative_quantile > 0 else -1.0
        labels = [
            pseudo_labels(outputs, p, m.scale, positive_score=positive_score, particle_score=particle_score,
                          negative_score=negative_score, expected=e, negative_distance=config.negative_distance, stride=model.stride)
            for (outputs, p), m, e in zip(picked, mics, expected)
        ]  # fmt: skip
        say(f"round {r + 1}/{config.rounds}: training on {sum(len(l.positives) for l in labels)} positives")
        model = _train_head(base, config.name, mics, labels, config, meta, rng, say)
        head = config.name
        picked = _pick_all(model, meta, head, mics, config.turns)
        after = [p for _, p in picked]
        kept, new = _agreement(before, after, n_particles)
        row = RoundReport(
            round=r + 1, positive_score=positive_score, negative_score=negative_score, positives=int(sum(len(l.positives) for l in labels)),
            negatives=int(sum(l.negatives.sum() for l in labels)), anchors=int(sum(l.negatives.size for l in labels)),
            expected=float(sum(l.expected for l in labels)), picks_before=_count_above(before, PICK_THRESHOLD),
            picks_after=_count_above(after, PICK_THRESHOLD), kept=kept, new=new, seconds=round(time.perf_counter() - t0, 1),
        )  # fmt: skip
        report.rounds.append(row)
        say(row.line())

    train_config = TrainConfig(preset=meta.preset.name, stage="1", epochs=1, batches_per_epoch=config.steps, lr=config.lr,
                               target_diameter_px=meta.target_diameter_px, crop_size=config.crop_size,
                               batch_size=config.batch_size, seed=config.seed)  # fmt: skip
    record = {
        "base_model": str(model_path) if model_path is not None else "shipped pretrained generic model",
        "head": config.name,
        "config": asdict(config),
        "particle": {"diameter_px": diameter_px, "diameter_A": diameter_A, "pixel_size": pixel_size},
        "micrographs": report.micrographs,
        "rounds": [asdict(row) for row in report.rounds],
        "loss": "positive-unlabelled focal with known negatives (hydrapicker.loss.pu_focal_loss)",
    }
    _save(out, _checkpoint(model, train_config, FINETUNE_STAGE, config.rounds - 1, None, adapt=record))
    report.checkpoint = str(out)
    report.seconds = round(time.perf_counter() - start, 1)
    record["seconds"] = report.seconds
    folder = run_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "adapt.json", json.dumps(record, indent=2) + "\n")
    return report
