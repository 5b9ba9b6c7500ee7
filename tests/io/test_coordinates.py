"""Coordinate files: every format read and written, peers' conventions pinned, bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_picks, write_picks

ASSETS = Path(__file__).resolve().parents[2] / "src" / "hydrapicker" / "assets" / "real"


def test_csv_round_trips_many_micrographs(tmp_path):
    a = Picks("mic_a", [1.5, 20.25], [3.0, 40.125], [0.9, -2.5])
    b = Picks("mic_b", [7.0], [8.0], [0.1])
    write_picks(tmp_path / "p.csv", [a, b])
    back = read_picks(tmp_path / "p.csv")
    assert sorted(back) == ["mic_a", "mic_b"]
    for p in (a, b):
        np.testing.assert_allclose(back[p.micrograph].x, p.x)
        np.testing.assert_allclose(back[p.micrograph].y, p.y)
        np.testing.assert_allclose(back[p.micrograph].score, p.score)


def test_bundled_label_csv_is_keyed_by_file_stem_with_diameter_as_box_size():
    path = next((ASSETS / "empiar10017_bgal_bin4").glob("*.csv"))
    picks = read_picks(path, shape=(1024, 1024))
    assert list(picks) == [path.stem]
    rows = path.read_text().strip().splitlines()[1:]
    assert len(picks[path.stem]) == len(rows)
    assert picks[path.stem].box_size == float(rows[0].split(",")[2])
    np.testing.assert_array_equal(picks[path.stem].score, 1.0)


def test_empty_csv_is_refused_naming_the_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(HydraPickerError, match="e.csv: empty"):
        read_picks(tmp_path / "e.csv")


# --- helpers --------------------------------------------------------------------------

import tempfile  # noqa: E402

import starfile  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hydrapicker.io.coordinates import FORMATS, guess_format  # noqa: E402

MULTI = ("csv", "topaz", "star", "cs")  # formats holding many micrographs
SUFFIX = {"csv": ".csv", "topaz": ".txt", "star": ".star", "cs": ".cs", "box": ".box", "cbox": ".cbox"}
SHAPE = (300, 400)  # rows, cols


def _assert_same(got: Picks, want: Picks, *, atol: float = 1e-4, scores: bool = True) -> None:
    np.testing.assert_allclose(got.x, want.x, atol=atol, rtol=0)
    np.testing.assert_allclose(got.y, want.y, atol=atol, rtol=0)
    if scores:
        np.testing.assert_allclose(got.score, want.score, rtol=1e-6 if atol > 1e-4 else 1e-9, atol=1e-7)


def _tolerance(fmt: str) -> float:
    # .cs stores float32 fractions: ~6e-8 relative of the micrograph edge
    return 1e-3 if fmt == "cs" else 1e-4


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", MULTI)
def test_many_micrographs_round_trip(tmp_path, fmt):
    a = Picks("mic_a", [10.5, 20.25, 399.0], [30.0, 40.125, 0.0], [0.9, -2.5, 7.0], shape=SHAPE)
    b = Picks("mic_b", [7.0], [8.0], [0.1], shape=SHAPE)
    path = tmp_path / f"p{SUFFIX[fmt]}"
    write_picks(path, [a, b])
    back = read_picks(path)
    assert list(back) == ["mic_a", "mic_b"]
    for p in (a, b):
        _assert_same(back[p.micrograph], p, atol=_tolerance(fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_micrograph_round_trips(tmp_path, fmt):
    a = Picks("mic_007", [10.5, 20.25], [30.0, 40.125], [0.9, 0.5], box_size=24, shape=SHAPE)
    path = tmp_path / f"mic_007{SUFFIX[fmt]}"
    write_picks(path, a)
    back = read_picks(path)
    assert list(back) == ["mic_007"]
    _assert_same(back["mic_007"], a, atol=_tolerance(fmt), scores=fmt != "box")
    if fmt in ("box", "cbox"):
        assert back["mic_007"].box_size == 24


@pytest.mark.parametrize("fmt", FORMATS)
def test_micrograph_without_particles_round_trips(tmp_path, fmt):
    # BOX has no header, so its empty file (as crYOLO and EMAN write it) must read as no particles
    path = tmp_path / f"bare{SUFFIX[fmt]}"
    write_picks(path, Picks.empty("bare", 24.0, shape=SHAPE))
    back = read_picks(path, micrograph="bare", box_size=24.0, shape=SHAPE)
    assert list(back) == ["bare"] and len(back["bare"]) == 0


@pytest.mark.parametrize("fmt", ("star", "box", "cbox"))
def test_one_micrograph_files_are_keyed_by_file_stem_or_the_given_name(tmp_path, fmt):
    path = tmp_path / f"mic_7.mrc{SUFFIX[fmt]}"
    write_picks(path, Picks("not_written", [10.5], [30.0], box_size=24))
    assert list(read_picks(path)) == ["mic_7"]
    assert list(read_picks(path, micrograph="other")) == ["other"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_invert_y_round_trips(tmp_path, fmt):
    a = Picks("m", [10.0, 20.0], [30.0, 299.0], [0.9, 0.5], box_size=24, shape=SHAPE)
    path = tmp_path / f"m{SUFFIX[fmt]}"
    write_picks(path, a, invert_y=True)
    back = read_picks(path, shape=SHAPE, invert_y=True)["m"]
    _assert_same(back, a, atol=_tolerance(fmt), scores=fmt != "box")
    flipped = read_picks(path, shape=SHAPE)["m"]
    assert not np.allclose(flipped.y, a.y)


def test_guess_format_from_suffix():
    assert [guess_format(f"a{s}") for s in (".star", ".box", ".cbox", ".txt", ".tsv", ".cs", ".csv")] == [
        "star",
        "box",
        "cbox",
        "topaz",
        "topaz",
        "cs",
        "csv",
    ]
    with pytest.raises(HydraPickerError, match="a.json"):
        guess_format("a.json")


def test_multi_micrograph_file_read_for_one_micrograph_keeps_only_it(tmp_path):
    write_picks(tmp_path / "p.csv", [Picks("a", [1], [2]), Picks("b", [3], [4])])
    assert list(read_picks(tmp_path / "p.csv", micrograph="b")) == ["b"]
    assert len(read_picks(tmp_path / "p.csv", micrograph="c")["c"]) == 0


def test_single_micrograph_formats_refuse_many_and_need_box_size(tmp_path):
    with pytest.raises(HydraPickerError, match="one micrograph"):
        write_picks(tmp_path / "x.box", [Picks("a", [1], [2], box_size=4), Picks("b", [1], [2], box_size=4)])
    with pytest.raises(HydraPickerError, match="box size"):
        write_picks(tmp_path / "x.cbox", Picks("a", [1], [2]))
    with pytest.raises(HydraPickerError, match="shape"):
        write_picks(tmp_path / "x.cs", Picks("a", [1], [2]))
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- the peers' conventions, pinned ---------------------------------------------------


def test_topaz_tsv_columns_and_no_flip(tmp_path):
    """Topaz writes ``image_name\\tx_coord\\ty_coord\\tscore`` (tbepler/topaz topaz/commands/extract.py,
    the header of the extracted-particles table), with x_coord = column and y_coord = row of the
    image as read: NMS gives ``x = i % width``, ``y = i // width`` (topaz/algorithms.py), no flip.
    """
    path = tmp_path / "picks.txt"
    path.write_text("image_name\tx_coord\ty_coord\tscore\nmic1\t120\t34\t-1.5\nmic2\t7\t9\t3.25\n")
    picks = read_picks(path)
    assert (picks["mic1"].x.tolist(), picks["mic1"].y.tolist(), picks["mic1"].score.tolist()) == ([120], [34], [-1.5])
    write_picks(tmp_path / "out.txt", list(picks.values()))
    assert (tmp_path / "out.txt").read_text().splitlines()[0] == "image_name\tx_coord\ty_coord\tscore"


def test_box_is_lower_left_corner_and_flip_follows_topaz(tmp_path):
    """EMAN/crYOLO BOX rows are ``x_lo y_lo w h``, tab separated, the lower-left corner: Topaz
    (tbepler/topaz topaz/utils/conversions.py ``coordinates_to_boxes``) writes centre - box//2 and
    reads ``x_lo + width//2``; with ``invert_y`` its centre row is ``(shape[0]-1-y_lo) - height//2``
    (``boxes_to_coordinates``). crYOLO's CoordsIO documents "box.x / box.y = Lower left corner".
    """
    path = tmp_path / "mic.box"
    path.write_text("90\t40\t20\t20\n")
    picks = read_picks(path)["mic"]
    assert (picks.x[0], picks.y[0], picks.box_size) == (100, 50, 20)
    flipped = read_picks(path, shape=(200, 300), invert_y=True)["mic"]
    assert flipped.y[0] == (200 - 1 - 40) - 20 // 2
    write_picks(tmp_path / "out.box", Picks("mic", [100], [50], box_size=20, shape=(200, 300)))
    assert (tmp_path / "out.box").read_text() == "90\t40\t20\t20\n"
    write_picks(tmp_path / "flip.box", Picks("mic", [100], [50], box_size=20, shape=(200, 300)), invert_y=True)
    assert (tmp_path / "flip.box").read_text() == f"90\t{200 - 1 - 50 - 20 // 2}\t20\t20\n"


CRYOLO_CBOX = """
data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
4472.5 3834.25 <NA> 200.0 200.0 <NA> 208.0 203.0 0.145 <NA> <NA>
2.5 1544.75 <NA> 200.0 200.0 <NA> 188.0 205.0 0.208 <NA> <NA>

