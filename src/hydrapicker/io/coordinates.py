"""Particle-coordinate files in and out: RELION STAR, EMAN/crYOLO BOX, crYOLO CBOX, Topaz, cryoSPARC, CSV.

Every reader returns ``{micrograph name: Picks}`` in our one convention (x = column,
y = row of the micrograph array as stored, pixel centres at integers, see
:mod:`hydrapicker.io.picks`); every writer takes ``Picks`` in that convention. A y-flip is
never implicit: ``invert_y=True`` asks for it, and needs the micrograph shape.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.io.picks import Picks

__all__ = ["read_picks", "write_picks", "guess_format", "FORMATS"]

#: Format names accepted by ``fmt`` (see :data:`hydrapicker.defaults.COORDINATE_FORMATS`).
FORMATS: tuple[str, ...] = tuple(COORDINATE_FORMATS)

_SUFFIX_FORMATS = {".star": "star", ".box": "box", ".cbox": "cbox", ".txt": "topaz", ".tsv": "topaz", ".cs": "cs", ".csv": "csv"}


def guess_format(path: str | os.PathLike) -> str:
    """The coordinate format named by ``path``'s suffix (``.txt``/``.tsv`` are Topaz)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise HydraPickerError(
            f"{path}: cannot tell the coordinate format from suffix {suffix!r} "
            f"(expected one of {', '.join(sorted(_SUFFIX_FORMATS))}, or name the format)"
        )
    return _SUFFIX_FORMATS[suffix]


