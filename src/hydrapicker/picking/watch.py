"""Following a folder during data collection: pick each new micrograph once it is complete.

A micrograph is *complete* when its size and modification time are the same on two looks in
a row (``poll`` seconds apart) and :func:`hydrapicker.io.read_micrograph` reads it: a file
still being copied or written is left alone until it stops changing, and one that stopped
changing but is still unreadable (a truncated copy, a stalled writer) is reported once and
not read again until it changes. Complete micrographs go to :func:`hydrapicker.picking.runner.pick_files`
in batches, so the outputs are those of ``pick`` (atomic per file, ``OUT/picks.csv`` rebuilt
after each batch) and a restart over the same ``OUT`` skips what is already picked without
reading it. The watch ends after ``idle`` seconds with nothing new, or on Ctrl-C once the
micrograph being picked is written (a second Ctrl-C aborts at once). A threshold set with
``hydrapicker threshold OUT --set T`` during the watch applies to the micrographs picked after it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from hydrapicker.defaults import COORDINATE_FORMATS, WATCH_IDLE_S, WATCH_POLL_S
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import check_formats
from hydrapicker.io.micrograph import list_micrographs, micrograph_stem, read_micrograph
from hydrapicker.io.run_folder import THRESHOLD_RECORD, expected_outputs, recorded_threshold
from hydrapicker.picking.picker import Picker
from hydrapicker.picking.runner import PickReport, pick_files

__all__ = ["FolderWatch", "Poll", "WatchReport", "watch_folder"]


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:  # removed or renamed between the listing and now
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass
class Poll:
    """What one look at the folder found."""

    ready: list[Path] = field(default_factory=list)  # complete and readable, not picked yet
    done: list[Path] = field(default_factory=list)  # complete, and their outputs are already there
    unreadable: dict[Path, str] = field(default_factory=dict)  # stopped changing but unreadable: the reason
    changed: bool = False  # a file appeared, changed or went away


class FolderWatch:
    """Which micrographs matching ``patterns`` are new and complete, one :meth:`poll` at a time.

    Each file is handed out once (in ``ready``, ``done`` or ``unreadable``) per version of it:
    one that changes afterwards is watched again from scratch. ``is_done(path)`` tells which
    complete files need no reading at all (their outputs exist).
    """

    def __init__(
        self, patterns: Sequence[str | os.PathLike], is_done: Callable[[Path], bool] = lambda path: False
    ) -> None:
        self.patterns = list(patterns)
        self.is_done = is_done
        self._last: dict[Path, tuple[int, int]] = {}  # signature at the previous look
        self._handed: dict[Path, tuple[int, int]] = {}  # signature when handed out

    def poll(self) -> Poll:
        """Look once: files unchanged since the previous look are complete if they read."""
        found = Poll()
        now: dict[Path, tuple[int, int]] = {}
        for path in list_micrographs(self.patterns):
            signature = _signature(path)
            if signature is None:
                continue
            now[path] = signature
            if self._handed.get(path) == signature:
                continue
            if self._last.get(path) != signature:
                found.changed = True  # new, or still being written
                continue
            self._handed[path] = signature
            if self.is_done(path):
                found.done.append(path)
                continue
            try:
                read_micrograph(path)
            except HydraPickerError as exc:
                found.unreadable[path] = str(exc)
                continue
            found.ready.append(path)
        if self._last.keys() - now.keys():
            found.changed = True
        self._last = now
        self._handed = {path: sig for path, sig in self._handed.items() if path in now}
        return found


@dataclass
class WatchReport(PickReport):
    """What a watch did, over all its batches; ``stopped_by`` is ``"idle"``, ``"interrupt"`` or ``"stop"``."""

    stopped_by: str = ""


class _InterruptToStop:
    """SIGINT handler: the first Ctrl-C asks the watch to stop, a second one aborts."""

    def __init__(self, stop: threading.Event, say: Callable[[str], None]) -> None:
        self.stop, self.say, self.interrupted = stop, say, False

    def __call__(self, signum: int, frame: object) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.stop.set()
        self.say("stopping after the micrograph being picked (Ctrl-C again to abort)")


@contextmanager
def _stop_on_interrupt(stop: threading.Event, say: Callable[[str], None]) -> Iterator[_InterruptToStop | None]:
    if threading.current_thread() is not threading.main_thread():
        yield None  # only the main thread may set signal handlers; the caller's stop event still works
        return
    handler = _InterruptToStop(stop, say)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGINT, previous)


def watch_folder(
    patterns: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    picker: Picker,
    formats: Sequence[str] = tuple(COORDINATE_FORMATS),
    *,
    poll: float = WATCH_POLL_S,
    idle: float | None = WATCH_IDLE_S,
    overlay_dir: str | os.PathLike | None = None,
    workers: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> WatchReport:
    """Pick every micrograph matching ``patterns`` as it becomes complete, into ``out_dir``, until told to stop.

    Stops after ``idle`` seconds (None: never) in which no file appeared, changed or was
    picked; when ``stop`` is set (checked between micrographs); or on Ctrl-C (main thread
    only), after the micrograph being picked is written. ``overwrite`` picks again, once,
    micrographs whose outputs exist. When ``OUT/threshold.json`` changes during the watch
    (``hydrapicker threshold OUT --set T``), ``picker`` picks at its threshold from then on.
    The other arguments are :func:`pick_files`'s.
    """
    formats = check_formats(formats)
    if not poll > 0:
        raise HydraPickerError(f"--poll must be a positive number of seconds, got {poll}")
    if idle is not None and not idle > 0:
        raise HydraPickerError(f"--idle must be a positive number of seconds, got {idle}")
    out_dir = Path(out_dir)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    stop = stop or threading.Event()
    report = WatchReport()
    start = last_news = time.monotonic()

    def is_done(path: Path) -> bool:
        return not overwrite and all(
            p.is_file() for p in expected_outputs(out_dir, micrograph_stem(path), formats, overlay_dir)
        )

    watcher = FolderWatch(patterns, is_done)
    recorded = recorded_threshold(out_dir)
    stems: dict[str, Path] = {}  # two micrographs with one name would overwrite each other's picks
    with _stop_on_interrupt(stop, say) as interrupt:
        until = f"{idle:g} s with nothing new" if idle is not None else "Ctrl-C"
        say(f"watching {', '.join(map(str, patterns))} every {poll:g} s until {until}")
        while not stop.is_set():
            found = watcher.poll()
            report.skipped.extend(micrograph_stem(p) for p in found.done)
            for path, reason in found.unreadable.items():
                report.failed[str(path)] = reason
                say(f"not picked (yet): {reason}; tried again if the file changes")
            batch = []
            for path in found.ready:
                stem = micrograph_stem(path)
                if stems.setdefault(stem, path) != path:
                    report.failed[str(path)] = f"{path}: has the same name {stem!r} as {stems[stem]}: not picked"
                    say(report.failed[str(path)])
                else:
                    batch.append(path)
            if batch and recorded_threshold(out_dir) not in (None, recorded):
                recorded = recorded_threshold(out_dir)
                picker.settings = replace(picker.settings, threshold=recorded)
                say(f"threshold {recorded:g} from {out_dir / THRESHOLD_RECORD} (set during the watch) from now on")
            if batch:
                done = pick_files(
                    batch,
                    out_dir,
                    picker,
                    formats,
                    overlay_dir=overlay_dir,
                    workers=workers,
                    overwrite=overwrite,
                    progress=False,
                    log=say,
                    stop=stop.is_set,
                )
                for path in batch:
                    report.failed.pop(str(path), None)  # an earlier, incomplete version of it
                report.add(done)
                say(
                    f"picked {len(done.picked)} new micrograph(s), {report.n_picks} particles in {len(report.picked)} so far"
                )
            if batch or found.changed:
                last_news = time.monotonic()
            if idle is not None and time.monotonic() - last_news >= idle:
                report.stopped_by = "idle"
                break
            stop.wait(poll)
        else:
            report.stopped_by = "interrupt" if interrupt is not None and interrupt.interrupted else "stop"
    report.seconds = time.monotonic() - start
    return report
