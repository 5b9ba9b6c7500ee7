"""Particle-coordinate files in and out: RELION STAR, EMAN/crYOLO BOX, crYOLO CBOX, Topaz, cryoSPARC, CSV.

Every reader returns ``{micrograph name: Picks}`` in our one convention (x = column,
y = row of the micrograph array as stored, pixel centres at integers, see
:mod:`hydrapicker.io.picks`); every writer takes ``Picks`` in that convention. A y-flip is
never implicit: ``invert_y=True`` asks for it, and needs the micrograph shape.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.checks import (
    NameCheck,
    file_key,
    finish,
    flip,
    format_number,
    number,
    one_box_size,
    one_line,
    read_corner_rows,
    read_text,
    single_picks,
)
from hydrapicker.io.cryosparc import read_cs, write_cs
from hydrapicker.io.files import atomic_write_text
from hydrapicker.io.picks import Picks, whole_pixel_box
from hydrapicker.io.star import read_cbox, read_star, write_cbox, write_star_picks

__all__ = [
    "FORMATS",
    "check_formats",
    "guess_format",
    "is_decoys_file",
    "read_picks",
    "read_picks_files",
    "without_decoys",
    "write_picks",
]

#: Format names accepted by ``fmt`` (see :data:`hydrapicker.defaults.COORDINATE_FORMATS`).
FORMATS: tuple[str, ...] = tuple(COORDINATE_FORMATS)

_SUFFIX_FORMATS = {
    ".star": "star",
    ".box": "box",
    ".cbox": "cbox",
    ".txt": "topaz",
    ".tsv": "topaz",
    ".cs": "cs",
    ".csv": "csv",
}


def check_formats(formats: Sequence[str]) -> list[str]:
    """The format names, checked; a user error naming an unknown one."""
    for fmt in formats:
        if fmt not in COORDINATE_FORMATS:
            raise HydraPickerError(f"unknown coordinate format {fmt!r} (choose from {', '.join(COORDINATE_FORMATS)})")
    if not formats:
        raise HydraPickerError("no coordinate format asked for")
    return list(dict.fromkeys(formats))


def guess_format(path: str | os.PathLike) -> str:
    """The coordinate format named by ``path``'s suffix (``.txt``/``.tsv`` are Topaz)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise HydraPickerError(
            f"{path}: cannot tell the coordinate format from suffix {suffix!r} "
            f"(expected one of {', '.join(sorted(_SUFFIX_FORMATS))}, or name the format)"
        )
    return _SUFFIX_FORMATS[suffix]


