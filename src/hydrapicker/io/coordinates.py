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
from hydrapicker.io.files import atomic_path, atomic_write_text
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.io.picks import Picks
from hydrapicker.io.star import write_star

__all__ = ["FORMATS", "check_formats", "guess_format", "read_picks", "read_picks_files", "write_picks"]

#: Format names accepted by ``fmt`` (see :data:`hydrapicker.defaults.COORDINATE_FORMATS`).
FORMATS: tuple[str, ...] = tuple(COORDINATE_FORMATS)

_SUFFIX_FORMATS = {
    ".star": "star", ".box": "box", ".cbox": "cbox", ".txt": "topaz", ".tsv": "topaz", ".cs": "cs", ".csv": "csv",
}  # fmt: skip


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


def _read_text(path: Path, *, headerless: bool = False) -> str:
    """The file's text; empty is an error unless the format has no header (then it means no particles)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HydraPickerError(f"{path}: not a text coordinate file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise HydraPickerError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not text.strip() and not headerless:
        raise HydraPickerError(f"{path}: empty coordinate file")
    return text


def _one_line(exc: BaseException) -> str:
    """A library's exception as one short line: its type and its message, whitespace collapsed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _number(path: Path, row: int, field: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise HydraPickerError(f"{path}: row {row}: {field} is not a number ({value!r})") from None


