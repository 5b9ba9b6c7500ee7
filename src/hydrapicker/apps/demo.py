"""The end-to-end demo on the real micrographs bundled with the package.

The whole story on three real β-galactosidase micrographs (EMPIAR-10017) and one T20S
proteasome micrograph (EMPIAR-10025), none of which the shipped model was trained on:

1. zero-shot: pick every bundled micrograph with the shipped generic head;
2. few-shot: fine-tune a new head on two of the β-gal micrographs (trunk and generic head
   frozen) and pick the third, held-out one with it;
3. score both against the labels with :func:`hydrapicker.evaluate.evaluate`, and write STAR
   files, overlays, PR/ROC curves and ``REPORT.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hydrapicker.bundled import BundledDataset, bundled_datasets
from hydrapicker.checkpoint import load_model
from hydrapicker.defaults import PICK_THRESHOLD
from hydrapicker.evaluate import Evaluation, evaluate, write_curves
from hydrapicker.io import Picks, atomic_write_text, write_picks
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.overlay import write_overlay
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.training.config import FinetuneConfig
from hydrapicker.training.finetune import finetune, labelled_micrographs

__all__ = ["DemoResult", "format_figure", "run_demo"]

#: Scores kept when picking for evaluation: low, so AP sees the whole ranking.
RANKING_THRESHOLD = 0.01
FEW_SHOT_HEAD = "bgal_fewshot"


@dataclass(frozen=True)
class DemoResult:
    """The demo's figures: zero-shot per dataset (and its picks at the default threshold, as in the STAR files), and
    generic vs fine-tuned on the held-out micrograph."""

    zero_shot: dict[str, Evaluation]
    zero_shot_picks: dict[str, int]
    held_out: str
    held_out_generic: Evaluation
    held_out_finetuned: Evaluation
    report: Path


def format_figure(value: float) -> str:
    """Three decimals, or n/a where a figure is undefined (e.g. AUROC with no false pick)."""
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def _pick_and_write(
    model, meta, dataset: BundledDataset, paths: list[Path], head: str, out_dir: Path, say: Callable[[str], None]
) -> dict[str, Picks]:
    """Pick ``paths`` as ``hydrapicker pick`` does (the size read once over them); write STAR files and overlays of the picks above the default threshold."""
    settings = PickSettings(
        ParticleSize(diameter_px=dataset.box_size, pixel_size=dataset.pixel_size),
        head=head,
        threshold=RANKING_THRESHOLD,
    )
    picker = Picker(model, meta, settings)
    start = time.perf_counter()
    if settings.correct_size and len(paths) > 1:
        say(f"  reading the particle size over {len(paths)} micrographs (the model's size head)")
    if picker.calibrate(paths) is not None:
        say(f"  {picker.describe_size()} ({time.perf_counter() - start:.0f} s)")
    picks: dict[str, Picks] = {}
    for k, path in enumerate(paths, start=1):
        start = time.perf_counter()
        prepared = picker.prepare(path)
        ranked = picker.pick(prepared)
        picks[path.stem] = ranked
        kept = ranked.above(PICK_THRESHOLD)
        write_picks(out_dir / "star" / f"{path.stem}.star", kept, "star")
        write_overlay(out_dir / "overlays" / f"{path.stem}.png", prepared.data, kept)
        say(
            f"  {k}/{len(paths)} {path.stem}: {len(kept)} picks scoring >= {PICK_THRESHOLD:g} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return picks


def _score(picks: dict[str, Picks], truth: dict[str, Picks], box_size: float, out_dir: Path) -> Evaluation:
    evaluation = evaluate(picks, {name: truth[name] for name in picks}, box_size=box_size)
    write_curves(evaluation, out_dir)
    atomic_write_text(out_dir / "evaluation.json", json.dumps(evaluation.to_json(), indent=2) + "\n")
    return evaluation


def run_demo(
    out_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    epochs: int | None = None,
    batches_per_epoch: int | None = None,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out_dir`` (see the module docstring); ``model_path`` None = the shipped model."""
    out_dir = Path(out_dir)
    model, meta = load_model(model_path)
    zero_shot: dict[str, Evaluation] = {}
    zero_shot_picks: dict[str, dict[str, Picks]] = {}
    datasets = bundled_datasets()
    for dataset in datasets:
        say(f"zero-shot: picking {dataset.name} with the generic head")
        run_dir = out_dir / "zero_shot" / dataset.name
        picks = _pick_and_write(model, meta, dataset, dataset.micrographs(), "generic", run_dir, say)
        zero_shot_picks[dataset.name] = picks
        zero_shot[dataset.name] = _score(picks, dataset.labels(), dataset.box_size, run_dir)

    bgal = datasets[0]
    *few_shot, held_out = bgal.micrographs()
    say(f"few-shot: fine-tuning head {FEW_SHOT_HEAD!r} on {len(few_shot)} labelled micrographs")
    data = labelled_micrographs(
        FEW_SHOT_HEAD, few_shot, [p.with_suffix(".csv") for p in few_shot], size=ParticleSize(diameter_px=bgal.box_size)
    )
    overrides = {k: v for k, v in (("epochs", epochs), ("batches_per_epoch", batches_per_epoch)) if v is not None}
    # Each demo fine-tunes afresh: an earlier or interrupted demo's run in the same folder would
    # otherwise stop this one ("a training run is already there"); the folder is the demo's own.
    shutil.rmtree(out_dir / "few_shot", ignore_errors=True)
    checkpoint = finetune(
        data,
        out_dir / "few_shot" / "model.pt",
        FinetuneConfig(name=FEW_SHOT_HEAD, seed=seed, **overrides),
        model_path=model_path,
        say=say,
    )
    tuned, tuned_meta = load_model(checkpoint)
    say(f"few-shot: picking the held-out micrograph {held_out.stem} with head {FEW_SHOT_HEAD!r}")
    held_dir = out_dir / "few_shot" / "held_out"
    tuned_picks = _pick_and_write(tuned, tuned_meta, bgal, [held_out], FEW_SHOT_HEAD, held_dir, say)
    truth = bgal.labels()
    held_out_finetuned = _score(tuned_picks, truth, bgal.box_size, held_dir)
    held_out_generic = _score(
        {held_out.stem: zero_shot_picks[bgal.name][held_out.stem]},
        truth,
        bgal.box_size,
        out_dir / "few_shot" / "held_out_generic",
    )
    counts = {name: _count_above(picks, PICK_THRESHOLD) for name, picks in zero_shot_picks.items()}
    report = _write_report(out_dir, zero_shot, counts, held_out.stem, held_out_generic, held_out_finetuned, few_shot)
    return DemoResult(zero_shot, counts, held_out.stem, held_out_generic, held_out_finetuned, report)