data_cryolo_include

loop_
_slice_index #1
"""


def test_cbox_corner_columns_and_confidence(tmp_path):
    """crYOLO CBOX 1.0 (as crYOLO writes it: blocks ``global``, ``cryolo``, ``cryolo_include``,
    ``<NA>`` for unused columns) holds the lower-left corner: cryoloBM's cbox2coords computes the
    centre as ``box.x + box.w/2`` (cryoloBM_tools/cbox2coords.py ``generate_coords_array``).
    """
    path = tmp_path / "FoilHole_1.cbox"
    path.write_text(CRYOLO_CBOX)
    picks = read_picks(path)["FoilHole_1"]
    np.testing.assert_allclose(picks.x, [4472.5 + 100, 2.5 + 100])
    np.testing.assert_allclose(picks.y, [3834.25 + 100, 1544.75 + 100])
    np.testing.assert_allclose(picks.score, [0.145, 0.208])
    assert picks.box_size == 200
    write_picks(tmp_path / "out.cbox", picks)
    blocks = starfile.read(tmp_path / "out.cbox", always_dict=True)
    assert str(blocks["global"]["cbox_format_version"]) in ("1.0", "1")
    assert list(blocks["cryolo"].columns) == [
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
    ]
    np.testing.assert_allclose(blocks["cryolo"]["CoordinateX"], [4472.5, 2.5])


def test_old_whitespace_cbox_is_read(tmp_path):
    """The pre-1.0 CBOX: whitespace-separated ``x y w h conf est_w est_h`` (crYOLO CoordsIO)."""
    path = tmp_path / "old.cbox"
    path.write_text("10 20 50 50 0.75 48 49\n")
    picks = read_picks(path)["old"]
    assert (picks.x[0], picks.y[0], picks.score[0], picks.box_size) == (35, 45, 0.75, 50)


RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
opticsGroup1 1 1.05

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnAutopickFigureOfMerit #3
_rlnMicrographName #4
_rlnOpticsGroup #5
1024.0 512.5 0.8 MotionCorr/job002/Movies/mic_001.mrc 1
16.0 30.0 1.5 MotionCorr/job002/Movies/mic_002.mrc 1
"""


