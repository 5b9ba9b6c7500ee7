"""Checks and small conversions every coordinate reader and writer shares: names, numbers, the frame, edges.

The coordinate convention is :mod:`hydrapicker.io.picks`'s: x the column, y the row, pixel centres at integers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hydrapicker.errors import HydraPickerError
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.io.picks import Picks

__all__ = [
    "check_inside",
    "check_sizes",
    "file_key",
    "finish",
    "flip",
    "format_number",
    "mic_name",
    "NameCheck",
    "number",
    "one_box_size",
    "one_line",
    "read_text",
    "single_picks",
]


#: What RELION appends to a micrograph's name in the coordinate files its picking jobs write
#: (``<mic>_autopick.star``, ``<mic>_manualpick.star``): not part of the micrograph's name.
RELION_PICK_SUFFIXES: tuple[str, ...] = ("_autopick", "_manualpick")


def file_key(path: Path) -> str:
    """Micrograph name for a file that holds one micrograph: its stem, micrograph suffix dropped too,
    and RELION's ``_autopick`` / ``_manualpick`` of a ``.star`` file."""
    path = Path(path)
    key = micrograph_stem(path.name[: -len(path.suffix)] if path.suffix else path.name)
    if path.suffix.lower() == ".star":
        for suffix in RELION_PICK_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                return key[: -len(suffix)]
    return key


def mic_name(value: object) -> str:
    return micrograph_stem(Path(str(value).strip()).name)


class NameCheck:
    """The micrograph names of a file's rows (:func:`mic_name`); two different paths with one name are an error.

    ``a/s0.mrc`` and ``b/s0.mrc`` would otherwise merge into one micrograph ``s0`` (``pick``
    refuses the same two files); ``s0`` and ``s0.mrc``, or ``./a/s0.mrc`` and ``a/s0.mrc``, are
    one micrograph written two ways.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path, self.label = path, label
        self.seen: dict[str, tuple[str, str, int]] = {}

    def name(self, value: object, row: int) -> str:
        text = str(value).strip()
        name = mic_name(text)
        where = posixpath.normpath(posixpath.join(posixpath.dirname(text), name)) if name else ""
        first = self.seen.setdefault(name, (where, text, row))
        if first[0] != where:
            raise HydraPickerError(
                f"{self.path}: {self.label} {first[1]!r} (row {first[2]}) and {text!r} (row {row}) have the same "
                f"name {name!r} and would merge into one micrograph; give one coordinate file per folder"
            )
        return name

    def names(self, values: Sequence[object]) -> list[str]:
        return [self.name(v, row) for row, v in enumerate(values, start=1)]


def flip(y: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    # Topaz's convention (topaz/utils/conversions.py): pixel centres at integers, so the
    # flip maps row r to row rows-1-r.
    assert shape is not None
    return (shape[0] - 1) - y


def finish(
    path: Path,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    score: np.ndarray,
    box_size: float | None,
    shape: tuple[int, int] | None,
    invert_y: bool,
    rows: np.ndarray | None = None,
) -> Picks:
    """Validate one micrograph's parsed columns and build its Picks.

    ``rows`` gives each pick's 1-based row number in the file, for error messages.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    rows = np.arange(1, len(x) + 1) if rows is None else np.asarray(rows)
    for label, values in (("x", x), ("y", y), ("score", score)):
        bad = ~np.isfinite(values) if label != "score" else np.isnan(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise HydraPickerError(f"{path}: row {rows[i]}: {label} is {values[i]} (micrograph {name!r})")
    if box_size is not None and not (np.isfinite(box_size) and box_size > 0):
        raise HydraPickerError(f"{path}: micrograph {name!r}: box size must be positive, got {box_size}")
    if invert_y:
        y = flip(y, shape)
    if shape is not None:
        check_inside(path, name, x, y, shape, rows)
    return Picks(name, x, y, score, box_size, shape)


def check_inside(path: Path, name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], rows: np.ndarray) -> None:
    # A centre may lie anywhere on the micrograph's pixels, edges included.
    outside = (x < -0.5) | (x > shape[1] - 0.5) | (y < -0.5) | (y > shape[0] - 0.5)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise HydraPickerError(
            f"{path}: row {rows[i]}: particle at (x={x[i]:g}, y={y[i]:g}) lies outside micrograph "
            f"{name!r} of {shape[1]} x {shape[0]} px (cols x rows)"
        )


def read_text(path: Path, *, headerless: bool = False) -> str:
    """The file's text; empty is an error unless the format has no header (then it means no particles)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is not part of the header
    except UnicodeDecodeError as exc:
        raise HydraPickerError(f"{path}: not a text coordinate file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise HydraPickerError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not text.strip() and not headerless:
        raise HydraPickerError(f"{path}: empty coordinate file")
    return text


def one_line(exc: BaseException) -> str:
    """A library's exception as one short line: its type and its message, whitespace collapsed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def number(path: Path, row: int, field: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise HydraPickerError(f"{path}: row {row}: {field} is not a number ({value!r})") from None


def format_number(value: float) -> str:
    """A float as short text that reads back to within 1e-4."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def one_box_size(path: Path, sizes: np.ndarray, rows: np.ndarray) -> float:
    """The box edge of one micrograph from per-row sizes: all positive; the most common one."""
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: box size must be a positive number of pixels, got {sizes[i]:g}")
    values, counts = np.unique(sizes, return_counts=True)
    return float(values[np.argmax(counts)])


def check_sizes(path: Path, sizes: np.ndarray, rows: np.ndarray, label: str) -> None:
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: {label} must be a positive number of pixels, got {sizes[i]:g}")


def single_picks(path: Path, many: list[Picks], fmt: str) -> Picks:
    if len(many) != 1:
        raise HydraPickerError(
            f"{path}: a {fmt} file holds one micrograph, got {len(many)}; write one file per micrograph"
        )
    if many[0].box_size is None:
        raise HydraPickerError(f"{path}: a {fmt} file needs the box size of micrograph {many[0].micrograph!r}")
    if not (np.isfinite(many[0].box_size) and many[0].box_size > 0):
        raise HydraPickerError(f"{path}: box size must be positive, got {many[0].box_size}")
    return many[0]


def read_corner_rows(
    path: Path,
    text: str,
    name: str,
    box_size: float | None,
    shape: tuple[int, int] | None,
    invert_y: bool,
    *,
    min_fields: int,
    score_field: int | None,
) -> dict[str, Picks]:
    """Whitespace-separated ``x_lo y_lo w h ...`` rows: lower-left corner, then box width and height."""
    parsed = []
    rows = []
    for row_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < min_fields:
            raise HydraPickerError(
                f"{path}: row {row_no}: {len(fields)} fields, expected at least {min_fields} (x y w h)"
            )
        labels = ("x", "y", "width", "height")
        values = [number(path, row_no, labels[i], fields[i]) for i in range(4)]
        values.append(number(path, row_no, "score", fields[score_field]) if score_field is not None else 1.0)
        parsed.append(values)
        rows.append(row_no)
    table = np.array(parsed, dtype=np.float64).reshape(-1, 5)
    rows_ = np.array(rows, dtype=int)
    check_sizes(path, table[:, 2], rows_, "width")
    check_sizes(path, table[:, 3], rows_, "height")
    size = box_size if box_size is not None or not len(rows_) else one_box_size(path, table[:, 2], rows_)
    x = table[:, 0] + table[:, 2] / 2
    y = table[:, 1] + table[:, 3] / 2
    return {name: finish(path, name, x, y, table[:, 4], size, shape, invert_y, rows_)}
