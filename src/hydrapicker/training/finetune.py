"""Few-shot fine-tuning: a new head for a new dataset from a few labelled micrographs, all else frozen.

The paper's few-shot protocol (section 4): the new head starts as a copy of the generic head and
is the only part trained; trunk, generic head and every other dataset head stay bit-identical.
Training is :func:`hydrapicker.training.loop.fit` with :func:`hydrapicker.training.stages.finetune_plan`: its epoch loop,
validation, ``best.pt``/``last.pt``, logs and resume. The result is a checkpoint with one head
more, for ``hydrapicker pick --head NAME``.

Partial labels: a user who labels 50 of 600 particles leaves 550 particles unlabelled. Plain
focal loss calls each of them background and teaches the new head to suppress exactly what it
should find. With ``labels="partial"`` (the default) every anchor that matches no label is
*unlabelled*, and the classification loss is a non-negative positive-unlabelled risk
(:func:`hydrapicker.loss.pu_focal_loss`) given the number of particles each micrograph holds:
``expected_particles`` when the user knows it, else an estimate from the generic head's picks
and the labels (:func:`expected_particle_counts`). ``labels="complete"``: every unlabelled anchor is
background, as in training. With a fraction of the labels, plain focal loss sinks every score
while the positive-unlabelled head keeps its recall (benchmarks/finetune_partial_labels.py measures it).

Micrographs and coordinates given directly (no project file) become an in-memory
:class:`hydrapicker.data.project.DatasetSpec`: coordinate files are matched to micrographs by file stem,
or one file holding many micrographs (RELION STAR, cryoSPARC ``.cs``) serves them all.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from hydrapicker.checkpoint import ModelMeta, load_model
from hydrapicker.data.project import DatasetSpec
from hydrapicker.defaults import GENERIC
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.checks import file_key
from hydrapicker.io.coordinates import guess_format, read_picks, without_decoys
from hydrapicker.io.files import atomic_path, atomic_write_text
from hydrapicker.io.micrograph import expand_micrographs, micrograph_stem, read_micrograph
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import HydraPicker
from hydrapicker.particle_size import ParticleSize, rescale_factor
from hydrapicker.picking.picker import PickSettings, pick_micrograph
from hydrapicker.training.config import FinetuneConfig
from hydrapicker.training.loop import check_start, fit
from hydrapicker.training.stages import finetune_plan

__all__ = [
    "LabelledMicrographs",
    "add_frozen_head",
    "expected_particle_counts",
    "finetune",
    "labelled_micrographs",
    "run_folder",
]


@dataclass(frozen=True)
class LabelledMicrographs:
    """The fine-tuning data: a dataset spec plus what was read to check it.

    Attributes:
        spec: the in-memory dataset (``train`` and optional ``val`` splits).
        shapes: micrograph stem -> ``(rows, cols)`` as stored.
        labelled: micrograph stem -> number of labelled particles.
    """

    spec: DatasetSpec
    shapes: dict[str, tuple[int, int]]
    labelled: dict[str, int]


def _expand_coordinates(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise HydraPickerError(f"{text}: matches no coordinate files")
            files.extend(matches)
        else:
            if not Path(text).is_file():
                raise HydraPickerError(f"{text}: no such coordinate file")
            files.append(Path(text))
    # `simulate`'s coordinates folder as it is (a glob, or the shell's expansion of one): decoys are not particles
    return without_decoys(list(dict.fromkeys(files)), "--coords")


def _match(micrographs: list[Path], coordinates: list[Path], role: str) -> dict[str, Path]:
    by_stem = {file_key(p): p for p in coordinates}
    stems = [micrograph_stem(p) for p in micrographs]
    if len(coordinates) == 1 and stems[0] not in by_stem:
        # One file for the whole set (a RELION STAR or cryoSPARC .cs): each micrograph reads its rows.
        return {stem: coordinates[0] for stem in stems}
    matched = {}
    for path, stem in zip(micrographs, stems):
        if stem not in by_stem:
            raise HydraPickerError(f"{path}: no coordinate file named {stem}.* among --{role}coords")
        matched[stem] = by_stem[stem]
    for stem, path in by_stem.items():
        if stem not in matched:  # as `train` does: labels of a micrograph that is not there are a mistake
            raise HydraPickerError(f"{path}: labels micrograph {stem!r}, which is not among --{role}micrographs")
    return matched


def labelled_micrographs(
    name: str,
    micrographs: Sequence[str | os.PathLike],
    coordinates: Sequence[str | os.PathLike],
    *,
    size: ParticleSize,
    coords_format: str | None = None,
    val_micrographs: Sequence[str | os.PathLike] = (),
    val_coordinates: Sequence[str | os.PathLike] = (),
) -> LabelledMicrographs:
    """Micrographs and their coordinate files as an in-memory dataset called ``name``.

    Every micrograph is read and its labels checked up front (inside the micrograph, at
    least one particle), so bad input fails before any training with one line naming the
    file. ``val_*``: micrographs of the ``val`` split (else validation falls back to fixed
    crops of the training micrographs).
    """
    if size.needs_pixel_size:
        raise HydraPickerError(f"a particle diameter of {size.diameter_A} Å needs the pixel size (--pixel-size, Å/px)")
    pixel_size, diameter = (
        (1.0, size.diameter_px) if size.diameter_px is not None else (size.pixel_size, size.diameter_A)
    )
    for label, value in (("particle diameter", diameter), ("pixel size", pixel_size)):
        if not (math.isfinite(value) and value > 0):
            raise HydraPickerError(f"{label} must be positive, got {value!r}")
    if bool(val_micrographs) != bool(val_coordinates):
        raise HydraPickerError(
            "validation micrographs need their coordinates: give both --val-micrographs and --val-coords, or neither"
        )

    train_paths = expand_micrographs(micrographs)
    val_paths = expand_micrographs(val_micrographs) if val_micrographs else []
    train_coords = _match(train_paths, _expand_coordinates(coordinates), "")
    val_coords = _match(val_paths, _expand_coordinates(val_coordinates), "val-") if val_paths else {}
    overlap = set(train_coords) & set(val_coords)
    if overlap:
        raise HydraPickerError(f"micrograph {sorted(overlap)[0]!r} is both a training and a validation micrograph")
    coords = {**train_coords, **val_coords}

    if coords_format is None:
        formats = {guess_format(p) for p in set(coords.values())}
        if len(formats) != 1:
            raise HydraPickerError(f"the coordinate files mix formats {sorted(formats)}: give --coords-format")
        coords_format = formats.pop()
    shapes, labelled = {}, {}
    for path in train_paths + val_paths:
        stem = micrograph_stem(path)
        shape = read_micrograph(path).shape
        picks = read_picks(coords[stem], coords_format, micrograph=stem, shape=shape)[stem]
        if len(picks) == 0:
            raise HydraPickerError(f"{coords[stem]}: no labelled particle for micrograph {stem!r}")
        shapes[stem], labelled[stem] = shape, len(picks)
    spec = DatasetSpec(
        name=name,
        micrographs=tuple(train_paths + val_paths),
        coordinates=coords,
        format=coords_format,
        pixel_size=float(pixel_size),  # type: ignore[arg-type]
        diameter=float(diameter),  # type: ignore[arg-type]
        splits={
            "train": tuple(micrograph_stem(p) for p in train_paths),
            "val": tuple(micrograph_stem(p) for p in val_paths),
            "test": (),
        },
    )
    return LabelledMicrographs(spec, shapes, labelled)


def add_frozen_head(model: HydraPicker, name: str) -> HydraPicker:
    """Add head ``name`` as a copy of the generic head and freeze every other parameter."""
    if name == GENERIC or name in model.head_names:
        known = ", ".join((GENERIC,) + model.head_names)
        raise HydraPickerError(f"the model already has a head {name!r} (it has: {known}): choose another --name")
    model.add_head(name, init_from=GENERIC)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.heads[name].parameters():
        param.requires_grad_(True)
    return model


def expected_particle_counts(
    model: HydraPicker, meta: ModelMeta, data: LabelledMicrographs, per_micrograph: float | None = None
) -> dict[str, float]:
    """Particles each micrograph holds, labelled or not: ``per_micrograph`` if given, else estimated.

    The estimate leans on the labels being a random sample of the particles: the generic
    head's median score at the labelled particles (the best generic pick within half a
    diameter of each; 0 where none) is a threshold that half of *all* particles pass, so the
    micrograph holds about twice as many particles as generic picks scoring at least that.
    Counting every such pick as a particle makes it an overestimate where the generic head
    also picks contamination (1.1-1.8x on the β-gal micrographs with a weak base model,
    benchmarks/finetune_partial_labels.py). Either way the count is kept between the number
    labelled and the number of particle-sized squares the micrograph holds.
    """
    spec = data.spec
    settings = PickSettings(
        ParticleSize(diameter_A=spec.diameter, pixel_size=spec.pixel_size), head=GENERIC, threshold=0.0
    )
    diameter_px = spec.diameter / spec.pixel_size
    counts = {}
    for path in spec.micrographs:
        stem = micrograph_stem(path)
        rows, cols = data.shapes[stem]
        if per_micrograph is not None:
            estimate = float(per_micrograph)
        else:
            image = read_micrograph(path).data
            picks = pick_micrograph(model, meta, image, settings, name=stem)
            labels = read_picks(spec.coordinates[stem], spec.format, micrograph=stem, shape=(rows, cols))[stem]
            if len(picks):
                distance, index = cKDTree(np.column_stack([picks.x, picks.y])).query(
                    np.column_stack([labels.x, labels.y]), distance_upper_bound=diameter_px / 2
                )
                found = np.isfinite(distance)
                at_labels = np.where(found, picks.score[np.minimum(index, len(picks) - 1)], 0.0)
                estimate = 2.0 * float(np.sum(picks.score >= np.median(at_labels)))
            else:
                estimate = 0.0
        capacity = rows * cols / diameter_px**2
        counts[stem] = float(min(max(estimate, data.labelled[stem]), max(capacity, data.labelled[stem])))
    return counts


def run_folder(out: str | os.PathLike) -> Path:
    """The folder of a fine-tuning run writing checkpoint ``out``: ``NAME.pt`` -> ``NAME.finetune/``."""
    out = Path(out)
    return out.with_name(out.stem + ".finetune")


def _validation_note(data: LabelledMicrographs) -> str:
    if data.spec.splits["val"]:
        return f"validation: {len(data.spec.splits['val'])} held-out labelled micrograph(s)"
    return (
        "validation: no --val-micrographs, so a fixed set of unrotated crops of the training micrographs "
        "(held back from the random training crops, but the same micrographs: it measures fit, not generalisation)"
    )


def finetune(
    data: LabelledMicrographs,
    out: str | os.PathLike,
    config: FinetuneConfig,
    *,
    model_path: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Path:
    """Fine-tune a new head ``config.name`` on ``data`` and write the checkpoint ``out``.

    Args:
        data: from :func:`labelled_micrographs` (its dataset's name must be ``config.name``).
        out: the checkpoint to write (the best validation epoch); the run's logs, ``best.pt``
            and ``last.pt`` go to :func:`run_folder` of it.
        model_path: the base checkpoint; ``None``: the shipped pretrained generic model.
        resume: continue a killed run from its last finished epoch.
        overwrite: replace a checkpoint already at ``out`` and start its run afresh (without it,
            either is an error before anything is written, unless resuming).
        say: where progress lines go.

    Returns:
        ``out``, a checkpoint with every head of the base model plus ``config.name``.
    """
    keep_large_blocks()
    out = Path(out)
    spec = data.spec
    if spec.name != config.name:
        raise HydraPickerError(f"the data are dataset {spec.name!r} but the head to add is {config.name!r}")
    if out.suffix != ".pt":
        raise HydraPickerError(f"--out {out}: a checkpoint file name ending in .pt")
    if out.is_dir():
        raise HydraPickerError(f"--out {out}: is a folder, not a checkpoint file")
    if run_folder(out).is_file():
        raise HydraPickerError(f"{run_folder(out)}: is a file, but the run's logs go in this folder")
    if out.exists() and not (resume or overwrite):
        raise HydraPickerError(
            f"--out {out}: a checkpoint is already there; pass --overwrite to replace it, or another --out"
        )
    afresh = overwrite and not resume
    if not afresh:
        check_start(run_folder(out), resume)  # before finetune.json of a run already there is replaced
    model, meta = load_model(model_path)
    add_frozen_head(model, config.name)
    train_config = config.loop_settings(meta.preset.name, meta.target_diameter_px)

    density, counts = None, None
    if config.labels == "partial":
        say(
            "estimating particles per micrograph"
            + ("" if config.expected_particles else " from the generic head's picks")
        )
        counts = expected_particle_counts(model, meta, data, config.expected_particles)
        scale = rescale_factor(spec.pixel_size, spec.diameter, meta.target_diameter_px)
        density = {
            (spec.name, stem): count / (data.shapes[stem][0] * data.shapes[stem][1] * scale**2)
            for stem, count in counts.items()
        }
    folder = run_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    if afresh:  # only now that the inputs are read: fit() refuses a run already there
        for stale in ("last.pt", "best.pt"):
            (folder / stale).unlink(missing_ok=True)
    note = _validation_note(data)
    record = {
        "base_model": str(model_path) if model_path is not None else "shipped pretrained generic model",
        "head": config.name,
        "config": asdict(config),
        "train_micrographs": list(spec.splits["train"]),
        "val_micrographs": list(spec.splits["val"]),
        "labelled_particles": data.labelled,
        "expected_particles": counts,
        "loss": "positive-unlabelled focal (hydrapicker.loss.pu_focal_loss)"
        if density
        else "focal, unlabelled = background",
        "validation": note,
    }
    atomic_write_text(folder / "finetune.json", json.dumps(record, indent=2) + "\n")
    say(
        f"fine-tuning head {config.name!r} on {len(spec.splits['train'])} micrograph(s), "
        f"{sum(data.labelled[s] for s in spec.splits['train'])} labelled particles; {note}"
    )
    if counts is not None:
        say(
            "particles per micrograph (labelled / expected): "
            + ", ".join(f"{s} {data.labelled[s]}/{counts[s]:.0f}" for s in counts)
        )

    def report(epoch: int, row: dict) -> None:
        say(
            f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f} ({row['seconds']:.0f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    best = fit(
        finetune_plan(config.epochs, config.lr),
        model,
        [spec],
        folder,
        train_config,
        resume=resume,
        on_epoch_end=report,
        particle_density=density,
    )
    with atomic_path(out) as tmp:
        shutil.copyfile(best, tmp)
    return out
