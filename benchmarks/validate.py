"""The validation suite of the generic model (issue 18): one command, one table, one JSON.

    .venv/bin/python benchmarks/validate.py MODEL [--out runs/validate/NAME] [--threads 2]

Every number is the generic head's, picked as ``hydrapicker pick`` picks (``Picker``: the size
read once per set, then every micrograph picked at it), with the default settings ("default")
and with ``--fixed-diameter`` ("fixed"), at the true diameter and at -20 % / +25 %:

- **real**: zero-shot AP on every real labelled micrograph in the repo: EMPIAR-10017 beta-gal
  (3 frames) and EMPIAR-10025 T20S (1 frame, partial labels: AP is a lower bound).
- **sim**: simulated sets drawn with seeds no training recipe uses: the benchmark's unseen
  proteins 1jnb (a hollow ring) and 6msm, packed finely sampled apoferritin (4v1w, the real
  failure reproduced), and the benchmark's targets. Only 1jnb and 6msm are new proteins to a
  model trained by ``scripts/campaign``; the others are new micrographs of trained structures.
- **junk**: picks per held-out real particle-free micrograph (the last three of each class in
  ``data/real/cianfrocco_quality_examples``; the first two are training negatives) at the
  default threshold, at two diameters (12 and 24 px); the median and the largest.
- **contamination**: the share of picks (default threshold) whose centre lies in the mask of
  ``data/real/micrograph_cleaner_contamination`` (particles read off the image as ~36 px).

AP: all-point, IoU >= 0.6 with the truth's box, picks pooled over a set (``hydrapicker.evaluate``).
The simulated sets are made once into ``data-generated/validation`` (seeded) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch

from hydrapicker import checkpoint
from hydrapicker.defaults import PICK_THRESHOLD
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import evaluate
from hydrapicker.io.coordinates import read_picks
from hydrapicker.io.files import atomic_write_text
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking import size as size_module
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.simulate.collection import condition_config
from hydrapicker.simulate.config import SimulationConfig
from hydrapicker.simulate.dataset import simulate_dataset
from hydrapicker.simulate.structure import load_model, particle_diameter

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "src" / "hydrapicker" / "assets" / "real"
NEGATIVES = ROOT / "data" / "real" / "cianfrocco_quality_examples"
CONTAMINATION = ROOT / "data" / "real" / "micrograph_cleaner_contamination"
SIM_ROOT = ROOT / "data-generated" / "validation"
STRUCTURES = ROOT / "data" / "structures"
FACTORS = (0.8, 1.0, 1.25)
JUNK_DIAMETERS_PX = (12.0, 24.0)
CONTAMINATION_DIAMETER_PX = 36.0
# The sweep to re-derive the default threshold on this suite.
THRESHOLDS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
SIM_SIZE = 768
SIM_SEED = 4242  # no training recipe uses it
TARGETS = ("4hhb", "6b7n", "1igy", "4v1w", "5tby", "1r42", "7cr4")
UNSEEN = ("1jnb", "6msm")


@dataclass(frozen=True)
class LabelledSet:
    name: str
    kind: str  # real / unseen / packed / target
    micrographs: tuple[Path, ...]
    truth: tuple[Path, ...]
    pixel_size: float
    diameter_A: float
    box_px: float

    def read_truth(self) -> dict:
        """Every labelled micrograph's true particles: ``{micrograph name: Picks}``."""
        truth = {}
        for path in self.truth:
            truth.update(read_picks(path))
        return truth


def real_sets() -> list[LabelledSet]:
    bgal, t20s = REAL / "empiar10017_bgal_bin4", REAL / "empiar10025_t20s_1mic"
    return [
        LabelledSet(
            "real-bgal", "real", tuple(sorted(bgal.glob("*.png"))), tuple(sorted(bgal.glob("*.csv"))), 7.08, 191.0, 27.0
        ),
        LabelledSet(
            "real-t20s", "real", tuple(sorted(t20s.glob("*.png"))), tuple(sorted(t20s.glob("*.csv"))), 7.9, 142.0, 18.0
        ),
    ]


def _structure(sid: str) -> Path:
    return next(STRUCTURES.glob(f"{sid}.*"))


def _simulated(name: str, kind: str, sid: str, config: SimulationConfig, n: int, seed: int) -> LabelledSet:
    out = SIM_ROOT / name
    if not (out / "dataset.toml").exists():
        simulate_dataset(_structure(sid), out, config, n, seed, name=name, progress=False, workers=1, overwrite=True)
    diameter = json.loads((out / "config.json").read_text())["diameter_A"]
    micrographs = tuple(sorted(p for p in (out / "micrographs").iterdir()))
    truth = tuple(sorted(p for p in (out / "coordinates").glob("*.star") if not p.name.endswith("_decoys.star")))
    return LabelledSet(name, kind, micrographs, truth, config.pixel_size, diameter, diameter / config.pixel_size)


