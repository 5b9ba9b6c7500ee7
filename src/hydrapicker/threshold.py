"""Choosing the score threshold after picking: histogram, picks per micrograph, a suggestion, re-writing.

``pick`` keeps every candidate down to ``CANDIDATE_FLOOR`` in ``OUT/candidates/<stem>.csv``
(with ``<stem>.json``: box size and micrograph shape), so everything here works from those
files without the network: the score histogram, the mean number of picks per micrograph
against the threshold, a suggested threshold, and :func:`rewrite_outputs`, which re-writes
every per-micrograph coordinate file and ``OUT/picks.csv`` at a new threshold and records it
in ``OUT/threshold.json``.

The suggestion reads each candidate's score as the probability that it is a particle and
keeps the candidates that maximise the F1 then expected: keeping the k best of scores
``p_1 >= p_2 >= ...`` expects ``sum(p_1..p_k)`` true picks of ``sum(p)`` particles, so
``E[F1] ~ 2 sum(p_1..p_k) / (k + sum(p))`` (the ratio-of-expectations approximation; Nan et
al. 2012, "Optimizing F-measures: a tale of two approaches"). It has no setting: on the validation suite's
simulated sets (development) it came within 0.03 F1 of the best threshold on 7 of 10 sets
where Otsu's valley (the rule before) did on none, and ``benchmarks/threshold_rule.md`` records
how close it comes on the bundled and simulated labelled sets it was not chosen on. Its weak
case: a sparse micrograph, whose many low-score background candidates add up to more
particles than there are, so the suggestion lies too low. The scores are not calibrated
probabilities (the focal loss keeps them low), which is why it is a suggestion, not the default.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hydrapicker.defaults import CANDIDATE_FLOOR, COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import read_picks, write_picks
from hydrapicker.io.files import atomic_path, save_figure
from hydrapicker.io.picks import Picks
from hydrapicker.io.run_folder import (
    THRESHOLD_RECORD,
    RunRecord,
    candidate_paths,
    current_threshold,
    json_float,
    output_paths,
    read_sidecar,
    tables,
)

__all__ = [
    "RULE",
    "expected_f1_threshold",
    "format_summary",
    "picks_per_micrograph",
    "read_candidates",
    "rewrite_outputs",
    "score_histogram",
    "suggest_threshold",
    "write_plots",
]

#: How :func:`suggest_threshold` chooses, in words (printed with the suggestion).
RULE = "the highest expected F1, each candidate's score read as the probability that it is a particle"


def read_candidates(out_dir: str | os.PathLike) -> dict[str, Picks]:
    """Every micrograph's candidates from ``OUT/candidates/``, with their box size and shape.

    Raises:
        HydraPickerError: ``OUT`` has no candidates (picked by an older version), or a
            candidates file without its ``.json`` (or the other way round).
    """
    out_dir = Path(out_dir)
    found = tables(out_dir / "candidates")
    if not found:
        raise HydraPickerError(
            f"{out_dir}: no candidates/ files: picked by an older version of hydrapicker, which did not keep "
            "every candidate's score; pick again into it with --overwrite"
        )
    candidates = {}
    for table in found:
        stem = table.stem
        box_size, shape = read_sidecar(candidate_paths(out_dir, stem)[1])
        picks = read_picks(table, "csv", micrograph=stem)[stem]
        candidates[stem] = Picks(stem, picks.x, picks.y, picks.score, box_size, shape)
    return candidates


def _scores(candidates: dict[str, Picks]) -> np.ndarray:
    # Only scores the floor guarantees for every micrograph: a run picked with --threshold below
    # the floor keeps lower ones too, which would shift the histogram.
    scores = np.concatenate([p.score for p in candidates.values()] + [np.zeros(0)])
    return scores[scores >= CANDIDATE_FLOOR]


def expected_f1_threshold(scores: np.ndarray, probabilities: np.ndarray | None = None) -> float:
    """The threshold keeping the candidates that maximise the expected F1.

    ``probabilities``: each candidate's probability of being a particle (default: its score, as
    :func:`suggest_threshold` reads it; a calibration of the scores may give others). Keeping every
    score ``>= t`` keeps ``k`` candidates that hold ``sum(p of kept)`` particles in expectation, of
    ``sum(p)`` in all: ``E[F1] ~ 2 sum(p of kept) / (k + sum(p))``. The threshold returned is the
    lowest score kept (ties are kept together). NaN without candidates or without any probability.
    """
    scores = np.asarray(scores, dtype=np.float64)
    p = scores if probabilities is None else np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, p = scores[order], p[order]
    if len(scores) == 0 or p.sum() <= 0:
        return float("nan")
    # Ties: a threshold keeps all of a score or none of it, so only the last of a run counts.
    last_of_run = np.append(scores[1:] != scores[:-1], True)
    kept = np.arange(1, len(scores) + 1)
    expected = 2 * np.cumsum(p) / (kept + p.sum())
    return float(scores[np.flatnonzero(last_of_run)[np.argmax(expected[last_of_run])]])


def suggest_threshold(candidates: dict[str, Picks]) -> float:
    """The suggested threshold (:data:`RULE`) over every micrograph's candidates; NaN without any."""
    return expected_f1_threshold(_scores(candidates))