def _fmt(value: float) -> str:
    """A float as short text that reads back to within 1e-4."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


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
    import csv

    text = _read_text(path)
    try:
        table = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise HydraPickerError(f"{path}: malformed table ({_one_line(exc)})") from exc
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
    default_name = micrograph if micrograph is not None else _file_key(path)
    by_name: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for row_no, fields in enumerate(table[1:], start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise HydraPickerError(f"{path}: row {row_no}: {len(fields)} fields, the header has {len(header)}")
        if "micrograph" in field_at:
            name = _mic_name(fields[field_at["micrograph"]])
            if not name:
                raise HydraPickerError(f"{path}: row {row_no}: empty {columns_of['micrograph']}")
        else:
            name = default_name
        values = [
            _number(path, row_no, columns_of[f], fields[field_at[f]]) if f in field_at else default
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
            size = _one_box_size(path, table_[:, 3], rows)
        out[name] = _finish(path, name, table_[:, 0], table_[:, 1], table_[:, 2], size, shape, invert_y, rows)
    return out


def _one_box_size(path: Path, sizes: np.ndarray, rows: np.ndarray) -> float:
    """The box edge of one micrograph from per-row sizes: all positive; the most common one."""
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: box size must be a positive number of pixels, got {sizes[i]:g}")
    values, counts = np.unique(sizes, return_counts=True)
    return float(values[np.argmax(counts)])


def _write_table(path: Path, delimiter: str, header: Sequence[str], many: list[Picks], invert_y: bool) -> None:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    for p in many:
        y = _flip(p.y, p.shape) if invert_y else p.y
        writer.writerows((p.micrograph, _fmt(a), _fmt(b), repr(s)) for a, b, s in zip(p.x, y, p.score.tolist()))
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


# --- STAR: RELION and crYOLO's CBOX ---------------------------------------------------


def _read_star_blocks(path: Path) -> dict[str, object]:
    import starfile

    _read_text(path)  # empty / binary files get our message, not the parser's
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise HydraPickerError(f"{path}: not a readable STAR file ({_one_line(exc)})") from exc
    if not blocks:
        raise HydraPickerError(f"{path}: no data_ block in STAR file")
    return blocks


def _as_frame(path: Path, block: str, data: object):
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        twice = data.columns[data.columns.duplicated()]
        if len(twice):  # frame[label] would be a table, not a column
            raise HydraPickerError(f"{path}: data_{block}: column _{twice[0]} appears twice")
        return data
    if isinstance(data, dict):  # a block of single values: one row
        return pd.DataFrame({k: [v] for k, v in data.items()})
    raise HydraPickerError(f"{path}: data_{block} block is not a table")


def _numbers(path: Path, block: str, frame, column: str) -> np.ndarray:
    """A column as float64; names the first row that is not a number."""
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = raw.astype(str).str.strip().str.lower()
    unparsed = np.isnan(values) & ~raw.isna().to_numpy() & ~text.isin(["nan", "<na>", "none"]).to_numpy()
    if unparsed.any():
        i = int(np.flatnonzero(unparsed)[0])
        raise HydraPickerError(f"{path}: data_{block} row {i + 1}: _{column} is not a number ({raw.iloc[i]!r})")
    return values


_RELION_SCORES = ("rlnAutopickFigureOfMerit", "rlnParticleScore")


def _read_star(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """RELION coordinates: per-micrograph (``data_``) or many micrographs (``_rlnMicrographName``).

    The table is the block holding ``_rlnCoordinateX``: ``data_particles`` of RELION 3.1+/5
    files (their ``data_optics`` is skipped), or ``data_`` of coordinate files.
    """
    blocks = _read_star_blocks(path)
    frames = {name: data for name, data in blocks.items() if _has_columns(data, "rlnCoordinateX")}
    if not frames:
        if any(_has_columns(data, "rlnMicrographCoordinates") for data in blocks.values()):
            raise HydraPickerError(
                f"{path}: this is a RELION list of coordinate files (_rlnMicrographCoordinates); "
                "pass the coordinate files it names instead"
            )
        names = ", ".join(f"data_{n}" for n in blocks)
        raise HydraPickerError(f"{path}: no block with _rlnCoordinateX (blocks: {names})")
    block = "particles" if "particles" in frames else next(iter(frames))
    frame = _as_frame(path, block, frames[block])
    if "rlnCoordinateY" not in frame.columns:
        raise HydraPickerError(f"{path}: data_{block} has _rlnCoordinateX but no _rlnCoordinateY")
    x = _numbers(path, block, frame, "rlnCoordinateX")
    y = _numbers(path, block, frame, "rlnCoordinateY")
    score_column = next((c for c in _RELION_SCORES if c in frame.columns), None)
    score = _numbers(path, block, frame, score_column) if score_column else np.ones_like(x)
    sizes = _numbers(path, block, frame, "rlnDiameter") if "rlnDiameter" in frame.columns else None
    if "rlnMicrographName" in frame.columns:
        names = np.array([_mic_name(v) for v in frame["rlnMicrographName"]], dtype=object)
    else:
        names = np.full(len(x), micrograph if micrograph is not None else _file_key(path), dtype=object)
    rows = np.arange(1, len(x) + 1)
    out = {}
    groups = dict.fromkeys(names.tolist()) or {micrograph if micrograph is not None else _file_key(path): None}
    if "rlnMicrographName" in frame.columns and not len(x):
        groups = {}
    for name in groups:
        if not name:
            i = int(np.flatnonzero(names == name)[0])
            raise HydraPickerError(f"{path}: data_{block} row {i + 1}: empty _rlnMicrographName")
        mask = names == name
        size = box_size
        if size is None and sizes is not None and mask.any():
            size = _one_box_size(path, sizes[mask], rows[mask])
        out[name] = _finish(path, name, x[mask], y[mask], score[mask], size, shape, invert_y, rows[mask])
    return out


def _has_columns(data: object, *columns: str) -> bool:
    import pandas as pd

    keys = data.columns if isinstance(data, pd.DataFrame) else (data.keys() if isinstance(data, dict) else ())
    return all(c in keys for c in columns)


def _write_star(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    """One micrograph: RELION's per-micrograph ``data_`` block. Many: ``data_particles`` with names."""
    import pandas as pd

    def frame(p: Picks) -> dict[str, object]:
        y = _flip(p.y, p.shape) if invert_y else p.y
        return {"rlnCoordinateX": p.x, "rlnCoordinateY": y, "rlnAutopickFigureOfMerit": p.score}

    if single:
        write_star(path, {"": pd.DataFrame(frame(many[0]))})
        return
    parts = [pd.DataFrame({"rlnMicrographName": f"{p.micrograph}.mrc", **frame(p)}) for p in many]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {c: [] for c in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit")}
    )
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(object)
    write_star(path, {"particles": table})