def simulated_sets() -> list[LabelledSet]:
    sets = []
    for index, sid in enumerate(UNSEEN + TARGETS):
        rng = np.random.default_rng([SIM_SEED, index])
        diameter = particle_diameter(load_model(_structure(sid)))
        kind = "unseen" if sid in UNSEEN else "target"
        n = 3 if sid in UNSEEN else 2
        sets.append(
            _simulated(f"{kind}-{sid}", kind, sid, condition_config(diameter, rng, SIM_SIZE), n, SIM_SEED + index)
        )
    packed = SimulationConfig(
        shape=(SIM_SIZE, SIM_SIZE),
        pixel_size=2.0,
        defocus_um=(1.5, 3.5),
        particles_per_micrograph=(90, 140),
        ice_thickness=(300.0, 500.0),
    )
    sets.append(_simulated("packed-4v1w", "packed", "4v1w", packed, 3, 3))
    return sets


def _picker(model, meta, *, diameter_A=None, diameter_px=None, pixel_size=None, fixed=False, threshold=0.001) -> Picker:
    size = ParticleSize(diameter_A=diameter_A, diameter_px=diameter_px, pixel_size=pixel_size)
    settings = PickSettings(size, threshold=threshold, correct_size=not fixed)
    return Picker(model, meta, settings)


def _pick_all(picker: Picker, paths: list[Path]) -> tuple[dict, str]:
    picker.calibrate(paths)
    picks = {}
    for path in paths:
        got = picker.candidates(picker.prepare(path))
        picks[got.micrograph] = got
    return picks, picker.describe_size()


def score_set(model, meta, labelled: LabelledSet) -> dict:
    truth = labelled.read_truth()
    row = {
        "kind": labelled.kind,
        "micrographs": len(labelled.micrographs),
        "particles": sum(len(t) for t in truth.values()),
    }
    for fixed in (False, True):
        for factor in FACTORS:
            picker = _picker(
                model, meta, diameter_A=labelled.diameter_A * factor, pixel_size=labelled.pixel_size, fixed=fixed
            )
            picks, size_line = _pick_all(picker, list(labelled.micrographs))
            picks = {name: picks.get(name) for name in truth if name in picks}
            result = evaluate(picks, truth, labelled.box_px)
            key = f"{'fixed' if fixed else 'default'}@{factor:g}"
            row[key] = {"ap": result.ap, "best_f1": result.best_f1, "best_f1_threshold": result.best_threshold}
            if factor == 1.0:
                at = {name: p.above(PICK_THRESHOLD) for name, p in picks.items()}
                row[key]["f1_at_default_threshold"] = _f1(evaluate(at, truth, labelled.box_px))
                row[key]["f1_by_threshold"] = {
                    f"{t:g}": _f1(evaluate({n: p.above(t) for n, p in picks.items()}, truth, labelled.box_px))
                    for t in THRESHOLDS
                }
            if size_line:
                row[key]["size"] = size_line
    return row


def _f1(result) -> float:
    """F1 of every pick kept (they are all above the threshold already)."""
    return 2 * result.tp / (result.n_picks + result.n_true) if result.n_picks + result.n_true else 0.0


def junk(model, meta) -> dict:
    held_out = [p for cls in ("3Empty_no_ice", "4Crystalline_ice") for p in sorted((NEGATIVES / cls).glob("*.png"))[2:]]
    out = {"micrographs": [p.name for p in held_out]}
    for fixed in (False, True):
        for diameter in JUNK_DIAMETERS_PX:
            picker = _picker(model, meta, diameter_px=diameter, fixed=fixed, threshold=PICK_THRESHOLD)
            picks, _ = _pick_all(picker, held_out)
            counts = [len(p.above(PICK_THRESHOLD)) for p in picks.values()]
            out[f"{'fixed' if fixed else 'default'}@{diameter:g}px"] = {
                "median": float(np.median(counts)),
                "max": int(max(counts)),
                "counts": counts,
                "median_by_threshold": {
                    f"{t:g}": float(np.median([len(p.above(t)) for p in picks.values()])) for t in THRESHOLDS
                },
            }
    return out


def contamination(model, meta) -> dict:
    path = CONTAMINATION / "Ucsf_stack_1142_DW.mrc"
    mask = mrcfile.read(CONTAMINATION / "Ucsf_stack_1142_DW_contamination_mask.mrc") > 0.5
    picker = _picker(model, meta, diameter_px=CONTAMINATION_DIAMETER_PX, threshold=PICK_THRESHOLD)
    picks, _ = _pick_all(picker, [path])
    got = next(iter(picks.values())).above(PICK_THRESHOLD)
    rows = np.clip(np.rint(got.y).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.rint(got.x).astype(int), 0, mask.shape[1] - 1)
    inside = int(mask[rows, cols].sum())
    return {"picks": len(got), "inside_mask": inside, "fraction": inside / len(got) if len(got) else 0.0}