def test_relion_star_centres_names_and_optics_block(tmp_path):
    """RELION: ``_rlnCoordinateX/Y`` are centres in pixels, x = column and y = row in numpy/array
    order (asarnow/pyem pyem/metadata/cryosparc2.py, comments in ``cryosparc_2_cs_particle_locations``;
    Topaz's ``coordinates_to_star`` copies x_coord/y_coord unchanged, topaz/utils/conversions.py).
    RELION 3.1+/5 files put the table in ``data_particles`` after ``data_optics``;
    ``_rlnMicrographName`` is a path whose stem names the micrograph.
    """
    path = tmp_path / "particles.star"
    path.write_text(RELION31)
    picks = read_picks(path)
    assert list(picks) == ["mic_001", "mic_002"]
    assert (picks["mic_001"].x[0], picks["mic_001"].y[0], picks["mic_001"].score[0]) == (1024.0, 512.5, 0.8)


def test_relion_per_micrograph_coordinate_file(tmp_path):
    """RELION's per-micrograph coordinate files (``<mic>_autopick.star``): a ``data_`` block, no names."""
    path = tmp_path / "mic_9.star"
    path.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n12.0 13.0\n14.0 15.0\n")
    picks = read_picks(path)["mic_9"]
    assert (picks.x.tolist(), picks.y.tolist(), picks.score.tolist()) == ([12, 14], [13, 15], [1, 1])
    write_picks(tmp_path / "one.star", picks)
    assert list(starfile.read(tmp_path / "one.star", always_dict=True)) == [""]


