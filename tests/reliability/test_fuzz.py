"""Fuzzing the readers: whatever the bytes, only HydraPickerError (one line) comes out, or good data.

tests/test_io_coordinates.py already feeds every coordinate reader random bytes, random text and
format-shaped text; here each reader gets *valid* files with bytes flipped, cut short or
overwritten (the damage a copy or a disk does), and the micrograph reader gets random bytes and
valid MRC/TIFF/PNG files with their headers mutated. Fixed budgets (max_examples), no deadline.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc, write_picks

#: Examples per test; HP_FUZZ_EXAMPLES=5000 runs a long campaign with fresh random examples.
_BUDGET = int(os.environ.get("HP_FUZZ_EXAMPLES", "0"))
_FUZZ = settings(
    max_examples=_BUDGET or 120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not _BUDGET,
    database=None,
)
pytestmark = pytest.mark.filterwarnings("ignore:MRC file is .* than expected:RuntimeWarning")

_FOLDER = Path(tempfile.mkdtemp(prefix="hp-fuzz-"))


def _valid_mrc() -> bytes:
    path = _FOLDER / "valid.mrc"
    write_mrc(path, np.random.default_rng(0).normal(size=(12, 10)).astype(np.float32), pixel_size=1.5)
    return path.read_bytes()


def _valid_image(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (np.random.default_rng(1).random((12, 10)) * 255).astype(np.uint8)
    if fmt == "TIFF":
        import tifffile

        tifffile.imwrite(buffer, pixels.astype(np.float32))
    else:
        Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_MICROGRAPHS = {
    ".mrc": _valid_mrc(),
    ".tif": _valid_image("TIFF"),
    ".png": _valid_image("PNG"),
    ".jpg": _valid_image("JPEG"),
}


def _valid_coordinates(fmt: str) -> bytes:
    path = _FOLDER / f"mic{COORDINATE_FORMATS[fmt]}"
    picks = Picks("mic", [10.5, 40.0, 5.25], [20.0, 3.5, 60.0], [0.9, 0.5, 0.1], box_size=16.0, shape=(64, 48))
    write_picks(path, picks, fmt)
    # starfile's first line holds the time: fixed here, so that the derandomized examples are too
    return re.sub(rb"^# Created by the starfile[^\n]*", b"# Created by the starfile Python package", path.read_bytes())


VALID_COORDINATES = {fmt: _valid_coordinates(fmt) for fmt in COORDINATE_FORMATS}


@st.composite
def _damaged(draw, valid: bytes, header: int | None = None) -> bytes:
    """``valid`` with a few bytes flipped or overwritten (within the first ``header`` bytes when
    given), a random 32-bit integer written somewhere, cut short, or a slice repeated."""
    data = bytearray(valid)
    span = min(header or len(data), len(data))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "int32", "cut", "repeat"]))
        if not data:
            break
        i = draw(st.integers(0, max(0, min(span, len(data)) - 1)))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[i] = draw(st.integers(0, 255))
        elif kind == "int32" and i + 4 <= len(data):
            value = draw(
                st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 2, 3, 4, 6, 12, 1 << 20]))
            )
            data[i : i + 4] = struct.pack("<i", value)
        elif kind == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "repeat":
            j = draw(st.integers(i, len(data)))
            data[j:j] = data[i:j]
    return bytes(data)


def _check_micrograph(path: Path) -> None:
    try:
        micrograph = read_micrograph(path)
    except HydraPickerError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return
    data = micrograph.data
    assert data.dtype == np.float32 and data.ndim == 2 and min(data.shape) >= 2
    assert np.isfinite(data).all() and data.max() > data.min()
    assert micrograph.pixel_size is None or (np.isfinite(micrograph.pixel_size) and micrograph.pixel_size > 0)


@_FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(sorted(VALID_MICROGRAPHS)))
def test_random_bytes_as_a_micrograph_give_only_our_error(data, suffix):
    path = _FOLDER / f"random{suffix}"
    path.write_bytes(data)
    _check_micrograph(path)


@pytest.mark.parametrize("suffix", sorted(VALID_MICROGRAPHS))
@_FUZZ
@given(data=st.data())
def test_damaged_micrograph_files_give_only_our_error_or_good_data(suffix, data):
    valid = VALID_MICROGRAPHS[suffix]
    # MRC: most of the damage in the 1024-byte header (sizes, mode, extended header length)
    damaged = data.draw(_damaged(valid, header=1024 if suffix == ".mrc" and data.draw(st.booleans()) else None))
    path = _FOLDER / f"damaged{suffix}"
    path.write_bytes(damaged)
    _check_micrograph(path)


@pytest.mark.parametrize("fmt", sorted(COORDINATE_FORMATS))
@_FUZZ
@given(data=st.data())
def test_damaged_coordinate_files_give_only_our_error_or_finite_picks(fmt, data):
    valid = VALID_COORDINATES[fmt]
    # .cs: numpy's header (dtype, shape) is the first 128 bytes or so; damage it half the time
    damaged = data.draw(_damaged(valid, header=160 if fmt == "cs" and data.draw(st.booleans()) else None))
    path = _FOLDER / f"mic{COORDINATE_FORMATS[fmt]}"
    path.write_bytes(damaged)
    shape = data.draw(st.sampled_from([None, (64, 48)]))
    try:
        result = read_picks(path, fmt, shape=shape)
    except HydraPickerError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return
    for picks in result.values():
        assert np.isfinite(picks.x).all() and np.isfinite(picks.y).all() and not np.isnan(picks.score).any()
        assert picks.box_size is None or picks.box_size > 0
        if shape is not None and fmt != "cs":
            assert ((picks.x >= -0.5) & (picks.x <= 47.5) & (picks.y >= -0.5) & (picks.y <= 63.5)).all()


@pytest.mark.parametrize("suffix, label", [(".star", "_rlnCoordinateY"), (".cbox", "_CoordinateX")])
def test_a_star_table_naming_a_column_twice_gives_our_error(suffix, label, tmp_path):
    # found by the damaged-file fuzzing: pandas then hands back a table where a column was expected
    columns = (
        ["_rlnCoordinateX", "_rlnCoordinateY"]
        if suffix == ".star"
        else ["_CoordinateX", "_CoordinateY", "_Width", "_Height"]
    )
    loop = "\n".join(f"{c} #{i + 1}" for i, c in enumerate([*columns, label]))
    path = tmp_path / f"mic{suffix}"
    path.write_text(
        f"data_{'cryolo' if suffix == '.cbox' else ''}\n\nloop_\n{loop}\n"
        + " ".join(["10"] * (len(columns) + 1))
        + "\n"
    )
    with pytest.raises(HydraPickerError, match=f"column {label} appears twice"):
        read_picks(path)


def test_a_cs_micrograph_path_of_nul_bytes_is_read_like_any_name(tmp_path):
    # found by fuzzing: numpy compared the name '\x00\x00\x00' with itself as unequal, and the reader crashed
    path = tmp_path / "p.cs"
    write_picks(
        path,
        [
            Picks("mic", [10.0], [20.0], [0.5], shape=(64, 48)),
            Picks("a\x00\x00\x00", [5.0], [6.0], [0.4], shape=(64, 48)),
        ],
    )
    raw = path.read_bytes().replace(b"a\x00\x00\x00.mrc", b"\x00\x00\x00\x00.mrc")
    path.write_bytes(raw)
    picks = read_picks(path)
    assert sorted(len(p) for p in picks.values()) == [1, 1] and "mic" in picks
