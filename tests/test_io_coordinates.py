"""Coordinate files: every format read and written, peers' conventions pinned, bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, read_picks, write_picks

ASSETS = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets" / "real"


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
