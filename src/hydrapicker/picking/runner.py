"""A folder of micrographs to files: reading ahead in threads, the network in this thread, writing in another.

Outputs are written atomically into the run folder's layout (:mod:`hydrapicker.io.run_folder`);
a rerun skips micrographs whose outputs are all there; unreadable micrographs are reported and
skipped; ``OUT/picks.csv`` is rebuilt at the end from the per-micrograph CSV files. Every
candidate down to ``CANDIDATE_FLOOR`` is kept in ``OUT/candidates/`` so ``hydrapicker threshold``
can re-write the outputs at another threshold without the network. Under ``torchrun``,
:func:`pick_files_sharded` gives each rank its share.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydrapicker import distributed
from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import check_formats, write_picks
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.io.picks import Picks
from hydrapicker.io.run_folder import (
    candidate_paths,
    check_outputs_apart,
    expected_outputs,
    output_paths,
    rebuild_picks_csv,
)
from hydrapicker.picking.overlay import write_overlay
from hydrapicker.picking.picker import Picker, Prepared
from hydrapicker.progress import Progress

__all__ = ["PickReport", "pick_files", "pick_files_sharded"]


@dataclass
class PickReport:
    """What a run of :func:`pick_files` did."""

    picked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> one-line reason naming the micrograph once
    n_picks: int = 0
    seconds: float = 0.0

    def add(self, other: PickReport) -> None:
        """Count ``other``'s micrographs in this report too (another rank's share, or a later batch)."""
        self.picked += other.picked
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.n_picks += other.n_picks


def pick_files(
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    picker: Picker,
    formats: Sequence[str] = tuple(COORDINATE_FORMATS),
    *,
    overlay_dir: str | os.PathLike | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    merge: bool = True,
) -> PickReport:
    """Pick every micrograph of ``paths`` into ``out_dir``; returns what happened.

    Micrographs whose output files (every format in ``formats``, the CSV, and the overlay
    when asked for) all exist are skipped unless ``overwrite``: every file is written
    atomically, so one that exists is complete. A micrograph that cannot be read or
    prepared is reported through ``log`` (one line) and skipped. ``workers`` threads read
    and prepare micrographs ahead of the network; one thread writes. At the end
    ``out_dir/picks.csv`` is rebuilt from every per-micrograph CSV in ``out_dir/csv``.
    Before the first micrograph, a model that corrects the diameter reads the particle size
    once from a sample of ``paths`` (:meth:`Picker.calibrate`) and says what it found; the
    sample is picked first, from the passes that read the size (no micrograph runs twice); every
    micrograph is then picked at that diameter.
    ``stop`` (asked before each micrograph; ``pick --watch`` sets it on Ctrl-C) ends the run
    early, after the micrographs in flight are written. ``merge=False`` leaves ``picks.csv``
    alone (one rank's share under torchrun: :func:`pick_files_sharded`). ``progress=False`` shows no
    progress; otherwise a bar on a terminal, plain lines in a log file (:class:`hydrapicker.progress.Progress`).
    """
    formats = check_formats(formats)
    if workers < 1:
        raise HydraPickerError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    overlay = Path(overlay_dir) if overlay_dir is not None else None
    check_outputs_apart(out_dir, paths, formats, overlay)
    report = PickReport()
    start = time.perf_counter()

    todo = []
    for path in paths:
        if not overwrite and all(
            p.is_file() for p in expected_outputs(out_dir, micrograph_stem(path), formats, overlay)
        ):
            report.skipped.append(micrograph_stem(path))
        else:
            todo.append(path)

    # a bar on a terminal; in a log file a line per micrograph, at most every PROGRESS_LINE_S
    bar = Progress(len(todo), "picking", enabled=progress)
    say = log or bar.write
    if todo and picker.calibrate(paths) is not None:
        say(picker.describe_size())
    # The size estimate's sample has been through the network at the run's diameter: pick it first
    # (its outputs are at hand), and let go of what this run does not pick.
    picker.keep_sampled(todo)
    sampled = picker.sampled
    todo.sort(key=lambda path: Path(path) not in sampled)  # stable: the rest keep their order

    def write(picks: Picks, candidates: Picks, prepared: Prepared) -> None:
        # Candidates first: a micrograph whose outputs exist then always has its candidates too.
        table, sidecar = candidate_paths(out_dir, picks.micrograph)
        info = {"micrograph": picks.micrograph, "box_size": picks.box_size, "shape": picks.shape}
        # where the micrograph and its overlay are: `threshold --set` redraws the overlay without the network
        info["path"] = os.path.abspath(prepared.path)  # links as named (a link may point elsewhere later)
        if overlay is not None:  # relative to OUT: the same wherever OUT is, and found again if OUT moves with it
            info["overlay"] = os.path.relpath((overlay / f"{picks.micrograph}.png").resolve(), out_dir.resolve())
        atomic_write_text(sidecar, json.dumps(info) + "\n")
        write_picks(table, candidates, "csv")
        for fmt, target in output_paths(out_dir, picks.micrograph, formats).items():
            write_picks(target, picks, fmt)
        if overlay is not None:
            write_overlay(overlay / f"{picks.micrograph}.png", prepared.data, picks)

    with (
        ThreadPoolExecutor(workers, thread_name_prefix="pick-read") as readers,
        ThreadPoolExecutor(1, thread_name_prefix="pick-write") as writer,
    ):
        ahead = workers + 1  # micrographs in flight: enough to keep the network fed, memory bounded
        reads = {i: readers.submit(picker.prepare, todo[i]) for i in range(min(ahead, len(todo)))}
        writes = []
        for i, path in enumerate(todo):
            if stop is not None and stop():
                for future in reads.values():
                    future.cancel()
                break
            if i + ahead < len(todo):
                reads[i + ahead] = readers.submit(picker.prepare, todo[i + ahead])
            try:
                prepared = reads.pop(i).result()
                candidates = picker.candidates(prepared)
                picks = candidates.above(picker.settings.threshold)
            except (HydraPickerError, OSError) as exc:
                report.failed[str(path)] = _naming(path, exc)
                say(f"skipped {report.failed[str(path)]}")
                bar.update(1)
                continue
            writes.append((path, picks, writer.submit(write, picks, candidates, prepared)))
            del prepared
            bar.update(1)
            # Surface write errors as they come; wait when writing falls behind (memory stays bounded).
            while writes and (writes[0][2].done() or len(writes) > ahead):
                _finish_write(writes.pop(0), report, say)
        for item in writes:
            _finish_write(item, report, say)
        bar.close()
    if merge:
        rebuild_picks_csv(out_dir)
    report.seconds = time.perf_counter() - start
    return report


def _naming(path: Path, exc: Exception) -> str:
    """The error as one line that names the micrograph once (our errors usually start with it)."""
    return str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"


def _finish_write(item: tuple[Path, Picks, Future], report: PickReport, say: Callable[[str], None]) -> None:
    path, picks, future = item
    try:
        future.result()
    except HydraPickerError as exc:
        report.failed[str(path)] = _naming(path, exc)
        say(f"failed {report.failed[str(path)]}")
        return
    report.picked.append(picks.micrograph)
    report.n_picks += len(picks)


def pick_files_sharded(
    paths: Sequence[Path], out_dir: str | os.PathLike, picker: Picker, formats: Sequence[str], **options: Any
) -> PickReport:
    """:func:`pick_files` over this rank's share of ``paths``, then one merged ``OUT/picks.csv``.

    Each rank picks ``paths[rank::world_size]`` into the shared ``out_dir`` (so a rerun, with any
    number of ranks, skips what any rank finished); after a barrier rank 0 rebuilds
    ``OUT/picks.csv`` from every per-micrograph CSV. Returns the report of the whole run (every
    rank's merged; ``seconds`` the slowest rank's) on every rank. ``options`` go to ``pick_files``.
    """
    if not distributed.is_distributed():
        return pick_files(paths, out_dir, picker, formats, **options)
    picker.calibrate(paths)  # on the whole list: every rank reads the same sample, picks at the same diameter
    mine = pick_files(distributed.shard(paths), out_dir, picker, formats, merge=False, **options)
    distributed.barrier()  # every rank's files are written (atomically) before rank 0 reads them
    if distributed.is_main():
        rebuild_picks_csv(out_dir)
    merged = PickReport()
    for report in distributed.all_gather(mine):  # the all-gather also holds every rank until picks.csv is there
        merged.add(report)
        merged.seconds = max(merged.seconds, report.seconds)
    return merged