def test_relion_coordinate_file_list_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "autopick.star"
    path.write_text(
        "data_coordinate_files\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographCoordinates #2\na.mrc a.star\n"
    )
    with pytest.raises(HydraPickerError, match="autopick.star: .*coordinate files"):
        read_picks(path)


def _cs_table(xf, yf, shape, names, score=None):
    dtype = [
        ("location/micrograph_path", "S40"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
    ]
    if score is not None:
        dtype.append(("pick_stats/ncc_score", "<f4"))
    table = np.zeros(len(xf), dtype=dtype)
    table["location/micrograph_path"] = names
    table["location/micrograph_shape"] = shape
    table["location/center_x_frac"] = xf
    table["location/center_y_frac"] = yf
    if score is not None:
        table["pick_stats/ncc_score"] = score
    return table


def test_cryosparc_fractions_times_shape_reversed_and_optional_y_inversion(tmp_path):
    """cryoSPARC stores ``location/center_{x,y}_frac`` and ``location/micrograph_shape`` = [ny, nx];
    pixels are the fractions times the shape reversed, and the optional Y inversion is
    ``1 - y_frac`` (asarnow/pyem pyem/metadata/cryosparc2.py ``cryosparc_2_cs_particle_locations``:
    "'location/micrograph_shape' is [y, x]", ``shape[:, ::-1]``, ``1 - COORDY``).
    """
    path = tmp_path / "particles.cs"
    with open(path, "wb") as handle:
        np.save(handle, _cs_table([0.25], [0.125], (100, 200), [b"J3/motioncorrected/mic_5.mrc"]))
    picks = read_picks(path)["mic_5"]
    assert (picks.x[0], picks.y[0], picks.shape) == (0.25 * 200, 0.125 * 100, (100, 200))
    assert read_picks(path, invert_y=True)["mic_5"].y[0] == (1 - 0.125) * 100


def test_bundled_t20s_labels_have_no_diameter_and_fit_their_png():
    path = next((ASSETS / "empiar10025_t20s_1mic").glob("*.csv"))
    from hydrapicker.io import read_micrograph

    shape = read_micrograph(path.with_suffix(".png")).shape
    picks = read_picks(path, shape=shape)[path.stem]
    assert picks.box_size is None and len(picks) == len(path.read_text().strip().splitlines()) - 1


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "box"])
def test_empty_file_is_refused_naming_it(tmp_path, fmt):
    path = tmp_path / f"empty{SUFFIX[fmt]}"
    path.write_bytes(b"")
    with pytest.raises(HydraPickerError, match=f"empty{SUFFIX[fmt]}"):
        read_picks(path)


