"""Atomic file output: every file we write is either complete or absent.

Writers produce the file under a temporary name in the destination folder, then
``os.replace`` it into place (atomic on POSIX within one filesystem), so a killed run or
a full disk never leaves a truncated output behind. The temporary file is created with mode
0666 less the umask, as ``open`` would (0644 under the usual 022), so outputs are as readable
by a group or a web server as any other file the user writes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from hydrapicker.errors import HydraPickerError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "refuse_overwriting_inputs", "save_figure"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps ``path``'s suffix, so libraries that choose a format by
    suffix (matplotlib, tifffile, numpy) still see the right one.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise HydraPickerError(f"{path}: already exists (refusing to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(path)
    except OSError as exc:
        raise HydraPickerError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise HydraPickerError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_temporary(path: Path) -> Path:
    """A new empty hidden file beside ``path`` (same suffix), mode 0666 less the umask.

    Not ``tempfile.mkstemp``: it creates 0600 files, and a rename keeps the mode.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def save_figure(fig, path: str | os.PathLike, **savefig: object) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` atomically (PNG unless ``format`` says), close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **{"format": "png", **savefig})
    finally:
        plt.close(fig)
    return path


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike], what: str = "output"
) -> None:
    """Refuse, before anything is written, an output that is one of the inputs (links followed: the file itself).

    Raises:
        HydraPickerError: names the output and the input it would overwrite.
    """
    real = {os.path.realpath(p): Path(p) for p in inputs}
    for output in outputs:
        hit = real.get(os.path.realpath(output))
        if hit is not None:
            raise HydraPickerError(
                f"{output}: the {what} would overwrite the input {hit}; write it somewhere else (refusing)"
            )
