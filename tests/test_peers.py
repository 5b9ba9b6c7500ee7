"""Baseline pickers in benchmarks/peers: the DoG blob picker, Topaz's coordinate handling, the shared CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from _synthetic import gaussian_spots
from conftest import REAL_BGAL

from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


def _load(name: str):
    """A peer script as a module (benchmarks/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PEERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dog_pick = _load("dog_pick")
topaz_pick = _load("topaz_pick")


def _grid_centres(shape: tuple[int, int], spacing: int, seed: int = 0) -> np.ndarray:
    """Jittered grid of (x, y) centres at least ``spacing`` - 4 px apart, away from the edges."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[spacing : shape[0] - spacing // 2 : spacing, spacing : shape[1] - spacing // 2 : spacing]
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    return xy + rng.uniform(-2, 2, xy.shape)


def _ap(x: np.ndarray, y: np.ndarray, score: np.ndarray, truth_xy: np.ndarray, box: float) -> float:
    picks = {"m": Picks("m", x, y, score)}
    truth = {"m": Picks("m", truth_xy[:, 0], truth_xy[:, 1])}
    return evaluate(picks, truth, box).ap


def test_dog_finds_dark_particles_on_noise():
    diameter = 16.0
    xy = _grid_centres((240, 320), 36)
    image = gaussian_spots((240, 320), xy, sigma=diameter / 4, contrast=-1.0, noise=0.3, seed=1)
    x, y, score = dog_pick.pick_dog(image, diameter)
    assert np.all(np.diff(score) <= 0)
    assert _ap(x, y, score, xy, diameter) > 0.9


def test_dog_polarity_light_does_not_find_dark_particles():
    diameter = 16.0
    xy = _grid_centres((240, 320), 36)
    image = gaussian_spots((240, 320), xy, sigma=diameter / 4, contrast=-1.0, noise=0.3, seed=2)
    dark = _ap(*dog_pick.pick_dog(image, diameter, polarity="dark"), xy, diameter)
    light = _ap(*dog_pick.pick_dog(image, diameter, polarity="light"), xy, diameter)
    assert light < 0.5 < dark


def test_dog_threshold_drops_weak_picks_only():
    diameter = 16.0
    xy = _grid_centres((200, 200), 40)
    image = gaussian_spots((200, 200), xy, sigma=4.0, contrast=-1.0, noise=0.3, seed=3)
    _, _, all_scores = dog_pick.pick_dog(image, diameter)
    cut = float(np.median(all_scores))
    _, _, kept = dog_pick.pick_dog(image, diameter, threshold=cut)
    np.testing.assert_array_equal(kept, all_scores[all_scores >= cut])


def test_dog_cli_writes_picks_csv_in_the_stored_frame(tmp_path):
    # One dark particle in a non-square MRC: x must come back as its column, y as its row.
    image = gaussian_spots((120, 200), np.array([[150.0, 30.0]]), sigma=4.0, contrast=-1.0, noise=0.05, seed=4)
    write_mrc(tmp_path / "mic_a.mrc", image, pixel_size=2.0)
    out = tmp_path / "out"
    assert dog_pick.main([str(tmp_path / "mic_a.mrc"), "--out", str(out), "--diameter-A", "32"]) == 0
    picks = read_picks(out / "picks.csv")["mic_a"]
    best = picks.sorted_by_score()
    assert abs(best.x[0] - 150) <= 1 and abs(best.y[0] - 30) <= 1
    assert sorted(p.name for p in out.iterdir()) == ["picks.csv"]


def test_dog_cli_needs_a_pixel_size_for_a_diameter_in_angstrom(tmp_path, capsys):
    image = gaussian_spots((64, 64), np.array([[32.0, 32.0]]), sigma=4.0, contrast=-1.0, noise=0.05)
    write_mrc(tmp_path / "no_size.mrc", image)
    assert dog_pick.main([str(tmp_path / "no_size.mrc"), "--out", str(tmp_path / "o"), "--diameter-A", "100"]) == 1
    assert "no_size.mrc" in capsys.readouterr().err
    assert not (tmp_path / "o" / "picks.csv").exists()


@pytest.mark.parametrize(
    ("pixel_size", "diameter_px", "expected"),
    [(1.0, 150, 8), (2.0, 75, 4), (7.08, 27, 1), (0.66, 227, 12), (12.0, 16, 1), (None, 100, 4)],
)
def test_topaz_scale_brings_the_pixel_size_nearest_8_angstrom(pixel_size, diameter_px, expected):
    # None: a 200 Å particle is assumed, so 100 px means 2 Å/px.
    assert topaz_pick.topaz_scale(pixel_size, diameter_px) == expected


def _fourier_crop(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsampling by cropping the 2-D Fourier transform, as Topaz's `preprocess -s` does."""
    m, n = image.shape[0] // factor, image.shape[1] // factor
    f = np.fft.fftshift(np.fft.fft2(image))
    r0, c0 = image.shape[0] // 2 - m // 2, image.shape[1] // 2 - n // 2
    return np.fft.ifft2(np.fft.ifftshift(f[r0 : r0 + m, c0 : c0 + n])).real


def test_topaz_coordinates_map_back_to_the_original_frame():
    # A spot at (x, y) in a 256 x 192 micrograph, Fourier-downsampled by 4: its peak lands at
    # about (x/4, y/4); mapping that peak back must give (x, y) within one downsampled pixel.
    shape, factor = (192, 256), 4
    x0, y0 = 181.0, 57.0
    small = _fourier_crop(gaussian_spots(shape, np.array([[x0, y0]]), sigma=6.0), factor)
    row, col = np.unravel_index(np.argmax(small), small.shape)
    back = topaz_pick.to_original_frame(Picks("m", [col], [row], [1.0]), shape, small.shape)
    assert abs(back.x[0] - x0) <= factor / 2 + 0.5 and abs(back.y[0] - y0) <= factor / 2 + 0.5
    assert back.shape == shape


def test_topaz_without_its_environment_names_the_setup_script(tmp_path, capsys):
    image = gaussian_spots((64, 64), np.array([[32.0, 32.0]]), sigma=4.0, contrast=-1.0, noise=0.05)
    write_mrc(tmp_path / "m.mrc", image)
    missing = tmp_path / "nowhere" / "python"
    code = topaz_pick.main(
        [str(tmp_path / "m.mrc"), "--out", str(tmp_path / "o"), "--diameter-px", "16", "--topaz-python", str(missing)]
    )
    assert code == 1
    assert "topaz_setup.sh" in capsys.readouterr().err


@pytest.mark.skipif(
    not topaz_pick.DEFAULT_TOPAZ_PYTHON.is_file(), reason="Topaz not installed (benchmarks/peers/topaz_setup.sh)"
)
def test_topaz_picks_real_particles_in_the_stored_frame(tmp_path):
    # A non-square crop of a real β-gal micrograph: Topaz's picks, mapped back, must match the
    # labels far better than the same picks with x and y swapped (a frame error would invert this).
    name = "empiar10017_Falcon_2012_06_12-16_51_03_0_bin4"
    data = read_micrograph(REAL_BGAL / f"{name}.png").data[200:456, 100:484]
    write_mrc(tmp_path / "crop.mrc", data)
    labels = read_picks(REAL_BGAL / f"{name}.csv")[name]
    inside = (labels.y >= 200) & (labels.y < 456) & (labels.x >= 100) & (labels.x < 484)
    truth = {"crop": Picks("crop", labels.x[inside] - 100, labels.y[inside] - 200)}
    out = tmp_path / "out"
    assert (
        topaz_pick.main([str(tmp_path / "crop.mrc"), "--out", str(out), "--diameter-px", "27", "--pixel-size", "7.08"])
        == 0
    )
    picks = read_picks(out / "picks.csv")["crop"]
    assert len(picks) > 0 and picks.x.max() < 384 and picks.y.max() < 256
    swapped = Picks("crop", picks.y, picks.x, picks.score)
    assert evaluate({"crop": picks}, truth, 27).ap > 2 * evaluate({"crop": swapped}, truth, 27).ap