def test_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(HydraPickerError, match="nope.star: no such"):
        read_picks(tmp_path / "nope.star")


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("csv", "micrograph,x,y,score\na,1,2,3\na,1,2\n", "row 3: 3 fields"),
        ("csv", "micrograph,x,y,score\na,1,zz,3\n", "row 2: y is not a number"),
        ("csv", "micrograph,x,score\na,1,3\n", "no 'y' column"),
        ("csv", "micrograph,x,y,score\na,nan,2,3\n", "row 2: x is nan"),
        ("csv", "x,y,diameter\n1,2,-5\n", "row 2: box size must be a positive"),
        ("topaz", "image_name\tx_coord\ty_coord\tscore\nm\t1\t2\n", "row 2: 3 fields"),
        ("topaz", "image_name\tx_coord\tscore\nm\t1\t2\n", "no 'y_coord' column"),
        ("box", "1\t2\t20\n", "row 1: 3 fields"),
        ("box", "1\t2\t-20\t-20\n", "row 1: width must be a positive"),
        ("box", "1\tnan\t20\t20\n", "row 1: y is nan"),
        ("box", "Micrograph_Name X_Coordinate Y_Coordinate Class\n", "row 1: x is not a number"),
        ("star", "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnOther #2\n1 2\n", "no _rlnCoordinateY"),
        (
            "star",
            "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 abc\n",
            "row 1: _rlnCoordinateY is not a number",
        ),
        ("star", "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 nan\n", "row 1: y is nan"),
        ("star", "data_\n\nloop_\n_rlnAngleRot #1\n1\n", "no block with _rlnCoordinateX"),
        (
            "cbox",
            "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n_Width #3\n_Height #4\n1 2 -3 -3\n",
            "_Width must be",
        ),
        ("cbox", "data_global\n\n_cbox_format_version 1.0\n", "no data_cryolo block"),
    ],
)
def test_malformed_content_gives_one_line_naming_file_and_row_or_field(tmp_path, fmt, text, message):
    path = tmp_path / f"bad{SUFFIX[fmt]}"
    path.write_text(text)
    with pytest.raises(HydraPickerError) as info:
        read_picks(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ("csv", "topaz", "star", "box", "cbox"))
def test_coordinates_outside_a_known_shape_are_refused(tmp_path, fmt):
    path = tmp_path / f"m{SUFFIX[fmt]}"
    write_picks(path, Picks("m", [10, 500], [10, 20], box_size=10))
    with pytest.raises(
        HydraPickerError, match=r"row \d+: particle at \(x=500, y=20\) lies outside micrograph 'm' of 400 x 300"
    ):
        read_picks(path, shape=SHAPE)


def test_cs_fraction_outside_unit_interval_is_refused(tmp_path):
    path = tmp_path / "p.cs"
    with open(path, "wb") as handle:
        np.save(handle, _cs_table([0.5, 1.5], [0.5, 0.5], (100, 100), [b"a.mrc", b"a.mrc"]))
    with pytest.raises(HydraPickerError, match="p.cs: row 2: location/center_x_frac is 1.5"):
        read_picks(path)


def test_negative_box_size_argument_is_refused(tmp_path):
    write_picks(tmp_path / "p.csv", Picks("a", [1], [2]))
    with pytest.raises(HydraPickerError, match="box size"):
        read_picks(tmp_path / "p.csv", box_size=-4)


def test_invert_y_without_shape_is_refused(tmp_path):
    write_picks(tmp_path / "p.csv", Picks("a", [1], [2]))
    with pytest.raises(HydraPickerError, match="invert_y needs the micrograph shape"):
        read_picks(tmp_path / "p.csv", invert_y=True)


# --- properties -----------------------------------------------------------------------

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=12)
_coordinate = st.floats(0, 299, allow_nan=False).map(lambda v: round(v, 3))
_score = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _picks(draw, name=None, min_size=0):
    n = draw(st.integers(min_size, 6))
    return Picks(
        name if name is not None else draw(_names),
        draw(st.lists(_coordinate, min_size=n, max_size=n)),
        draw(st.lists(_coordinate, min_size=n, max_size=n)),
        draw(st.lists(_score, min_size=n, max_size=n)),
        box_size=draw(st.sampled_from([8.0, 24.0, 63.5])),
        shape=SHAPE,
    )


def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hp-coords-"))


_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", MULTI)
@_SETTINGS
@given(data=st.data())
def test_property_any_valid_picks_round_trip_many(fmt, data):
    names = data.draw(st.lists(_names, min_size=1, max_size=3, unique=True))
    many = [data.draw(_picks(name=n, min_size=1)) for n in names]
    path = _tmpdir() / f"p{SUFFIX[fmt]}"
    write_picks(path, many)
    back = read_picks(path)
    assert sorted(back) == sorted(names)
    for p in many:
        got = back[p.micrograph]
        tol = _tolerance(fmt)
        _assert_same(got, p, atol=tol, scores=False)
        np.testing.assert_allclose(got.score, p.score, rtol=1e-6 if fmt == "cs" else 1e-9, atol=1e-30)