def is_decoys_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``NAME_decoys.*`` file (``simulate``'s carbon edges, contamination ...): not particles."""
    name = Path(path).name
    return name[: -len(Path(name).suffix) or None].endswith("_decoys")


def without_decoys(paths: Sequence[str | os.PathLike], role: str = "coordinate files") -> list[Path]:
    """``paths`` less the decoy files (:func:`is_decoys_file`), so that ``simulate``'s coordinates folder reads as
    its particles; a user error when nothing else is left."""
    kept = [Path(p) for p in paths if not is_decoys_file(p)]
    if paths and not kept:
        raise HydraPickerError(f"{role}: {Path(paths[0])} ... are all *_decoys.* files, which hold no particles")
    return kept


def _check_format(path: str | os.PathLike, fmt: str | None) -> str:
    if fmt is None:
        return guess_format(path)
    if fmt not in FORMATS:
        raise HydraPickerError(f"{path}: unknown coordinate format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt


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
        box_size: box edge in px given to every ``Picks``; default: the file's own where it
            has one (BOX/CBOX widths, the most common if they differ; a CSV ``diameter``;
            RELION ``_rlnDiameter``), else ``None``.
        shape: ``(rows, cols)`` of the micrograph(s); enables the inside-the-micrograph check
            and is required by ``invert_y``. ``.cs`` files carry their own
            ``micrograph_shape``, which wins.
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


def read_picks_files(
    paths: Sequence[str | os.PathLike],
    fmt: str | None = None,
    *,
    box_size: float | None = None,
) -> dict[str, Picks]:
    """Read many coordinate files into one ``{micrograph name: Picks}``.

    A micrograph may appear in one file only: two files naming it is an error naming both.
    """
    merged: dict[str, Picks] = {}
    source: dict[str, Path] = {}
    for path in paths:
        for name, picks in read_picks(path, fmt, box_size=box_size).items():
            if name in merged:
                raise HydraPickerError(f"micrograph {name!r} appears in both {source[name]} and {path}")
            merged[name] = picks
            source[name] = Path(path)
    return merged


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


# --- delimited tables: CSV and Topaz --------------------------------------------------


def _read_table(
    path: Path,
    delimiter: str,
    columns_of: dict[str, str],
    *,
    micrograph: str | None,
    box_size: float | None,
    shape: tuple[int, int] | None,
    invert_y: bool,
) -> dict[str, Picks]:
    """A header row, then one pick per row. ``columns_of`` maps our field to the file's column name.

    Fields: ``micrograph`` (optional: else the file holds one micrograph), ``x``, ``y``
    (required), ``score`` (optional: 1), ``box`` (optional: the box edge in px).
    """

    text = read_text(path)
    try:
        table = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise HydraPickerError(f"{path}: malformed table ({one_line(exc)})") from exc
    header = [h.strip() for h in table[0]]
    index = {h: i for i, h in enumerate(header)}
    if len(index) != len(header):
        raise HydraPickerError(f"{path}: repeated column in header {delimiter.join(header)!r}")
    field_at = {field: index[name] for field, name in columns_of.items() if name in index}
    for required in ("x", "y"):
        if required not in field_at:
            expected = delimiter.join(columns_of[f] for f in ("micrograph", "x", "y", "score") if f in columns_of)
            raise HydraPickerError(
                f"{path}: header {delimiter.join(header)!r} has no {columns_of[required]!r} column (expected {expected!r})"
            )
    default_name = micrograph if micrograph is not None else file_key(path)
    by_name: dict[str, list[tuple[int, float, float, float, float]]] = {}
    names = NameCheck(path, columns_of.get("micrograph", ""))
    for row_no, fields in enumerate(table[1:], start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise HydraPickerError(f"{path}: row {row_no}: {len(fields)} fields, the header has {len(header)}")
        if "micrograph" in field_at:
            name = names.name(fields[field_at["micrograph"]], row_no)
            if not name:
                raise HydraPickerError(f"{path}: row {row_no}: empty {columns_of['micrograph']}")
        else:
            name = default_name
        values = [
            number(path, row_no, columns_of[f], fields[field_at[f]]) if f in field_at else default
            for f, default in (("x", 0.0), ("y", 0.0), ("score", 1.0), ("box", np.nan))
        ]
        by_name.setdefault(name, []).append((row_no, *values))
    if not by_name and "micrograph" not in field_at:
        by_name[default_name] = []
    out = {}
    for name, entries in by_name.items():
        table_ = np.array([e[1:] for e in entries], dtype=np.float64).reshape(-1, 4)
        rows = np.array([e[0] for e in entries], dtype=int)
        size = box_size
        if size is None and "box" in field_at and len(rows):
            size = one_box_size(path, table_[:, 3], rows)
        out[name] = finish(path, name, table_[:, 0], table_[:, 1], table_[:, 2], size, shape, invert_y, rows)
    return out


def _write_table(path: Path, delimiter: str, header: Sequence[str], many: list[Picks], invert_y: bool) -> None:

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    for p in many:
        y = flip(p.y, p.shape) if invert_y else p.y
        writer.writerows(
            (p.micrograph, format_number(a), format_number(b), repr(s)) for a, b, s in zip(p.x, y, p.score.tolist())
        )
    atomic_write_text(path, buffer.getvalue())


#: CSV: ``micrograph,x,y,score``; the bundled label files have ``x,y[,diameter]`` (one micrograph).
_CSV_COLUMNS = {"micrograph": "micrograph", "x": "x", "y": "y", "score": "score", "box": "diameter"}

#: Topaz: ``image_name x_coord y_coord score``, tab separated (topaz/commands/extract.py).
_TOPAZ_COLUMNS = {"micrograph": "image_name", "x": "x_coord", "y": "y_coord", "score": "score"}


def _read_csv(path: Path, **options) -> dict[str, Picks]:
    return _read_table(path, ",", _CSV_COLUMNS, **options)


def _write_csv(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    _write_table(path, ",", ("micrograph", "x", "y", "score"), many, invert_y)


def _read_topaz(path: Path, **options) -> dict[str, Picks]:
    return _read_table(path, "\t", _TOPAZ_COLUMNS, **options)


def _write_topaz(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    _write_table(path, "\t", ("image_name", "x_coord", "y_coord", "score"), many, invert_y)


# --- EMAN / crYOLO BOX ----------------------------------------------------------------


def _read_box(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """EMAN1/crYOLO BOX: ``x_lo y_lo w h`` (a 5th EMAN column is ignored); no scores (all 1).
    An empty file is a micrograph without particles: BOX has no header, so that is how crYOLO,
    EMAN and :func:`write_picks` write one."""
    text = read_text(path, headerless=True)
    name = micrograph if micrograph is not None else file_key(path)
    return read_corner_rows(path, text, name, box_size, shape, invert_y, min_fields=4, score_field=None)


def _write_box(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    """The box edge in whole pixels (EMAN and crYOLO tools expect them), the nearest to ``box_size``; the corner
    is ``centre - edge / 2`` as a decimal (a half pixel for odd edges), so ``corner + edge / 2`` gives the centre back
    exactly (to the 1e-4 px every format keeps)."""
    p = single_picks(path, many, "BOX")
    y = flip(p.y, p.shape) if invert_y else p.y
    w = float(whole_pixel_box(p.box_size))
    lines = (
        f"{format_number(a - w / 2)}\t{format_number(b - w / 2)}\t{format_number(w)}\t{format_number(w)}\n"
        for a, b in zip(p.x, y)
    )
    atomic_write_text(path, "".join(lines))


_READERS = {
    "csv": _read_csv,
    "topaz": _read_topaz,
    "star": read_star,
    "cbox": read_cbox,
    "box": _read_box,
    "cs": read_cs,
}
_WRITERS = {
    "csv": _write_csv,
    "topaz": _write_topaz,
    "star": write_star_picks,
    "cbox": write_cbox,
    "box": _write_box,
    "cs": write_cs,
}
