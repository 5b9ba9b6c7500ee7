"""Is the simulator realistic? Simulated vs real micrographs, like with like.

Usage: .venv/bin/python benchmarks/simulation_realism.py [--out docs/figures/sim_vs_real.png] [--n 3]

The real micrographs bundled in src/hydrapicker/assets/real are 8-bit PNGs:
  * EMPIAR-10017 beta-galactosidase: CryoSegNet-denoised, 4x binned to 7.08 Å/px, border stripes;
  * EMPIAR-10025 T20S proteasome: min-max stretched, downscaled 12x (antialiased) to ~7.9 Å/px.
Each is compared with micrographs simulated from beta-galactosidase (5a1a; no T20S model is
available, 5a1a is the closest in size) at the same pixel size and through the matching
rendering (denoise + 2x bin + 8-bit; 2x bin + low-pass + min-max 8-bit). Printed per set:
  * Thon rings: defocus fitted to the background-subtracted radial power spectrum (real: the
    only way to know it; simulated: checked against the defocus drawn), the fit's correlation,
    and the first spectrum minimum against the first zero the fitted defocus predicts; plus a
    raw 1.5 Å/px float simulation where several rings are visible, minima vs predicted zeros;
  * particle contrast: median z-score of the low-passed image at particle centres against the
    background (pixels further than 0.75 diameter from every label);
  * noise statistics of the background: relative std, lag-1/lag-2 autocorrelation, skewness,
    excess kurtosis, share of spectral power above half Nyquist, 8-bit levels used.
Writes a figure: a simulated micrograph next to each real one, and their spectra.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from hydrapicker.io import read_micrograph
from hydrapicker.simulate import SimulationConfig, load_model, particle_diameter, render, simulate_micrograph
from hydrapicker.simulate.config import Rendering
from hydrapicker.simulate.optics import ctf_1d

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "src" / "hydrapicker" / "assets" / "real"
STRUCTURES = ROOT / "data" / "structures"

BGAL_PIXEL = 7.08
T20S_PIXEL = 7.9


# --- measurements ---------------------------------------------------------------------------


def radial_psd(image: np.ndarray, pixel: float, tile: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Tile-averaged, Hann-windowed periodogram, radially averaged: (q in 1/Å, power)."""
    image = image.astype(np.float64)
    window = np.outer(np.hanning(tile), np.hanning(tile))
    rows, cols = image.shape
    border = 24  # skip border stripes and padding
    acc = np.zeros((tile, tile))
    count = 0
    for r in range(border, rows - tile - border + 1, tile // 2):
        for c in range(border, cols - tile - border + 1, tile // 2):
            patch = image[r : r + tile, c : c + tile]
            patch = (patch - patch.mean()) * window
            acc += np.abs(np.fft.fft2(patch)) ** 2
            count += 1
    acc /= max(count, 1)
    f = np.fft.fftfreq(tile)
    radius = np.hypot(f[:, None], f[None, :]) * tile
    index = np.rint(radius).astype(int)
    power = np.bincount(index.ravel(), acc.ravel()) / np.maximum(np.bincount(index.ravel()), 1)
    n = tile // 2
    return np.arange(n) / (tile * pixel), power[:n]


def ring_residual(q: np.ndarray, power: np.ndarray) -> np.ndarray:
    """log power minus a smooth baseline (a wide running mean): the Thon-ring modulation."""
    logp = np.log(power + 1e-12)
    baseline = ndimage.uniform_filter1d(logp, size=max(5, len(q) // 5), mode="nearest")
    return logp - baseline


def fit_defocus(q: np.ndarray, residual: np.ndarray, q_min: float, q_max: float) -> tuple[float, float]:
    """Defocus (Å) whose CTF^2 best correlates with the ring modulation in [q_min, q_max]."""
    band = (q >= q_min) & (q <= q_max)
    best = (0.0, -1.0)
    for defocus in np.arange(3000.0, 80000.0, 50.0):
        model = ctf_1d(q[band], defocus) ** 2
        r = float(np.corrcoef(model, residual[band])[0, 1])
        if r > best[1]:
            best = (float(defocus), r)
    return best


def ctf_zeros(defocus: float, q_max: float, amplitude_contrast: float = 0.07) -> np.ndarray:
    q = np.linspace(1e-4, q_max, 20000)
    value = ctf_1d(q, defocus, amplitude_contrast=amplitude_contrast)
    return q[1:][np.diff(np.sign(value)) != 0]


def spectrum_minima(q: np.ndarray, residual: np.ndarray, q_min: float) -> np.ndarray:
    smooth = ndimage.gaussian_filter1d(residual, 1.0)
    is_min = (smooth[1:-1] < smooth[:-2]) & (smooth[1:-1] < smooth[2:]) & (q[1:-1] > q_min)
    return q[1:-1][is_min]


def background_mask(shape: tuple[int, int], centres: np.ndarray, diameter_px: float, border: int = 24) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    if len(centres):
        seeds = np.zeros(shape, dtype=bool)
        rows = np.clip(np.rint(centres[:, 1]).astype(int), 0, shape[0] - 1)
        cols = np.clip(np.rint(centres[:, 0]).astype(int), 0, shape[1] - 1)
        seeds[rows, cols] = True
        mask = ndimage.distance_transform_edt(~seeds) > 0.75 * diameter_px
    mask[:border] = mask[-border:] = False
    mask[:, :border] = mask[:, -border:] = False
    return mask


def particle_z(image: np.ndarray, centres: np.ndarray, diameter_px: float) -> float:
    """Median z-score of particle centres (disc of D/4) in the low-passed image vs background."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), diameter_px / 8)
    bg = smooth[background_mask(image.shape, centres, diameter_px)]
    disc = ndimage.uniform_filter(smooth, size=max(1, int(diameter_px / 4)))
    inside = (
        (centres[:, 0] > 24)
        & (centres[:, 0] < image.shape[1] - 24)
        & (centres[:, 1] > 24)
        & (centres[:, 1] < image.shape[0] - 24)
    )
    values = disc[np.rint(centres[inside, 1]).astype(int), np.rint(centres[inside, 0]).astype(int)]
    return float(np.median((values - bg.mean()) / bg.std()))


def noise_stats(image: np.ndarray, centres: np.ndarray, diameter_px: float, pixel: float) -> dict[str, float]:
    image = image.astype(np.float64)
    mask = background_mask(image.shape, centres, diameter_px)
    values = image[mask]
    centred = np.where(mask, image - values.mean(), 0.0)
    denom = (centred**2).sum()
    lag1 = float((centred[:, 1:] * centred[:, :-1]).sum() / denom)
    lag2 = float((centred[:, 2:] * centred[:, :-2]).sum() / denom)
    q, power = radial_psd(image, pixel)
    nyquist = 0.5 / pixel
    high = float(power[q > nyquist / 2].sum() / power[1:].sum())
    return {
        # Share of the background's variance at particle scale (affine-invariant, unlike std/mean
        # of 8-bit values whose stretch differs from file to file).
        "bg_texture": float(ndimage.gaussian_filter(image, diameter_px / 8)[mask].std() / values.std()),
        "lag1": lag1,
        "lag2": lag2,
        "skew": float(stats.skew(values)),
        "kurt": float(stats.kurtosis(values)),
        "hf_power": high,
        "levels": float(len(np.unique(np.rint(image)))),
    }


# --- data -----------------------------------------------------------------------------------


def real_sets() -> dict[str, list[tuple[np.ndarray, np.ndarray, float, float]]]:
    """{set: [(image, centres [n, 2] (x, y), pixel size, label diameter px), ...]}"""
    out: dict[str, list] = {"bgal": [], "t20s": []}
    for folder, key, pixel, diameter in (
        ("empiar10017_bgal_bin4", "bgal", BGAL_PIXEL, 27.0),
        ("empiar10025_t20s_1mic", "t20s", T20S_PIXEL, 18.0),
    ):
        for png in sorted((REAL / folder).glob("*.png")):
            if png.name == "preview.png":
                continue
            labels = np.genfromtxt(png.with_suffix(".csv"), delimiter=",", names=True)
            centres = np.stack([labels["x"], labels["y"]], axis=1)
            out[key].append((read_micrograph(png).data, centres, pixel, diameter))
    return out


def simulated_set(
    kind: str, n: int, seed: int, defocus_um: tuple[float, float]
) -> list[tuple[np.ndarray, np.ndarray, float, float, float]]:
    """Simulated micrographs in the rendering of the real set ``kind``: (image, centres, pixel, D px, defocus).

    Settings a user would pick to match the session (pixel size, rendering, crowding, defocus);
    the specimen ranges (ice texture, fragments) are within the collection's defaults. No carbon or
    contamination: the real frames show (almost) none, and one dark blob swamps the noise statistics.
    """
    model = load_model(STRUCTURES / "5a1a.cif.gz")
    diameter = particle_diameter(model)
    if kind == "bgal":
        config = SimulationConfig(
            shape=(1024, 1024),
            pixel_size=BGAL_PIXEL,
            particles_per_micrograph=(550, 850),
            min_distance=(0.8, 0.95),
            defocus_um=defocus_um,
            dose=(30.0, 40.0),
            ice_thickness=(300.0, 500.0),
            carbon_probability=0.0,
            contamination_probability=0.0,
            aggregate_probability=0.5,
            ice_texture=(20.0, 40.0),
            fragment_fraction=(0.5, 1.5),
            rendering=Rendering(
                "bgal-like",
                bin=2,
                denoise=0.15,
                lowpass_A=25.0,
                border_stripes_px=16,
                eight_bit="png",
                stretch=(0.02, 99.98),
            ),
        )
    else:
        config = SimulationConfig(
            shape=(619, 640),
            pixel_size=T20S_PIXEL,
            particles_per_micrograph=(300, 450),
            min_distance=(0.8, 0.95),
            defocus_um=defocus_um,
            dose=(40.0, 55.0),
            ice_thickness=(300.0, 500.0),
            carbon_probability=0.0,
            contamination_probability=0.0,
            aggregate_probability=0.3,
            rendering=Rendering("t20s-like", bin=2, lowpass_A=1.2 * T20S_PIXEL, eight_bit="png", stretch=(0.0, 100.0)),
        )
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        sim = simulate_micrograph(model, config, rng, diameter=diameter, workers=-1)
        rendered, particles, _ = render(sim, config.rendering, rng)
        centres = np.stack([particles["x"], particles["y"]], axis=1)
        defocus = 0.5 * (sim.params.defocus_u + sim.params.defocus_v)
        out.append(
            (rendered.data.astype(np.float32), centres, rendered.pixel_size, diameter / rendered.pixel_size, defocus)
        )
    return out


def raw_thon_check(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """A raw float 1.5 Å/px micrograph: measured spectrum minima vs predicted CTF zeros."""
    model = load_model(STRUCTURES / "5a1a.cif.gz")
    config = SimulationConfig(
        pixel_size=1.5,
        defocus_um=(1.5, 1.5),
        astigmatism=(0.0, 0.0),
        b_factor=(60.0, 60.0),
        dose=(40.0, 40.0),
        particles_per_micrograph=(60, 60),
        carbon_probability=0.0,
        contamination_probability=0.0,
        aggregate_probability=0.0,
    )
    sim = simulate_micrograph(model, config, seed, workers=-1)
    q, power = radial_psd(sim.counts, 1.5, tile=256)
    residual = ring_residual(q, power)
    zeros = ctf_zeros(15000.0, 0.5 / 1.5)
    minima = spectrum_minima(q, residual, 0.02)
    return 15000.0, zeros, minima


# --- report ---------------------------------------------------------------------------------


def measure(images) -> list:
    rows = []
    for item in images:
        image, centres, pixel, diameter_px = item[:4]
        q, power = radial_psd(image, pixel)
        residual = ring_residual(q, power)
        q_max = 0.9 * 0.5 / pixel
        defocus, r = fit_defocus(q, residual, 1 / 80.0, q_max)
        minima = spectrum_minima(q, residual, 1 / 80.0)
        zeros = ctf_zeros(defocus, q_max)
        row = {
            "defocus_fit_um": defocus / 1e4,
            "fit_r": r,
            "first_min_A": 1 / minima[0] if len(minima) else float("nan"),
            "first_zero_A": 1 / zeros[0] if len(zeros) else float("nan"),
            "z": particle_z(image, centres, diameter_px),
            **noise_stats(image, centres, diameter_px, pixel),
        }
        if len(item) > 4:
            row["defocus_true_um"] = item[4] / 1e4
        rows.append((row, q, residual))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "sim_vs_real.png")
    parser.add_argument("--n", type=int, default=3, help="simulated micrographs per set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    real = real_sets()
    real_rows = {k: measure(v) for k, v in real.items()}
    sims, sim_rows = {}, {}
    for k in real:
        fitted = [row["defocus_fit_um"] for row, _, _ in real_rows[k]]
        ring_r = float(np.median([row["fit_r"] for row, _, _ in real_rows[k]]))
        if ring_r >= 0.3:
            # Like with like: simulate around the defocus the real set's rings show.
            centre = float(np.median(fitted))
            defocus = (max(0.5, centre - 0.3), centre + 0.3)
        else:
            # No rings to fit (T20S at 7.9 Å/px: the first zero of a 1-2.5 µm defocus lies at or
            # beyond Nyquist), so the fit means nothing; use the usual range of such sessions.
            defocus = (1.0, 2.5)
        print(f"{k}: ring fit r {ring_r:.2f} -> simulated defocus {defocus[0]:.2f}-{defocus[1]:.2f} µm")
        sims[k] = simulated_set(k, args.n, args.seed, defocus)
        sim_rows[k] = measure(sims[k])

    columns = [
        ("defocus_fit_um", "fit Δf µm", "{:.2f}"),
        ("defocus_true_um", "true Δf µm", "{:.2f}"),
        ("fit_r", "ring r", "{:.2f}"),
        ("first_min_A", "1st min Å", "{:.1f}"),
        ("first_zero_A", "1st zero Å", "{:.1f}"),
        ("z", "particle z", "{:+.2f}"),
        ("bg_texture", "bg texture", "{:.2f}"),
        ("lag1", "acf1", "{:.2f}"),
        ("lag2", "acf2", "{:.2f}"),
        ("skew", "skew", "{:+.2f}"),
        ("kurt", "kurt", "{:+.2f}"),
        ("hf_power", "HF power", "{:.3f}"),
        ("levels", "levels", "{:.0f}"),
    ]
    header = f"{'set':18s}" + "".join(f"{title:>11s}" for _, title, _ in columns)
    print(header)
    print("-" * len(header))
    for k in real:
        for label, rows in ((f"real {k}", real_rows[k]), (f"sim {k}-like", sim_rows[k])):
            for i, (row, _, _) in enumerate(rows):
                cells = "".join(f"{fmt.format(row[key]) if key in row else '-':>11s}" for key, _, fmt in columns)
                print(f"{label + f' #{i}':18s}{cells}")
    defocus, zeros, minima = raw_thon_check(args.seed)
    nearest = [minima[np.argmin(np.abs(minima - z))] for z in zeros[:6]] if len(minima) else []
    print(
        f"\nraw float sim, 1.5 Å/px, Δf {defocus / 1e4:.2f} µm: CTF zeros the defocus predicts (Å) "
        + " ".join(f"{1 / z:5.1f}" for z in zeros[:6])
    )
    print(
        "                                 nearest power-spectrum minima (Å) "
        + " ".join(f"{1 / m:5.1f}" for m in nearest)
    )
    print(f"\n({time.perf_counter() - start:.0f} s)")
    write_figure(args.out, real, sims, real_rows, sim_rows)
    print(f"figure: {args.out}")


def _display(image: np.ndarray, size: int) -> np.ndarray:
    crop = image[24 : 24 + size, 24 : 24 + size].astype(np.float64)
    lo, hi = np.percentile(crop, [0.5, 99.5])
    return np.clip((crop - lo) / (hi - lo), 0, 1)


def write_figure(path: Path, real, sims, real_rows, sim_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hydrapicker.io.files import atomic_path

    fig, axes = plt.subplots(3, 2, figsize=(11, 15), gridspec_kw={"height_ratios": [1, 1, 0.55]})
    for col, (k, title) in enumerate(
        (("bgal", "β-gal, 7.08 Å/px, denoised + binned 8-bit"), ("t20s", "7.9 Å/px, binned + min-max 8-bit"))
    ):
        size = 560
        axes[0, col].imshow(_display(real[k][0][0], size), cmap="gray", interpolation="nearest")
        axes[0, col].set_title(
            f"real: {'EMPIAR-10017 β-gal' if k == 'bgal' else 'EMPIAR-10025 T20S'}\n{title}", fontsize=10
        )
        axes[1, col].imshow(_display(sims[k][0][0], size), cmap="gray", interpolation="nearest")
        axes[1, col].set_title(
            f"simulated: 5a1a β-gal, same pixel size and rendering\nΔf {sims[k][0][4] / 1e4:.2f} µm", fontsize=10
        )
        for ax in axes[:2, col]:
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[2, col]
        for label, rows, colour in (("real", real_rows[k], "k"), ("simulated", sim_rows[k], "tab:red")):
            row, q, residual = rows[0]
            ax.plot(q[2:], residual[2:], colour, label=f"{label} (fit Δf {row['defocus_fit_um']:.2f} µm)")
        for z in ctf_zeros(sims[k][0][4], q[-1]):
            ax.axvline(z, color="tab:red", ls=":", lw=0.8)
        ax.set_xlabel("spatial frequency (1/Å)   dotted: CTF zeros of the simulated defocus")
        ax.set_ylabel("log power − baseline")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
