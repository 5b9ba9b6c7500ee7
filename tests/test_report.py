"""The visual report: a self-contained page built from a pick folder, checked in headless Chromium.

The browser test drives Debian's chromium through chromedriver (Selenium, no driver download): the
page loads without console errors, and moving the threshold slider changes the counts shown and the
boxes drawn, to the numbers counted here from the CSV files.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _synthetic import gaussian_spots

from hydrapicker.cli import main as cli_main
from hydrapicker.cli._common import write_run_record
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Picks, write_mrc, write_picks
from hydrapicker.report import read_run_picks, write_report

# name: (shape, spots as (x, y)); scores fall from 0.95 along each micrograph's spots
_MICS = {
    "mic_a": ((120, 160), [(20, 30), (60, 90), (130, 40), (100, 100), (40, 70)]),
    "mic_b": ((100, 100), [(50, 50), (20, 80)]),
}


def _scores(n: int, offset: float) -> np.ndarray:
    return np.round(np.linspace(0.95, 0.03, n) - offset, 4)


def _picks_dir(tmp_path: Path, *, candidates: bool = True, record: bool = True, threshold: float = 0.5) -> Path:
    """A pick folder as `hydrapicker pick` leaves it: csv/ at the threshold, candidates/ with every score."""
    out = tmp_path / "picks"
    paths = []
    for k, (name, (shape, spots)) in enumerate(_MICS.items()):
        path = tmp_path / "mics" / f"{name}.mrc"
        write_mrc(path, gaussian_spots(shape, np.array(spots, float), 2.0, noise=0.05, seed=k), pixel_size=2.0)
        paths.append(str(path))
        xy = np.array(spots, float)
        every = Picks(name, xy[:, 0], xy[:, 1], _scores(len(xy), 0.01 * k), box_size=9.0, shape=shape)
        write_picks(out / "csv" / f"{name}.csv", every.above(threshold), "csv")
        if candidates:
            write_picks(out / "candidates" / f"{name}.csv", every, "csv")
            (out / "candidates" / f"{name}.json").write_text(
                json.dumps({"micrograph": name, "box_size": 9.0, "shape": list(shape)})
            )
    if record:
        write_run_record(out, argparse.Namespace(verb="pick", micrographs=paths, threshold=threshold, diameter_px=9.0))
    return out


def _page_data(page: str) -> list[dict]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_page_is_one_file_that_loads_nothing_from_outside(tmp_path):
    page = write_report(_picks_dir(tmp_path)).read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", page)  # every src/href is a data: URI
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert [e["src"].startswith("data:image/png;base64,") for e in _page_data(page)] == [True, True]


def test_every_candidate_is_on_the_page_so_the_slider_can_go_below_the_runs_threshold(tmp_path):
    data = {e["name"]: e for e in _page_data(write_report(_picks_dir(tmp_path)).read_text())}
    for k, (name, (_, spots)) in enumerate(_MICS.items()):
        assert data[name]["s"] == pytest.approx(_scores(len(spots), 0.01 * k).tolist())
        np.testing.assert_allclose(np.column_stack([data[name]["x"], data[name]["y"]]), spots)
        assert data[name]["box"] == 9.0


def test_micrographs_past_the_thumbnails_carry_only_their_counts_at_every_slider_step(tmp_path):
    out = _picks_dir(tmp_path)
    data = {e["name"]: e for e in _page_data(write_report(out, thumbnails=1).read_text())}
    assert data["mic_a"]["src"] and "s" in data["mic_a"]
    assert data["mic_b"]["src"] is None and not {"x", "y", "s"} & set(data["mic_b"])
    scores = _scores(len(_MICS["mic_b"][1]), 0.01)
    steps = np.round(0.01 + 0.001 * np.arange(991), 6)  # the slider's positions, 0.01 to 1
    assert data["mic_b"]["counts"] == [int(np.sum(scores >= t)) for t in steps]


def test_without_candidates_the_picks_at_the_runs_threshold_are_shown(tmp_path):
    runs, record = read_run_picks(_picks_dir(tmp_path, candidates=False))
    assert record.threshold == 0.5
    for run, (k, (_name, (_, spots))) in zip(runs, enumerate(_MICS.items())):
        expected = _scores(len(spots), 0.01 * k)
        assert run.picks.score.tolist() == pytest.approx(expected[expected >= 0.5].tolist())
        assert run.source.parent.name == "csv"


def test_thumbnail_is_the_micrograph_reduced_by_a_whole_factor_with_its_spots_in_place(tmp_path):
    from PIL import Image

    data = {e["name"]: e for e in _page_data(write_report(_picks_dir(tmp_path), thumbnail_size=64).read_text())}
    for name, (shape, spots) in _MICS.items():
        factor = data[name]["factor"]
        assert factor == -(-max(shape) // 64)
        thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data[name]["src"].split(",", 1)[1]))), float)
        assert thumb.shape == (shape[0] // factor, shape[1] // factor)
        for x, y in spots:  # a spot is brighter than the thumbnail's median where it lands
            u, v = int((x + 0.5) / factor - 0.5), int((y + 0.5) / factor - 0.5)
            if v < thumb.shape[0] and u < thumb.shape[1]:
                assert thumb[v, u] > np.median(thumb) + 40


def test_micrographs_given_explicitly_replace_the_run_record(tmp_path):
    out = _picks_dir(tmp_path, record=False)
    with pytest.raises(HydraPickerError, match="--micrographs"):
        write_report(out)
    runs, _ = read_run_picks(out, micrographs=[tmp_path / "mics" / "mic_a.mrc"])
    assert [r.path is not None for r in runs] == [True, False]
    page = write_report(out, micrographs=[tmp_path / "mics"]).read_text()
    assert all(e["src"] for e in _page_data(page))


def test_cli_writes_the_page_into_the_picks_folder_and_refuses_a_folder_without_picks(tmp_path, capsys):
    out = _picks_dir(tmp_path)
    assert cli_main(["report", str(out)]) == 0
    assert (
        '<input type="range" id="threshold" min="0.01" max="1" step="0.001" value="0.5">'
        in (out / "report.html").read_text()
    )
    assert cli_main(["report", str(out), "--threshold", "0.3", "--out", str(tmp_path / "r.html")]) == 0
    assert 'value="0.3">' in (tmp_path / "r.html").read_text()  # the slider starts where asked
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["report", str(empty)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no picks" in err[0]


# --- in a real browser ------------------------------------------------------------------------------

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _expected_counts(out: Path, t: float) -> dict[str, int]:
    counts = {}
    for path in sorted((out / "candidates").glob("*.csv")):
        scores = np.loadtxt(path, delimiter=",", skiprows=1, usecols=3, ndmin=1)
        counts[path.stem] = int(np.sum(scores >= t))
    return counts


def _green_pixels(driver, name: str) -> int:
    return driver.execute_script(
        """const c = document.querySelector(`canvas[data-name="${arguments[0]}"]`);
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0 && d[i + 1] === 255 && d[i + 2] === 0) n++;
        return n;""",
        name,
    )


def test_page_in_chromium_loads_cleanly_and_the_slider_changes_the_counts_and_the_boxes(browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    out = _picks_dir(tmp_path, threshold=0.5)
    page = write_report(out)
    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script('return [...document.querySelectorAll("canvas.micrograph")].every(c => c.width > 0)')
    )

    def shown() -> tuple[int, dict[str, int]]:
        total = int(browser.find_element("id", "total-count").text)
        cells = browser.find_elements("css selector", "td.count")
        return total, {c.get_attribute("data-name"): int(c.text) for c in cells}

    expected = _expected_counts(out, 0.5)
    assert shown() == (sum(expected.values()), expected)
    green_before = _green_pixels(browser, "mic_a")
    assert green_before > 0

    # a threshold half-way between two scores, so rounding cannot decide a count
    lower = 0.2
    browser.execute_script(
        'const s = document.getElementById("threshold"); s.value = arguments[0]; s.dispatchEvent(new Event("input"));',
        lower,
    )
    expected_lower = _expected_counts(out, lower)
    assert sum(expected_lower.values()) > sum(expected.values())
    assert shown() == (sum(expected_lower.values()), expected_lower)
    assert _green_pixels(browser, "mic_a") > green_before  # more boxes drawn
    assert browser.find_element("id", "threshold-value").text == "0.200"

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
