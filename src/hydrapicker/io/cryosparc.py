"""cryoSPARC ``.cs`` particle files: numpy structured arrays with fractional centres."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hydrapicker.errors import HydraPickerError
from hydrapicker.io.checks import NameCheck, file_key, finish, one_line
from hydrapicker.io.files import atomic_path
from hydrapicker.io.picks import Picks

__all__ = ["read_cs", "write_cs"]


_CS_X, _CS_Y, _CS_SHAPE = "location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"
_CS_PATH, _CS_SCORE = "location/micrograph_path", "pick_stats/ncc_score"


def read_cs(path: Path, *, micrograph, box_size, shape, invert_y) -> dict[str, Picks]:
    """cryoSPARC particles: x = center_x_frac * nx, y = center_y_frac * ny with
    micrograph_shape = [ny, nx] (pyem cryosparc2.py ``cryosparc_2_cs_particle_locations``);
    ``invert_y`` maps y_frac to 1 - y_frac, as pyem's ``inverty``.
    """
    try:
        with open(path, "rb") as handle:
            table = np.load(handle, allow_pickle=False)
    except Exception as exc:  # numpy raises many types on malformed input
        raise HydraPickerError(f"{path}: not a readable cryoSPARC .cs file ({one_line(exc)})") from exc
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
                names = np.array(NameCheck(path, _CS_PATH).names([_text(v) for v in table[_CS_PATH]]), dtype=object)
            else:
                names = np.full(len(table), micrograph if micrograph is not None else file_key(path), dtype=object)
    except (TypeError, ValueError) as exc:
        raise HydraPickerError(f"{path}: malformed cryoSPARC fields ({one_line(exc)})") from exc
    for label, values in ((_CS_X, xf), (_CS_Y, yf), (_CS_SCORE, score)):
        if values.ndim != 1:
            raise HydraPickerError(
                f"{path}: field {label!r} holds arrays of shape {values.shape[1:]}, expected numbers"
            )
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
        picks = finish(path, name, xf[mask] * nx, yf[mask] * ny, score[mask], box_size, None, False, rows[mask])
        picks.shape = (ny, nx)
        out[name] = picks
    return out


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def write_cs(path: Path, many: list[Picks], *, single: bool, invert_y: bool) -> None:
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
