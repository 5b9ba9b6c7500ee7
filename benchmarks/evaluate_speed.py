"""How fast `evaluate` scores 1,000 micrographs x 1,000 picks (the size of a real test set).

Random micrographs (4096 px), 300 true particles each, 1,000 picks each of which a known
fraction lands near a true particle (jitter of a few px) and the rest uniformly; box 64 px.
Prints the median wall time of `evaluate` and its ratio to a reference measured in the same
run on the same data: numpy sorting the 1M pick scores (the least any ranking metric costs).

    .venv/bin/python benchmarks/evaluate_speed.py [--micrographs 1000] [--picks 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks


def make_case(n_micrographs: int, n_picks: int, n_true: int, near: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth, picks = {}, {}
    for m in range(n_micrographs):
        name = f"mic_{m:05d}"
        tx, ty = rng.uniform(0, 4096, n_true), rng.uniform(0, 4096, n_true)
        truth[name] = Picks(name, tx, ty)
        is_near = rng.random(n_picks) < near
        k = rng.integers(0, n_true, n_picks)
        x = np.where(is_near, tx[k] + rng.normal(0, 4, n_picks), rng.uniform(0, 4096, n_picks))
        y = np.where(is_near, ty[k] + rng.normal(0, 4, n_picks), rng.uniform(0, 4096, n_picks))
        picks[name] = Picks(name, x, y, rng.normal(size=n_picks) + 1.5 * is_near)
    return picks, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micrographs", type=int, default=1000)
    parser.add_argument("--picks", type=int, default=1000)
    parser.add_argument("--true", type=int, default=300)
    parser.add_argument("--near", type=float, default=0.3, help="fraction of picks near a true particle")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_before = os.getloadavg()
    picks, truth = make_case(args.micrographs, args.picks, args.true, args.near)
    scores = np.concatenate([p.score for p in picks.values()])
    evaluate(picks, truth, box_size=64)  # warm-up: the first call imports scipy

    eval_times, sort_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = evaluate(picks, truth, box_size=64)
        eval_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.sort(scores)
        sort_times.append(time.perf_counter() - t0)
    t_eval, t_sort = statistics.median(eval_times), statistics.median(sort_times)
    print(f"cpus: {os.cpu_count()}, load average before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(
        f"case: {args.micrographs} micrographs x {args.picks} picks, {args.true} true each, {args.near:.0%} near a particle"
    )
    print(
        f"result: AP {result.ap:.4f}, AUROC {result.auroc:.4f}, TP {result.tp} of {result.n_picks} picks / {result.n_true} true"
    )
    print(f"evaluate: {t_eval:.3f} s median of {args.repeats} (all: {', '.join(f'{t:.3f}' for t in eval_times)})")
    print(
        f"reference np.sort of {len(scores)} scores: {t_sort * 1e3:.1f} ms; ratio evaluate / sort = {t_eval / t_sort:.0f}"
    )


if __name__ == "__main__":
    main()