def _check_format(path: str | os.PathLike, fmt: str | None) -> str:
    if fmt is None:
        return guess_format(path)
    if fmt not in FORMATS:
        raise HydraPickerError(f"{path}: unknown coordinate format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt


def _file_key(path: Path) -> str:
    """Micrograph name for a file that holds one micrograph: its stem, micrograph suffix dropped too."""
    return micrograph_stem(path.name[: -len(path.suffix)] if path.suffix else path.name)


def _mic_name(value: object) -> str:
    return micrograph_stem(Path(str(value).strip()).name)


def read_picks(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    micrograph: str | None = None,
    box_size: float | None = None,
    shape: tuple[int, int] | None = None,
    invert_y: bool = False,
) -> dict[str, Picks]:
    """Read a coordinate file into ``{micrograph name: Picks}``.

    Args:
        path: the coordinate file.
        fmt: one of :data:`FORMATS`; ``None`` guesses from the suffix (:func:`guess_format`).
        micrograph: name for files that hold one micrograph (BOX, CBOX, STAR/CSV without a
            micrograph column); default the file's stem. For files that hold many, keep only
            this one (empty ``Picks`` when it has none).
        box_size: box edge in px, for formats that do not store it (it overrides none that do).
        shape: ``(rows, cols)`` of the micrograph(s); enables the inside-the-micrograph check
            and is required by ``invert_y`` (``.cs`` files carry their own).
        invert_y: flip y on the way in (``y -> rows - 1 - y``; ``.cs``: ``y_frac -> 1 - y_frac``).

    Raises:
        HydraPickerError: missing, empty or malformed file, missing columns, NaN
            coordinates, non-positive box size, coordinates outside a known shape; the
            message names the file and the row or field.
    """
    path = Path(path)
    fmt = _check_format(path, fmt)
    if not path.is_file():
        raise HydraPickerError(f"{path}: no such coordinate file")
    if box_size is not None and not (np.isfinite(box_size) and box_size > 0):
        raise HydraPickerError(f"{path}: box size must be a positive number of pixels, got {box_size}")
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
    if invert_y and shape is None and fmt != "cs":
        raise HydraPickerError(f"{path}: invert_y needs the micrograph shape (rows, cols)")
    reader = _READERS[fmt]
    picks = reader(path, micrograph=micrograph, box_size=box_size, shape=shape, invert_y=invert_y)
    if micrograph is not None:
        picks = {micrograph: picks.get(micrograph, Picks.empty(micrograph, box_size, shape))}
    return picks


def write_picks(
    path: str | os.PathLike,
    picks: Picks | Sequence[Picks],
    fmt: str | None = None,
    *,
    invert_y: bool = False,
) -> None:
    """Write picks of one or many micrographs to a coordinate file, atomically.

    BOX and CBOX hold one micrograph and need ``Picks.box_size``; ``.cs`` needs
    ``Picks.shape``; ``invert_y`` needs ``Picks.shape``.
    """
    path = Path(path)
    fmt = _check_format(path, fmt)
    many = [picks] if isinstance(picks, Picks) else list(picks)
    for p in many:
        if invert_y and p.shape is None:
            raise HydraPickerError(f"{path}: invert_y needs the shape of micrograph {p.micrograph!r}")
    _WRITERS[fmt](path, many, single=isinstance(picks, Picks), invert_y=invert_y)


# --- shared checks ---------------------------------------------------------------------


def _flip(y: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    # Topaz's convention (topaz/utils/conversions.py): pixel centres at integers, so the
    # flip maps row r to row rows-1-r.
    assert shape is not None
    return (shape[0] - 1) - y


def _finish(
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
        y = _flip(y, shape)
    if shape is not None:
        _check_inside(path, name, x, y, shape, rows)
    return Picks(name, x, y, score, box_size, shape)


def _check_inside(path: Path, name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], rows: np.ndarray) -> None:
    # A centre may lie anywhere on the micrograph's pixels, edges included.
    outside = (x < -0.5) | (x > shape[1] - 0.5) | (y < -0.5) | (y > shape[0] - 0.5)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise HydraPickerError(
            f"{path}: row {rows[i]}: particle at (x={x[i]:g}, y={y[i]:g}) lies outside micrograph "
            f"{name!r} of {shape[1]} x {shape[0]} px (cols x rows)"
        )


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HydraPickerError(f"{path}: not a text coordinate file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise HydraPickerError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not text.strip():
        raise HydraPickerError(f"{path}: empty coordinate file")
    return text


def _number(path: Path, row: int, field: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise HydraPickerError(f"{path}: row {row}: {field} is not a number ({value!r})") from None


def _fmt(value: float) -> str:
    """A float as short text that reads back to within 1e-4."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# --- CSV -------------------------------------------------------------------------------

_CSV_HEADER = ("micrograph", "x", "y", "score")


def _read_csv(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """``micrograph,x,y,score``; also the bundled label files ``x,y[,diameter]`` (one micrograph)."""
    import csv

    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    columns = {h: i for i, h in enumerate(header)}
    if len(columns) != len(header):
        raise HydraPickerError(f"{path}: repeated column in header {','.join(header)}")
    for required in ("x", "y"):
        if required not in columns:
            raise HydraPickerError(f"{path}: header {','.join(header)!r} has no {required!r} column")
    known = {"micrograph", "x", "y", "score", "diameter"}
    unknown = [h for h in header if h not in known]
    if unknown:
        raise HydraPickerError(f"{path}: unknown column(s) {', '.join(unknown)} (expected {','.join(_CSV_HEADER)})")
    default_name = micrograph if micrograph is not None else _file_key(path)
    by_name: dict[str, list[tuple[int, float, float, float, float | None]]] = {}
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise HydraPickerError(f"{path}: row {line_no}: {len(fields)} fields, header has {len(header)}")
        name = _mic_name(fields[columns["micrograph"]]) if "micrograph" in columns else default_name
        if not name:
            raise HydraPickerError(f"{path}: row {line_no}: empty micrograph name")
        x = _number(path, line_no, "x", fields[columns["x"]])
        y = _number(path, line_no, "y", fields[columns["y"]])
        score = _number(path, line_no, "score", fields[columns["score"]]) if "score" in columns else 1.0
        diameter = _number(path, line_no, "diameter", fields[columns["diameter"]]) if "diameter" in columns else None
        by_name.setdefault(name, []).append((line_no, x, y, score, diameter))
    if not by_name and "micrograph" not in columns:
        by_name[default_name] = []
    out = {}
    for name, entries in by_name.items():
        rows, x, y, score, diam = (list(c) for c in zip(*entries)) if entries else ([], [], [], [], [])
        size = box_size
        if size is None and "diameter" in columns and diam:
            size = _one_box_size(path, name, np.asarray(diam, dtype=np.float64), np.asarray(rows))
        out[name] = _finish(path, name, x, y, score, size, shape, invert_y, np.asarray(rows, dtype=int))
    return out


def _one_box_size(path: Path, name: str, sizes: np.ndarray, rows: np.ndarray) -> float:
    """The box edge of one micrograph from per-row sizes: positive, and the most common value."""
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: box size must be positive, got {sizes[i]:g}")
    values, counts = np.unique(sizes, return_counts=True)
    return float(values[np.argmax(counts)])


def _write_csv(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    for p in many:
        y = _flip(p.y, p.shape) if invert_y else p.y
        writer.writerows((p.micrograph, _fmt(a), _fmt(b), repr(s)) for a, b, s in zip(p.x, y, p.score.tolist()))
    atomic_write_text(path, buffer.getvalue())


def _not_yet(fmt: str):
    def reader_or_writer(path: Path, *args, **kwargs):
        raise HydraPickerError(f"{path}: the {fmt} coordinate format is not implemented yet")

    return reader_or_writer


_READERS = {"csv": _read_csv, **{f: _not_yet(f) for f in ("star", "box", "cbox", "topaz", "cs")}}
_WRITERS = {"csv": _write_csv, **{f: _not_yet(f) for f in ("star", "box", "cbox", "topaz", "cs")}}
