"""Zero-label adaptation on the real micrographs: generic head vs adapted head, AP with hydrapicker.evaluate.

Labels are never shown to ``adapt``; they only score. Sets (``src/hydrapicker/assets/real``,
copies of ``shared/data/real``, which holds nothing more):

- ``bgal``: EMPIAR-10017, 3 micrographs. Leave-one-out: adapt on two, pick the third with the
  generic and the adapted head; AP of the three held-out micrographs pooled (each picked by the
  head that did not see it). Also ``bgal-all``: adapt on all three, score all three.
- ``t20s``: EMPIAR-10025, 1 micrograph: adapt on it and score it (nothing to hold out).
  Its labels are partial (283 of the particles), so unlabelled true particles count as false
  positives and AP is a lower bound for both heads (``evaluate --ignore-unlabelled`` is about
  micrographs without a truth file, not about unlabelled particles, so it does not apply).

- ``sim``: the simulated shifted rendering (not real; here so that one script times it): β-gal
  5a1a at 5 Å/px, 24 micrographs of 1024², defocus 4-6 µm (the generic model saw 0.8-3), then a
  5-px median filter (a denoiser it never saw); adapt on the first 20, score the last 4. Simulated
  into ``--out`` once (``--sim`` reuses a folder written by the same command).

Scoring as ``scripts/zero_shot_real.sh``: picks down to score 0.001, box 27 px (β-gal) / 18 px
(T20S) / the simulated diameter, IoU 0.6, all-point AP (:func:`hydrapicker.evaluate.evaluate`),
each head picking in one pass as ``pick`` does (``--tta``: also both heads averaged over four
quarter turns, like with like).

Usage:
  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/adapt_real.py --out /tmp/adapt-real [--sets bgal bgal-all t20s sim] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from hydrapicker.checkpoint import load_model
from hydrapicker.defaults import GENERIC
from hydrapicker.evaluate import evaluate
from hydrapicker.io import read_micrograph, read_picks, write_mrc
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.decode import picks_from_outputs
from hydrapicker.picking.picker import Picker, PickSettings, pick_micrograph
from hydrapicker.training.adapt import adapt, turned_outputs
from hydrapicker.training.config import AdaptConfig

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "src" / "hydrapicker" / "assets" / "real"
STRUCTURE = ROOT.parent / "shared" / "data" / "structures" / "5a1a.cif.gz"
SIM_PIXEL = 5.0
SETS = {
    # name: folder, diameter Å, pixel size Å/px, box px
    "bgal": (REAL / "empiar10017_bgal_bin4", 191.0, 7.08, 27.0),
    "t20s": (REAL / "empiar10025_t20s_1mic", 142.0, 7.9, 18.0),
}


def _truth(folder: Path, paths: list[Path], suffix: str = "csv") -> dict:
    truth = {}
    for path in paths:
        stem = micrograph_stem(path)
        truth.update(
            read_picks(folder / f"{stem}.{suffix}", suffix, micrograph=stem, shape=read_micrograph(path).shape)
        )
    return truth


def _simulated(out: Path) -> tuple[list[Path], float]:
    """The shifted rendering: simulated micrographs, median-filtered; and the particle diameter (Å)."""
    from hydrapicker.cli import main as cli_main

    sim = out / "sim"
    if not (sim / "config.json").is_file():
        status = cli_main(
            [
                "simulate",
                str(STRUCTURE),
                "--out",
                str(sim),
                "--n-micrographs",
                "24",
                "--pixel-size",
                str(SIM_PIXEL),
                "--defocus",
                "4",
                "6",
                "--rendering",
                "float",
                "--seed",
                "7",
                "--quiet",
            ]
        )
        assert status == 0
    shifted = out / "sim-shifted"
    shifted.mkdir(exist_ok=True)
    for path in sorted((sim / "micrographs").glob("*.mrc")):
        if not (shifted / path.name).is_file():
            write_mrc(
                shifted / path.name, ndimage.median_filter(read_micrograph(path).data, size=5), pixel_size=SIM_PIXEL
            )
    return sorted(shifted.glob("*.mrc")), json.loads((sim / "config.json").read_text())["diameter_A"]


def _picks(
    checkpoint: Path | None, head: str, paths: list[Path], diameter: float, pixel: float, turns: int = 1
) -> dict:
    model, meta = load_model(checkpoint)
    if turns == 1:
        return {
            micrograph_stem(p): pick_micrograph(
                model,
                meta,
                read_micrograph(p).data,
                PickSettings(ParticleSize(diameter_A=diameter, pixel_size=pixel), head=head, threshold=0.001),
                name=micrograph_stem(p),
            )
            for p in paths
        }
    picker = Picker(model, meta, PickSettings(ParticleSize(diameter_A=diameter, pixel_size=pixel), head=head))
    picks = {}
    for path in paths:
        prepared = picker.prepare(path)
        outputs = turned_outputs(model, prepared.image, head, turns)
        picks[prepared.name] = picks_from_outputs(
            outputs, meta, prepared.scale, prepared.data.shape, 0.001, name=prepared.name
        )
    return picks


def _adapt(
    out: Path, paths: list[Path], diameter: float, pixel: float, config: AdaptConfig, model: Path | None
) -> tuple[Path, dict]:
    checkpoint = out / f"{config.name}.pt"
    load = os.getloadavg()[0]
    report = adapt(
        paths,
        checkpoint,
        config,
        model_path=model,
        size=ParticleSize(diameter_A=diameter, pixel_size=pixel),
        overwrite=True,  # a rerun adapts afresh
    )
    return checkpoint, {
        "seconds": report.seconds,
        "load_average_before_after": [load, os.getloadavg()[0]],
        "micrographs": len(report.micrographs),
        "rounds": [asdict(r) for r in report.rounds],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="base checkpoint (default: the shipped generic model)")
    parser.add_argument(
        "--sets", nargs="+", choices=("bgal", "bgal-all", "t20s", "sim"), default=["bgal", "bgal-all", "t20s", "sim"]
    )
    defaults = AdaptConfig(name="x")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--turns", type=int, default=defaults.turns)
    parser.add_argument("--tta", action="store_true", help="also score both heads averaged over four quarter turns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def config(name: str) -> AdaptConfig:
        return AdaptConfig(
            name=name, rounds=args.rounds, steps=args.steps, turns=args.turns, seed=args.seed, threads=args.threads
        )

    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "sets": {}}
    for name in args.sets:
        t0 = time.perf_counter()
        if name == "sim":
            paths, diameter = _simulated(args.out)
            pixel, box = SIM_PIXEL, diameter / SIM_PIXEL
            adapt_on, scored = paths[:20], paths[20:]
            truth = _truth(args.out / "sim" / "coordinates", scored, "star")
        else:
            folder, diameter, pixel, box = SETS[name.split("-")[0]]
            paths = sorted(folder.glob("*.png"))
            adapt_on, scored = paths, paths
            truth = _truth(folder, paths)
        generic = _picks(args.model, GENERIC, scored, diameter, pixel)
        adapted, runs = {}, {}
        if name == "bgal":  # leave one out
            for held in paths:
                rest = [p for p in paths if p != held]
                stem = micrograph_stem(held)
                checkpoint, runs[stem] = _adapt(
                    args.out / f"bgal-without-{stem}", rest, diameter, pixel, config("bgal"), args.model
                )
                adapted.update(_picks(checkpoint, "bgal", [held], diameter, pixel))
            tta = {}
        else:
            head = name.replace("-", "_")
            checkpoint, runs["all"] = _adapt(args.out / name, adapt_on, diameter, pixel, config(head), args.model)
            adapted = _picks(checkpoint, head, scored, diameter, pixel)
            tta = (
                {
                    "generic_tta4": _picks(args.model, GENERIC, scored, diameter, pixel, 4),
                    "adapted_tta4": _picks(checkpoint, head, scored, diameter, pixel, 4),
                }
                if args.tta
                else {}
            )
        row = {}
        for label, picks in (("generic", generic), ("adapted", adapted), *tta.items()):
            ev = evaluate(picks, truth, box)
            row[label] = {
                "ap": ev.ap,
                "auroc": ev.auroc,
                "best_f1": ev.best_f1,
                "picks_at_0.25": int(sum(np.sum(p.score >= 0.25) for p in picks.values())),
                "per_micrograph_ap": {k: v.ap for k, v in ev.per_micrograph.items()},
            }
        row["adapt_runs"] = runs
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["load_average"] = os.getloadavg()
        results["sets"][name] = row
        g, a = row["generic"]["per_micrograph_ap"], row["adapted"]["per_micrograph_ap"]
        each = ", ".join(f"{g[k]:.3f}->{a[k]:.3f}" for k in truth)
        also = "".join(f"  {k} AP {row[k]['ap']:.3f}" for k in tta)
        print(
            f"{name:9s} generic AP {row['generic']['ap']:.3f}  adapted AP {row['adapted']['ap']:.3f}{also}  "
            f"(per micrograph: {each}; {row['seconds']:.0f} s, load {row['load_average'][0]:.1f})",
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