@pytest.mark.parametrize("fmt", ("box", "cbox", "star"))
@_SETTINGS
@given(data=st.data())
def test_property_any_valid_picks_round_trip_one(fmt, data):
    p = data.draw(_picks(name="mic", min_size=1 if fmt == "box" else 0))
    path = _tmpdir() / f"mic{SUFFIX[fmt]}"
    write_picks(path, p)
    got = read_picks(path, shape=SHAPE)["mic"]
    _assert_same(got, p, scores=False)
    if fmt != "box":
        np.testing.assert_allclose(got.score, p.score, rtol=1e-9, atol=1e-30)
    if fmt == "cbox" and len(p):
        assert got.box_size == p.box_size
    if fmt == "box" and len(p):  # whole pixels, the nearest
        assert got.box_size == max(1, np.floor(p.box_size + 0.5))


_VOCABULARY = {
    "csv": ["micrograph", "x", "y", "score", "diameter", "z"],
    "topaz": ["image_name", "x_coord", "y_coord", "score", "other"],
    "star": ["_rlnCoordinateX", "_rlnCoordinateY", "_rlnMicrographName", "_rlnAutopickFigureOfMerit", "_rlnDiameter"],
    "cbox": ["_CoordinateX", "_CoordinateY", "_Width", "_Height", "_Confidence"],
    "box": [],
}
_CELLS = st.sampled_from(
    ["1", "-2.5", "0", "nan", "inf", "-inf", "", "abc", "1e400", "<NA>", "a.mrc", "3", "299", "1e-300"]
)


@st.composite
def _almost_valid_text(draw, fmt):
    """Text shaped like the format (its header words and number-like cells) but otherwise arbitrary."""
    words = _VOCABULARY[fmt]
    n_cols = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(_CELLS, min_size=n_cols - 1, max_size=n_cols + 1), max_size=4))
    if fmt in ("csv", "topaz"):
        sep = "," if fmt == "csv" else "\t"
        header = draw(st.lists(st.sampled_from(words), min_size=n_cols, max_size=n_cols))
        return "\n".join([sep.join(header)] + [sep.join(r) for r in rows]) + "\n"
    if fmt == "box":
        return "\n".join("\t".join(r) for r in rows) + "\n"
    block = draw(st.sampled_from(["data_", "data_particles", "data_cryolo", "data_optics"]))
    labels = draw(st.lists(st.sampled_from(words), min_size=n_cols, max_size=n_cols, unique=True))
    loop = "\n".join(f"{label} #{i + 1}" for i, label in enumerate(labels))
    body = "\n".join(" ".join(c if c else "x" for c in r) for r in rows)
    return f"{block}\n\nloop_\n{loop}\n{body}\n"


@pytest.mark.parametrize("fmt", ("csv", "topaz", "star", "cbox", "box"))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_garbage_raises_only_our_error(fmt, data):
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        content = data.draw(st.binary(max_size=200))
    elif choice == 1:
        content = data.draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    else:
        content = data.draw(_almost_valid_text(fmt)).encode()
    path = _tmpdir() / f"g{SUFFIX[fmt]}"
    path.write_bytes(content)
    shape = data.draw(st.sampled_from([None, SHAPE]))
    try:
        result = read_picks(path, shape=shape)
    except HydraPickerError as exc:
        assert "\n" not in str(exc)
        return
    for picks in result.values():
        assert np.isfinite(picks.x).all() and np.isfinite(picks.y).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_cs_garbage_raises_only_our_error(data):
    path = _tmpdir() / "g.cs"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(st.binary(max_size=300)))
    else:
        fields = data.draw(
            st.lists(
                st.sampled_from(
                    [
                        ("location/center_x_frac", "<f4"),
                        ("location/center_y_frac", "<f8"),
                        ("location/center_x_frac", "S4"),
                        ("location/micrograph_shape", "<u4", (2,)),
                        ("location/micrograph_shape", "<i4"),
                        ("location/micrograph_path", "S8"),
                        ("pick_stats/ncc_score", "<f4"),
                        ("location/center_y_frac", "<f4", (3,)),
                        ("uid", "<u8"),
                    ]
                ),
                max_size=6,
                unique_by=lambda f: f[0],
            )
        )
        n = data.draw(st.integers(0, 4))
        table = np.zeros(n, dtype=fields) if fields else np.zeros(n)
        if fields and n:
            raw = data.draw(st.binary(min_size=table.nbytes, max_size=table.nbytes))
            table = np.frombuffer(raw, dtype=table.dtype).copy()
        with open(path, "wb") as handle:
            np.save(handle, table)
    try:
        result = read_picks(path)
    except HydraPickerError as exc:
        assert "\n" not in str(exc)
        return
    for picks in result.values():
        assert np.isfinite(picks.x).all() and np.isfinite(picks.y).all()


