"""Time one 1024x1024 micrograph with 200 particles of a ~330 kDa protein, on one core.

Usage: .venv/bin/python benchmarks/simulate_speed.py [--model data/structures/6vxx.pdb.gz] [--pixel-size 3.0] [--repeats 3]

Everything is on (ice with structure factor, carbon edge, contamination, aggregates, broken
particles, CTF, motion, MTF, Poisson), single-threaded (BLAS/OpenMP threads and scipy.fft
workers = 1). Prints the first call (which fills the per-grid form-factor caches) and the
steady state (every later micrograph of a dataset). 200 spikes (~130 Å wide) fit a 1024^2 field
without overlap from about 3 Å/px; the cost depends on the field size and the atom count.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hydrapicker.simulate import SimulationConfig, load_model, particle_diameter, simulate_micrograph  # noqa: E402
from hydrapicker.simulate.micrograph import draw_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "structures" / "6vxx.pdb.gz"))
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = load_model(args.model)
    diameter = particle_diameter(model)
    t_load = time.perf_counter() - t0
    config = SimulationConfig(
        shape=(1024, 1024),
        pixel_size=args.pixel_size,
        particles_per_micrograph=(args.particles, args.particles),
        carbon_probability=1.0,
        contamination_probability=1.0,
        aggregate_probability=1.0,
        min_distance=(0.8, 0.8),
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), one thread used")
    print(
        f"model {model.name}: {model.n_atoms} heavy atoms, {model.mass_da / 1000:.0f} kDa, diameter {diameter:.0f} Å; load {t_load:.2f} s"
    )
    times = []
    for seed in range(args.repeats):
        rng = np.random.default_rng(seed)
        params = draw_params(config, diameter, rng)
        t0 = time.perf_counter()
        sim = simulate_micrograph(model, config, rng, diameter=diameter, params=params, workers=1)
        times.append(time.perf_counter() - t0)
        copies = len(sim.particles["x"])
        print(
            f"micrograph {seed}: {times[-1]:.2f} s, {copies} particles labelled in the image "
            f"(+ margin, aggregates, broken), {args.pixel_size} Å/px"
        )
    print(
        f"first call {times[0]:.2f} s; steady state median {np.median(times[1:] or times):.2f} s per 1024^2 micrograph"
    )


if __name__ == "__main__":
    main()