#: crYOLO CBOX 1.0 columns, in crYOLO's order (CoordsIO.py); X/Y are the lower-left box corner.
_CBOX_COLUMNS = (
    "CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth",
    "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle",
)  # fmt: skip


def _read_cbox(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """crYOLO CBOX: STAR blocks ``global`` and ``cryolo``; centre = corner + size / 2 (cryoloBM cbox2coords)."""
    text = _read_text(path)
    name = micrograph if micrograph is not None else _file_key(path)
    if "data_" not in text:
        return _read_corner_rows(path, text, name, box_size, shape, invert_y, min_fields=5, score_field=4)
    blocks = _read_star_blocks(path)
    if "cryolo" not in blocks:
        raise HydraPickerError(f"{path}: no data_cryolo block (blocks: {', '.join('data_' + b for b in blocks)})")
    frame = _as_frame(path, "cryolo", blocks["cryolo"])
    for column in ("CoordinateX", "CoordinateY", "Width", "Height"):
        if column not in frame.columns:
            raise HydraPickerError(f"{path}: data_cryolo has no _{column} column")
    x0, y0, w, h = (_numbers(path, "cryolo", frame, c) for c in ("CoordinateX", "CoordinateY", "Width", "Height"))
    rows = np.arange(1, len(x0) + 1)
    _check_sizes(path, w, rows, "_Width")
    _check_sizes(path, h, rows, "_Height")
    score = _numbers(path, "cryolo", frame, "Confidence") if "Confidence" in frame.columns else np.ones_like(x0)
    size = box_size if box_size is not None or not len(w) else _one_box_size(path, w, rows)
    return {name: _finish(path, name, x0 + w / 2, y0 + h / 2, score, size, shape, invert_y, rows)}


def _check_sizes(path: Path, sizes: np.ndarray, rows: np.ndarray, label: str) -> None:
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: {label} must be a positive number of pixels, got {sizes[i]:g}")


def _single(path: Path, many: list[Picks], fmt: str) -> Picks:
    if len(many) != 1:
        raise HydraPickerError(f"{path}: a {fmt} file holds one micrograph, got {len(many)}; write one file per micrograph")
    if many[0].box_size is None:
        raise HydraPickerError(f"{path}: a {fmt} file needs the box size of micrograph {many[0].micrograph!r}")
    if not (np.isfinite(many[0].box_size) and many[0].box_size > 0):
        raise HydraPickerError(f"{path}: box size must be positive, got {many[0].box_size}")
    return many[0]


def _write_cbox(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    import pandas as pd

    p = _single(path, many, "CBOX")
    y = _flip(p.y, p.shape) if invert_y else p.y
    w = float(p.box_size)
    missing = np.full(len(p), np.nan)
    columns = {
        "CoordinateX": p.x - w / 2, "CoordinateY": y - w / 2, "CoordinateZ": missing,
        "Width": np.full(len(p), w), "Height": np.full(len(p), w), "Depth": missing,
        "EstWidth": np.full(len(p), w), "EstHeight": np.full(len(p), w),
        "Confidence": p.score, "NumBoxes": missing, "Angle": missing,
    }  # fmt: skip
    blocks = {
        "global": {"cbox_format_version": "1.0"},
        "cryolo": pd.DataFrame(columns)[list(_CBOX_COLUMNS)],
        "cryolo_include": pd.DataFrame({"slice_index": np.zeros(0, dtype=int)}),
    }
    write_star(path, blocks)


# --- EMAN / crYOLO BOX ----------------------------------------------------------------


def _read_corner_rows(
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
            raise HydraPickerError(f"{path}: row {row_no}: {len(fields)} fields, expected at least {min_fields} (x y w h)")
        labels = ("x", "y", "width", "height")
        values = [_number(path, row_no, labels[i], fields[i]) for i in range(4)]
        values.append(_number(path, row_no, "score", fields[score_field]) if score_field is not None else 1.0)
        parsed.append(values)
        rows.append(row_no)
    table = np.array(parsed, dtype=np.float64).reshape(-1, 5)
    rows_ = np.array(rows, dtype=int)
    _check_sizes(path, table[:, 2], rows_, "width")
    _check_sizes(path, table[:, 3], rows_, "height")
    size = box_size if box_size is not None or not len(rows_) else _one_box_size(path, table[:, 2], rows_)
    x = table[:, 0] + table[:, 2] / 2
    y = table[:, 1] + table[:, 3] / 2
    return {name: _finish(path, name, x, y, table[:, 4], size, shape, invert_y, rows_)}


def _read_box(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """EMAN1/crYOLO BOX: ``x_lo y_lo w h`` (a 5th EMAN column is ignored); no scores (all 1).
    An empty file is a micrograph without particles: BOX has no header, so that is how crYOLO,
    EMAN and :func:`write_picks` write one."""
    text = _read_text(path, headerless=True)
    name = micrograph if micrograph is not None else _file_key(path)
    return _read_corner_rows(path, text, name, box_size, shape, invert_y, min_fields=4, score_field=None)


def _write_box(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    p = _single(path, many, "BOX")
    y = _flip(p.y, p.shape) if invert_y else p.y
    w = float(p.box_size)
    lines = (f"{_fmt(a - w / 2)}\t{_fmt(b - w / 2)}\t{_fmt(w)}\t{_fmt(w)}\n" for a, b in zip(p.x, y))
    atomic_write_text(path, "".join(lines))


# --- cryoSPARC .cs ----------------------------------------------------------------------

_CS_X, _CS_Y, _CS_SHAPE = "location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"
_CS_PATH, _CS_SCORE = "location/micrograph_path", "pick_stats/ncc_score"


def _read_cs(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """cryoSPARC particles: x = center_x_frac * nx, y = center_y_frac * ny with
    micrograph_shape = [ny, nx] (pyem cryosparc2.py ``cryosparc_2_cs_particle_locations``);
    ``invert_y`` maps y_frac to 1 - y_frac, as pyem's ``inverty``.
    """
    try:
        with open(path, "rb") as handle:
            table = np.load(handle, allow_pickle=False)
    except Exception as exc:  # numpy raises many types on malformed input
        raise HydraPickerError(f"{path}: not a readable cryoSPARC .cs file ({_one_line(exc)})") from exc
    if not isinstance(table, np.ndarray) or table.dtype.names is None or table.ndim != 1:
        raise HydraPickerError(f"{path}: not a cryoSPARC .cs file (expected a 1-D numpy structured array)")
    for field in (_CS_X, _CS_Y):
        if field not in table.dtype.names:
            raise HydraPickerError(f"{path}: no {field!r} field")
    try:
        # signalling NaNs warn when cast; the [0, 1] check below names them
        with np.errstate(invalid="ignore"):
            xf = table[_CS_X].astype(np.float64)
            yf = table[_CS_Y].astype(np.float64)
            score = table[_CS_SCORE].astype(np.float64) if _CS_SCORE in table.dtype.names else np.ones(len(table))
            if _CS_SHAPE in table.dtype.names:
                shapes = np.asarray(table[_CS_SHAPE], dtype=np.int64).reshape(len(table), 2)
            elif shape is not None:
                shapes = np.tile(np.array(shape, dtype=np.int64), (len(table), 1))
            else:
                raise HydraPickerError(f"{path}: no {_CS_SHAPE!r} field; give the micrograph shape")
            if _CS_PATH in table.dtype.names:
                names = np.array([_mic_name(_text(v)) for v in table[_CS_PATH]], dtype=object)
            else:
                names = np.full(len(table), micrograph if micrograph is not None else _file_key(path), dtype=object)
    except (TypeError, ValueError) as exc:
        raise HydraPickerError(f"{path}: malformed cryoSPARC fields ({_one_line(exc)})") from exc
    for label, values in ((_CS_X, xf), (_CS_Y, yf), (_CS_SCORE, score)):
        if values.ndim != 1:
            raise HydraPickerError(f"{path}: field {label!r} holds arrays of shape {values.shape[1:]}, expected numbers")
    rows = np.arange(1, len(table) + 1)
    for label, values in ((_CS_X, xf), (_CS_Y, yf)):
        bad = ~((values >= 0) & (values <= 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise HydraPickerError(f"{path}: row {rows[i]}: {label} is {values[i]:g}, outside [0, 1]")
    if (shapes < 1).any():
        i = int(np.flatnonzero((shapes < 1).any(axis=1))[0])
        raise HydraPickerError(f"{path}: row {rows[i]}: {_CS_SHAPE} is {shapes[i].tolist()}")
    if invert_y:
        yf = 1 - yf
    out = {}
    # Match rows by integer codes: numpy compares a name with trailing NULs (from a damaged file) as ''.
    order = list(dict.fromkeys(names.tolist()))
    index = {name: k for k, name in enumerate(order)}
    codes = np.fromiter((index[n] for n in names.tolist()), dtype=np.int64, count=len(names))
    for k, name in enumerate(order):
        mask = codes == k
        mic_shapes = np.unique(shapes[mask], axis=0)
        if len(mic_shapes) > 1:
            raise HydraPickerError(f"{path}: micrograph {name!r} has several shapes {mic_shapes.tolist()}")
        ny, nx = (int(v) for v in mic_shapes[0])
        picks = _finish(path, name, xf[mask] * nx, yf[mask] * ny, score[mask], box_size, None, False, rows[mask])
        picks.shape = (ny, nx)
        out[name] = picks
    return out


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _write_cs(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    n = sum(len(p) for p in many)
    names = [f"{p.micrograph}.mrc".encode() for p in many]
    width = max((len(b) for b in names), default=1)
    dtype = [
        ("uid", "<u8"),
        ("location/micrograph_uid", "<u8"),
        ("location/exp_group_id", "<u4"),
        (_CS_PATH, f"S{width}"),
        (_CS_SHAPE, "<u4", (2,)),
        (_CS_X, "<f4"),
        (_CS_Y, "<f4"),
        (_CS_SCORE, "<f4"),
    ]
    table = np.zeros(n, dtype=dtype)
    start = 0
    for k, p in enumerate(many):
        if p.shape is None:
            raise HydraPickerError(f"{path}: a .cs file needs the shape of micrograph {p.micrograph!r}")
        ny, nx = p.shape
        # A centre on the first pixel may lie half a pixel left of 0 (pick keeps centres down to
        # -0.5), which no fraction expresses: it is written as the edge, 0.
        xf = np.where((p.x < 0) & (p.x >= -0.5), 0.0, p.x / nx)
        yf = np.where((p.y < 0) & (p.y >= -0.5), 0.0, p.y / ny)
        if invert_y:
            yf = 1 - yf
        for label, values in (("x", xf), ("y", yf)):
            bad = ~((values >= 0) & (values <= 1))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise HydraPickerError(
                    f"{path}: micrograph {p.micrograph!r} pick {i + 1}: {label} fraction {values[i]:g} is outside [0, 1]"
                )
        part = table[start : start + len(p)]
        part["uid"] = np.arange(start + 1, start + len(p) + 1)
        part["location/micrograph_uid"] = k + 1
        part[_CS_PATH] = names[k]
        part[_CS_SHAPE] = (ny, nx)
        part[_CS_X] = xf
        part[_CS_Y] = yf
        part[_CS_SCORE] = p.score
        start += len(p)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, table, allow_pickle=False)


_READERS = {"csv": _read_csv, "topaz": _read_topaz, "star": _read_star, "cbox": _read_cbox, "box": _read_box, "cs": _read_cs}
_WRITERS = {"csv": _write_csv, "topaz": _write_topaz, "star": _write_star, "cbox": _write_cbox, "box": _write_box, "cs": _write_cs}