# --- issue 22: a BOM, ambiguous micrograph names, RELION's own file names -------------------


def test_a_csv_saved_with_a_byte_order_mark_keeps_its_micrograph_column(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("micrograph,x,y\nm0,10,20\nm1,30,40\n".encode("utf-8-sig"))
    picks = read_picks(path)
    assert sorted(picks) == ["m0", "m1"]
    np.testing.assert_allclose(picks["m1"].x, [30.0])


@pytest.mark.parametrize(
    "fmt, text",
    [
        (
            "star",
            "data_\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\na/s0.mrc 10 20\nb/s0.mrc 30 40\n",
        ),
        ("csv", "micrograph,x,y\na/s0.mrc,10,20\nb/s0.mrc,30,40\n"),
    ],
)
def test_two_micrographs_of_one_name_in_different_folders_are_refused_not_merged(tmp_path, fmt, text):
    path = tmp_path / f"all.{fmt}"
    path.write_text(text)
    with pytest.raises(
        HydraPickerError, match=r"all\.\w+: .*'a/s0\.mrc' \(row \d\) and 'b/s0\.mrc' \(row \d\) have the same name 's0'"
    ):
        read_picks(path)


def test_one_micrograph_written_with_and_without_its_folder_or_suffix_is_one_micrograph(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("micrograph,x,y\nMicrographs/s0.mrc,10,20\n./Micrographs/s0.mrc,30,40\nt1,1,2\nt1.mrc,3,4\n")
    picks = read_picks(path)
    assert {k: len(v) for k, v in picks.items()} == {"s0": 2, "t1": 2}


@pytest.mark.parametrize("suffix", ["_autopick", "_manualpick"])
def test_relion_pick_star_files_are_named_after_their_micrograph(tmp_path, suffix):
    path = tmp_path / f"FoilHole_1_Data{suffix}.star"
    path.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n10 20\n")
    assert list(read_picks(path)) == ["FoilHole_1_Data"]


def test_box_sizes_are_whole_pixels_and_the_centre_stays_exact(tmp_path):
    """EMAN and crYOLO expect whole-pixel BOX sizes (it used to write `71.0067 71.0067`): the nearest whole edge,
    the corner written so that corner + edge/2 is the centre as picked; CBOX keeps the size as it is."""
    picks = Picks("mic", [100.25, 37.5], [50.0, 61.75], [0.9, 0.8], box_size=71.0067, shape=(200, 300))
    write_picks(tmp_path / "mic.box", picks)
    rows = [line.split("\t") for line in (tmp_path / "mic.box").read_text().splitlines()]
    assert [row[2:] for row in rows] == [["71", "71"], ["71", "71"]]
    back = read_picks(tmp_path / "mic.box")["mic"]
    np.testing.assert_allclose(back.x, picks.x, atol=1e-4)
    np.testing.assert_allclose(back.y, picks.y, atol=1e-4)
    assert back.box_size == 71
    write_picks(tmp_path / "even.box", Picks("mic", [100.0], [50.0], box_size=25.6))
    assert (tmp_path / "even.box").read_text() == "87\t37\t26\t26\n"
    write_picks(tmp_path / "mic.cbox", picks)
    assert read_picks(tmp_path / "mic.cbox")["mic"].box_size == pytest.approx(71.0067, abs=1e-3)
