"""Progress of long loops (micrographs, epochs, batches): a bar on a terminal, plain lines in a log file.

A bar redraws one line with carriage returns, which a SLURM log or ``nohup`` file shows as
nothing until the end. When stderr is not a terminal, :class:`Progress` writes a plain line
instead, after the first item, then at most every ``PROGRESS_LINE_S`` seconds, and after the
last::

    picking: 12/100 micrographs, 0.41 micrographs/s, 3m35s left
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from hydrapicker import defaults

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Count ``total`` items done under ``desc``; ``enabled=False`` shows nothing.

    On a terminal it is a tqdm bar (``leave=False``: the bar goes when done; ``bar=False``: nothing,
    for an outer loop around an inner loop's bar). Elsewhere each line gives the count, the total,
    the rate and the time left; ``leave=False`` (an inner loop whose outer loop reports) drops the
    first and last lines. :meth:`write` prints a message without breaking the bar.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "micrographs",
        *,
        enabled: bool | None = True,
        leave: bool = True,
        bar: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.leave = int(total), desc, unit, leave
        self.stream = stream
        self.done = 0
        out = stream if stream is not None else sys.stderr
        self.enabled = enabled is not False
        self.bar: tqdm | None = None
        terminal = _is_terminal(out)
        if self.enabled and terminal:
            self.enabled = bar
            if bar:
                self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=leave, file=out)
        self.start = time.perf_counter()
        # an inner loop's first line waits PROGRESS_LINE_S (its outer loop has just reported)
        self.last_line: float | None = None if leave else self.start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more items done; ``note`` (e.g. a loss) ends the line."""
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        last = self.done >= self.total
        due = self.last_line is None or now - self.last_line >= defaults.PROGRESS_LINE_S
        if (due and not last) or (last and self.leave):
            self.last_line = now
            self._print(self.line(now - self.start, note))

    def line(self, elapsed: float, note: str = "") -> str:
        """The plain line after ``elapsed`` seconds."""
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}"
        if self.done and elapsed > 0:
            text += (
                f", {rate:.3g} {self.unit}/s" if rate >= 0.1 else f", {duration(1 / rate)} per {self.unit.rstrip('s')}"
            )
            left = max(self.total - self.done, 0) / rate
            text += f", {duration(left)} left" if left else f", done in {duration(elapsed)}"
        return text + (f"; {note}" if note else "")

    def write(self, message: str) -> None:
        """Print ``message`` on its own line (above the bar, on a terminal)."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream if self.stream is not None else sys.stderr)
        else:
            self._print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _print(self, text: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        print(text, file=out, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