def table(result: dict) -> str:
    lines = [
        f"validation suite: {result['model']}",
        "",
        "| set | kind | default AP @0.8 / 1 / 1.25 | fixed AP @0.8 / 1 / 1.25 | default - fixed @1 | best-F1 thr (default@1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["sets"].items():
        d = [row[f"default@{f:g}"]["ap"] for f in FACTORS]
        x = [row[f"fixed@{f:g}"]["ap"] for f in FACTORS]
        lines.append(
            f"| {name} | {row['kind']} | {d[0]:.3f} / **{d[1]:.3f}** / {d[2]:.3f} | {x[0]:.3f} / **{x[1]:.3f}** / {x[2]:.3f} "
            f"| {d[1] - x[1]:+.3f} | {row['default@1']['best_f1_threshold'] or float('nan'):.3f} |"
        )
    means = result["summary"]
    lines += ["", "| summary | value |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in means.items()
    ]
    lines += [
        "",
        f"| junk: picks per held-out particle-free real micrograph (threshold {PICK_THRESHOLD:.2f}) | median | max |",
        "|---|---|---|",
    ]
    for key, value in result["junk"].items():
        if key != "micrographs":
            lines.append(f"| {key} | {value['median']:g} | {value['max']} |")
    lines += [
        "",
        "| threshold | mean F1 over the labelled sets (default@1) | junk median, worst of default@12/24 px |",
        "|---|---|---|",
    ]
    for t in THRESHOLDS:
        f1 = np.mean([row["default@1"]["f1_by_threshold"][f"{t:g}"] for row in result["sets"].values()])
        worst = max(v["median_by_threshold"][f"{t:g}"] for k, v in result["junk"].items() if k.startswith("default@"))
        lines.append(f"| {t:g} | {f1:.3f} | {worst:g} |")
    c = result["contamination"]
    lines += [
        "",
        f"contamination: {c['inside_mask']} of {c['picks']} picks inside the mask ({100 * c['fraction']:.1f} %)",
    ]
    return "\n".join(lines)


def summarise(sets: dict) -> dict:
    def mean(kind: str, key: str) -> float:
        values = [row[key]["ap"] for row in sets.values() if row["kind"] == kind]
        return float(np.mean(values)) if values else float("nan")

    worst_drop = max(row["fixed@1"]["ap"] - min(row[f"default@{f:g}"]["ap"] for f in FACTORS) for row in sets.values())
    return {
        "mean AP targets (default@1)": mean("target", "default@1"),
        "mean AP unseen (default@1)": mean("unseen", "default@1"),
        "worst set: fixed@1 - default@1": max(row["fixed@1"]["ap"] - row["default@1"]["ap"] for row in sets.values()),
        "worst set: fixed@1 - min(default@0.8/1/1.25)": worst_drop,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", type=Path, nargs="?", default=None, help="checkpoint (default: the shipped generic model)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for validation.json and validation.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", nargs="+", help="set names to score (a quick look; junk and contamination are always run)"
    )
    parser.add_argument(
        "--size-tolerance",
        type=float,
        help="pick as if defaults.SIZE_TOLERANCE were this (correct the diameter only when the particles look "
        "more than this factor off): to choose that default on this suite",
    )
    parser.add_argument(
        "--sets-from",
        type=Path,
        help="take the scores of the sets not scored now from this earlier validation.json of the same model",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.size_tolerance is not None:
        size_module.SIZE_TOLERANCE = args.size_tolerance
    start = time.perf_counter()
    model, meta = checkpoint.load_model(args.model)
    sets = real_sets() + simulated_sets()
    if args.only:
        sets = [s for s in sets if s.name in args.only]
    scored = {}
    for labelled in sets:
        scored[labelled.name] = score_set(model, meta, labelled)
        row = scored[labelled.name]
        print(
            f"  {labelled.name}: default@1 AP {row['default@1']['ap']:.3f}, fixed@1 {row['fixed@1']['ap']:.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    if args.sets_from:
        earlier = json.loads(args.sets_from.read_text())["sets"]
        scored = {name: scored.get(name, row) for name, row in earlier.items()} | scored
    result = {
        "model": str(args.model or "shipped generic.pt"),
        "size_tolerance": size_module.SIZE_TOLERANCE,
        "threshold": PICK_THRESHOLD,
        "sets": scored,
        "summary": summarise(scored),
        "junk": junk(model, meta),
        "contamination": contamination(model, meta),
        "seconds": time.perf_counter() - start,
    }
    text = table(result)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(args.out / "validation.json", json.dumps(result, indent=1, default=float) + "\n")
        atomic_write_text(args.out / "validation.md", text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HydraPickerError as exc:  # a missing or unreadable model: one line, nothing written
        print(f"validate: error: {exc}", file=sys.stderr)
        sys.exit(1)