def score_histogram(candidates: dict[str, Picks], bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the pooled candidate scores over ``[0, 1]``."""
    return np.histogram(_scores(candidates), bins=bins, range=(0.0, 1.0))


def picks_per_micrograph(candidates: dict[str, Picks], thresholds: np.ndarray) -> np.ndarray:
    """Mean number of picks per micrograph at each threshold (picks with score >= it)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not candidates:
        return np.zeros_like(thresholds)
    scores = np.sort(np.concatenate([p.score for p in candidates.values()]))
    return (len(scores) - np.searchsorted(scores, thresholds, side="left")) / len(candidates)


def _table_thresholds(*extra: float | None) -> np.ndarray:
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    marks = [t for t in extra if t is not None and math.isfinite(t)]
    return np.unique(np.concatenate([grid, marks]))


def format_summary(candidates: dict[str, Picks], suggested: float, current: float | None) -> str:
    """Plain text: the score histogram as bars, picks per micrograph at a grid of thresholds, the suggestion."""
    counts, edges = score_histogram(candidates)
    n_scores = int(counts.sum())
    widest = max(int(counts.max()), 1)
    lines = [f"candidate scores (>= {CANDIDATE_FLOOR:g}) of {len(candidates)} micrograph(s): {n_scores}", ""]
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        bar = "#" * int(round(40 * count / widest))
        lines.append(f"  {low:4.2f}-{high:4.2f} {count:8d} {bar}")
    lines += ["", "  threshold  picks/micrograph  picks"]
    thresholds = _table_thresholds(suggested, current)
    per_micrograph = picks_per_micrograph(candidates, thresholds)
    first_empty = int(np.argmax(per_micrograph == 0)) if np.any(per_micrograph == 0) else len(thresholds)
    for k, (t, per) in enumerate(zip(thresholds, per_micrograph)):
        notes = [
            name for name, value in (("suggested", suggested), ("current", current)) if value is not None and t == value
        ]
        if k > first_empty and not notes:
            continue  # the rows after the first without picks say nothing more
        lines.append(f"  {t:9.3f}  {per:16.1f}  {int(round(per * len(candidates))):5d}  {', '.join(notes)}".rstrip())
    lines.append("")
    if math.isfinite(suggested):
        lines.append(f"suggested threshold: {suggested:.3f} ({RULE})")
    else:
        lines.append("no suggested threshold: no candidates")
    if current is not None:
        lines.append(f"current threshold: {current:g}")
    return "\n".join(lines)


def write_plots(
    candidates: dict[str, Picks], folder: str | os.PathLike, suggested: float, current: float | None
) -> list[Path]:
    """Write ``score_histogram.png`` and ``picks_per_micrograph.png`` into ``folder``, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    scores = _scores(candidates)
    grid = np.linspace(CANDIDATE_FLOOR, 1.0, 200)
    written = []
    # A log axis needs a positive count somewhere: without candidates matplotlib warns and draws nothing.
    yscale = "log" if len(scores) else "linear"
    for name in ("score_histogram.png", "picks_per_micrograph.png"):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        try:
            if name == "score_histogram.png":
                ax.hist(scores, bins=np.linspace(0, 1, 101), color="grey")
                ax.set(
                    yscale=yscale,
                    xlabel="score",
                    ylabel="candidates",
                    title=f"{len(scores)} candidates, {len(candidates)} micrographs",
                )
            else:
                ax.plot(grid, picks_per_micrograph(candidates, grid))
                ax.set(yscale=yscale, xlabel="threshold", ylabel="picks per micrograph", title="picks per micrograph")
            for value, label, style in ((suggested, "suggested", "-"), (current, "current", ":")):
                if value is not None and math.isfinite(value):
                    ax.axvline(value, color="tab:red", linestyle=style, label=f"{label} {value:.3f}")
            ax.set_xlim(0, 1)
            ax.legend(fontsize=7)
            written.append(save_figure(fig, folder / name))
        finally:
            plt.close(fig)
    return written


def _formats(out_dir: Path) -> list[str]:
    """The run's formats (its record) and every format folder present: all must move together."""
    try:
        record = RunRecord.read(out_dir)
    except HydraPickerError:
        record = None
    recorded = record.formats if record is not None else []
    return [fmt for fmt in COORDINATE_FORMATS if fmt in recorded or (out_dir / fmt).is_dir()]


@dataclass(frozen=True)
class Rewrite:
    """What :func:`rewrite_outputs` wrote."""

    threshold: float
    previous: float | None
    formats: list[str]
    n_micrographs: int
    n_picks: int
    #: each micrograph's picks as written (what ``threshold --set`` redraws the overlays with)
    picks: dict[str, Picks] = field(default_factory=dict, repr=False, compare=False)


def rewrite_outputs(out_dir: str | os.PathLike, threshold: float) -> Rewrite:
    """Re-write every per-micrograph coordinate file, ``picks.csv`` and ``threshold.json`` of ``OUT`` at ``threshold``.

    All or nothing: every file is written under a temporary name before the first one is
    replaced, so a failure (a sidecar without the box size BOX needs, a full disk) leaves ``OUT``
    as it was. Micrographs with picks in ``OUT/csv`` but no candidates (an older
    version picked them) are an error: they cannot move to the new threshold. Overlays are
    not redrawn here (:func:`hydrapicker.picking.overlay.redraw_overlays`, with :attr:`Rewrite.picks`).
    """
    out_dir = Path(out_dir)
    if not (CANDIDATE_FLOOR <= threshold <= 1):
        raise HydraPickerError(
            f"threshold {threshold}: must be between {CANDIDATE_FLOOR:g} (the lowest score kept in candidates/) and 1"
        )
    candidates = read_candidates(out_dir)
    orphans = sorted({p.stem for p in tables(out_dir / "csv")} - candidates.keys())
    if orphans:
        raise HydraPickerError(
            f"{out_dir}: {len(orphans)} micrograph(s) have picks but no candidates (picked by an older version), "
            f"e.g. {orphans[0]}: pick them again with --overwrite first"
        )
    formats = _formats(out_dir)
    previous = current_threshold(out_dir)
    record = {
        "threshold": threshold,
        "previous": previous,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "suggested": json_float(suggest_threshold(candidates), 6),
        "rule": RULE,
    }
    for stem, every in candidates.items():
        needs = [
            f
            for f in formats
            if (f in ("box", "cbox") and every.box_size is None) or (f == "cs" and every.shape is None)
        ]
        if needs:
            raise HydraPickerError(
                f"{candidate_paths(out_dir, stem)[1]}: no {'shape' if needs[0] == 'cs' else 'box_size'}, which the "
                f"{needs[0]} files need; pick {stem} again with --overwrite (nothing was re-written)"
            )
    picks = {stem: every.above(threshold) for stem, every in candidates.items()}
    # All or nothing: every file is written under its temporary name first; only when all are
    # written does each replace its file (an ExitStack of atomic_path: one failure unlinks them all).
    # They are replaced in reverse order of entering: the coordinate files, picks.csv, threshold.json last.
    with contextlib.ExitStack() as staged:
        tmp = staged.enter_context(atomic_path(out_dir / THRESHOLD_RECORD))
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_picks(staged.enter_context(atomic_path(out_dir / "picks.csv")), list(picks.values()), "csv")
        for stem, chosen in picks.items():
            for fmt, target in output_paths(out_dir, stem, formats).items():
                write_picks(staged.enter_context(atomic_path(target)), chosen, fmt)
    return Rewrite(threshold, previous, formats, len(candidates), sum(len(p) for p in picks.values()), picks)
