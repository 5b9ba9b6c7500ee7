"""STAR files: the one place they are written (RELION coordinates, RELION job files, simulated truth),
and the coordinate readers and writers of the two STAR flavours, RELION's and crYOLO's CBOX."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from hydrapicker.errors import HydraPickerError
from hydrapicker.io.checks import (
    NameCheck,
    check_sizes,
    file_key,
    finish,
    flip,
    one_box_size,
    one_line,
    read_corner_rows,
    read_text,
    single_picks,
)
from hydrapicker.io.files import atomic_path
from hydrapicker.io.picks import Picks

__all__ = ["needs_quotes", "read_cbox", "read_star", "write_cbox", "write_star", "write_star_picks"]


def write_star(path: str | os.PathLike, blocks: Mapping[str, object], float_format: str = "%.10g") -> None:
    """Write STAR ``blocks`` (``{block name: DataFrame or dict}``; ``""`` is a bare ``data_``) atomically with starfile.

    Strings are quoted, all of them, only when one needs it (:func:`needs_quotes`): RELION's
    own files quote nothing, and a reader that does not unquote then sees what it expects.
    """
    texts = (
        v
        for data in blocks.values()
        if isinstance(data, pd.DataFrame)
        for column in data.columns
        if not pd.api.types.is_numeric_dtype(data[column])
        for v in data[column]
    )
    quote = any(isinstance(v, str) and needs_quotes(v) for v in texts)
    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp, float_format=float_format, quote_all_strings=quote)


def needs_quotes(value: str) -> bool:
    """STAR values that start like a label, comment or keyword, or hold whitespace, must be quoted."""
    reserved = ("data_", "loop_", "save_", "stop_", "global_")
    return not value or value[0] in "_#$'\"[];" or value.startswith(reserved) or any(c.isspace() for c in value)


# --- STAR: RELION and crYOLO's CBOX ---------------------------------------------------


def _read_star_blocks(path: Path) -> dict[str, object]:

    read_text(path)  # empty / binary files get our message, not the parser's
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise HydraPickerError(f"{path}: not a readable STAR file ({one_line(exc)})") from exc
    if not blocks:
        raise HydraPickerError(f"{path}: no data_ block in STAR file")
    return blocks


def _as_frame(path: Path, block: str, data: object):

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

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = raw.astype(str).str.strip().str.lower()
    unparsed = np.isnan(values) & ~raw.isna().to_numpy() & ~text.isin(["nan", "<na>", "none"]).to_numpy()
    if unparsed.any():
        i = int(np.flatnonzero(unparsed)[0])
        raise HydraPickerError(f"{path}: data_{block} row {i + 1}: _{column} is not a number ({raw.iloc[i]!r})")
    return values


_RELION_SCORES = ("rlnAutopickFigureOfMerit", "rlnParticleScore")


def read_star(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
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
        names = np.array(NameCheck(path, "_rlnMicrographName").names(frame["rlnMicrographName"]), dtype=object)
    else:
        names = np.full(len(x), micrograph if micrograph is not None else file_key(path), dtype=object)
    rows = np.arange(1, len(x) + 1)
    out = {}
    groups = dict.fromkeys(names.tolist()) or {micrograph if micrograph is not None else file_key(path): None}
    if "rlnMicrographName" in frame.columns and not len(x):
        groups = {}
    for name in groups:
        if not name:
            i = int(np.flatnonzero(names == name)[0])
            raise HydraPickerError(f"{path}: data_{block} row {i + 1}: empty _rlnMicrographName")
        mask = names == name
        size = box_size
        if size is None and sizes is not None and mask.any():
            size = one_box_size(path, sizes[mask], rows[mask])
        out[name] = finish(path, name, x[mask], y[mask], score[mask], size, shape, invert_y, rows[mask])
    return out


def _has_columns(data: object, *columns: str) -> bool:

    keys = data.columns if isinstance(data, pd.DataFrame) else (data.keys() if isinstance(data, dict) else ())
    return all(c in keys for c in columns)


def write_star_picks(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
    """One micrograph: RELION's per-micrograph ``data_`` block. Many: ``data_particles`` with names."""

    def frame(p: Picks) -> dict[str, object]:
        y = flip(p.y, p.shape) if invert_y else p.y
        return {"rlnCoordinateX": p.x, "rlnCoordinateY": y, "rlnAutopickFigureOfMerit": p.score}

    if single:
        write_star(path, {"": pd.DataFrame(frame(many[0]))})
        return
    parts = [pd.DataFrame({"rlnMicrographName": f"{p.micrograph}.mrc", **frame(p)}) for p in many]
    table = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(
            {c: [] for c in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit")}
        )
    )
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(object)
    write_star(path, {"particles": table})


#: crYOLO CBOX 1.0 columns, in crYOLO's order (CoordsIO.py); X/Y are the lower-left box corner.
_CBOX_COLUMNS = (
    "CoordinateX",
    "CoordinateY",
    "CoordinateZ",
    "Width",
    "Height",
    "Depth",
    "EstWidth",
    "EstHeight",
    "Confidence",
    "NumBoxes",
    "Angle",
)


def read_cbox(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """crYOLO CBOX: STAR blocks ``global`` and ``cryolo``; centre = corner + size / 2 (cryoloBM cbox2coords)."""
    text = read_text(path)
    name = micrograph if micrograph is not None else file_key(path)
    if "data_" not in text:
        return read_corner_rows(path, text, name, box_size, shape, invert_y, min_fields=5, score_field=4)
    blocks = _read_star_blocks(path)
    if "cryolo" not in blocks:
        raise HydraPickerError(f"{path}: no data_cryolo block (blocks: {', '.join('data_' + b for b in blocks)})")
    frame = _as_frame(path, "cryolo", blocks["cryolo"])
    for column in ("CoordinateX", "CoordinateY", "Width", "Height"):
        if column not in frame.columns:
            raise HydraPickerError(f"{path}: data_cryolo has no _{column} column")
    x0, y0, w, h = (_numbers(path, "cryolo", frame, c) for c in ("CoordinateX", "CoordinateY", "Width", "Height"))
    rows = np.arange(1, len(x0) + 1)
    check_sizes(path, w, rows, "_Width")
    check_sizes(path, h, rows, "_Height")
    score = _numbers(path, "cryolo", frame, "Confidence") if "Confidence" in frame.columns else np.ones_like(x0)
    size = box_size if box_size is not None or not len(w) else one_box_size(path, w, rows)
    return {name: finish(path, name, x0 + w / 2, y0 + h / 2, score, size, shape, invert_y, rows)}


def write_cbox(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:

    p = single_picks(path, many, "CBOX")
    y = flip(p.y, p.shape) if invert_y else p.y
    w = float(p.box_size)
    missing = np.full(len(p), np.nan)
    columns = {
        "CoordinateX": p.x - w / 2,
        "CoordinateY": y - w / 2,
        "CoordinateZ": missing,
        "Width": np.full(len(p), w),
        "Height": np.full(len(p), w),
        "Depth": missing,
        "EstWidth": np.full(len(p), w),
        "EstHeight": np.full(len(p), w),
        "Confidence": p.score,
        "NumBoxes": missing,
        "Angle": missing,
    }
    blocks = {
        "global": {"cbox_format_version": "1.0"},
        "cryolo": pd.DataFrame(columns)[list(_CBOX_COLUMNS)],
        "cryolo_include": pd.DataFrame({"slice_index": np.zeros(0, dtype=int)}),
    }
    write_star(path, blocks)