def _count_above(picks: dict[str, Picks], threshold: float) -> int:
    return sum(len(p.above(threshold)) for p in picks.values())


def caveat(dataset: str) -> str:
    """What to keep in mind reading a bundled dataset's figures (empty if nothing)."""
    partial = {d.name for d in bundled_datasets() if d.partial_labels}
    if dataset in partial:
        return "partial labels: unlabelled particles count as false picks, so AP, AUROC and precision are lower bounds"
    return ""


def _write_report(
    out_dir: Path,
    zero_shot: dict[str, Evaluation],
    counts: dict[str, int],
    held_out: str,
    generic: Evaluation,
    finetuned: Evaluation,
    few_shot: list[Path],
) -> Path:
    f = format_figure
    lines = [
        "# HydraPicker demo report",
        "",
        "## Zero-shot: the shipped generic head on real micrographs it was never trained on",
        "",
        f"| dataset | AP | AUROC | best F1 (threshold) | picks (score >= {PICK_THRESHOLD:g}) | true particles |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in zero_shot.items():
        lines.append(
            f"| {name} | {f(e.ap)} | {f(e.auroc)} | {f(e.best_f1)} ({f(e.best_threshold)}) | {counts[name]} | {e.n_true} |"
        )
    lines += [
        "",
        f"Picks are those in the STAR files (score >= {PICK_THRESHOLD:g}, the default threshold); AP, AUROC and best F1 "
        f"rank every candidate down to {RANKING_THRESHOLD:g}.",
        *(f"{name}: {caveat(name)} (see its README)." for name in zero_shot if caveat(name)),
        "",
        f"## Few-shot: a new head fine-tuned on {len(few_shot)} micrographs, scored on the held-out {held_out}",
        "",
        "| head | AP | AUROC | best F1 |",
        "| --- | ---: | ---: | ---: |",
        f"| generic (zero-shot) | {f(generic.ap)} | {f(generic.auroc)} | {f(generic.best_f1)} |",
        f"| {FEW_SHOT_HEAD} (few-shot) | {f(finetuned.ap)} | {f(finetuned.auroc)} | {f(finetuned.best_f1)} |",
        "",
        f"Fine-tuned on: {', '.join(p.stem for p in few_shot)}.",
        "",
        "## Files",
        "",
        f"- `zero_shot/<dataset>/star/*.star`, `overlays/*.png`: picks scoring ≥ {PICK_THRESHOLD} (the default threshold)",
        "- `*/pr.png`, `*/roc.png`, `*/evaluation.json`: curves and figures over the full ranking",
        "- `few_shot/model.pt`: the checkpoint with the new head (`hydrapicker pick --model few_shot/model.pt --head "
        f"{FEW_SHOT_HEAD}`)",
        "",
    ]
    path = out_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
