"""How good is `hydrapicker threshold`'s suggestion? F1 at the suggested threshold vs the best F1, on labelled sets.

Labelled sets: the bundled real micrographs (EMPIAR-10017 β-gal, 3 micrographs, 27-px boxes;
EMPIAR-10025 T20S, 1 micrograph, 18-px boxes, partial labels) and small simulated sets
(``hydrapicker simulate``, fixed seeds, 3 micrographs of 768² each) of different structures,
crowding and renderings (:data:`SIM_SETS`). For each set and model: ``hydrapicker pick`` at the
default settings (so OUT/candidates/ holds every candidate down to CANDIDATE_FLOOR), then, from
the candidates alone, the suggested threshold (:func:`hydrapicker.threshold.suggest_threshold`)
and, against the labels (:func:`hydrapicker.evaluate.evaluate`, the set's micrographs pooled):
the best F1 and its threshold, and F1 at the suggestion and at the default PICK_THRESHOLD. The
suggestion never sees the labels. ``--rules`` also scores the alternatives in :data:`RULES`.
``--development`` scores the rule on the development sets instead, which these sets are not:
benchmarks/validate.py's simulated sets (the rule was chosen on them) and :data:`DEVELOPMENT_SETS`
(made to find where a rule on the scores alone breaks), with the gaps of thresholds that use the
labels (:func:`oracles`: the rule given each set's own calibration, the threshold at the true
particle count, the best threshold of one labelled micrograph applied to the others).

Usage (simulating the sets takes ~5 min once, picking ~1 min per model on a busy 2-core machine):
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_rule.py --work /tmp/threshold_rule [--model NAME=CKPT ...]

The shipped generic model is always included ("generic"); a --model trained on β-gal (e.g.
benchmarks/pick_real/train.py's) is scored on β-gal only, and its figures are training-set figures
for the micrographs it was trained on. benchmarks/edge_picks.py reuses these sets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import isotonic_regression
from validate import _pick_all, _picker, simulated_sets

from hydrapicker import checkpoint
from hydrapicker.cli import main as cli
from hydrapicker.defaults import CANDIDATE_FLOOR, PICK_THRESHOLD
from hydrapicker.evaluate import Evaluation, evaluate, match_picks
from hydrapicker.io import Picks, read_picks
from hydrapicker.io.coordinates import is_decoys_file
from hydrapicker.threshold import expected_f1_threshold, read_candidates, suggest_threshold

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "hydrapicker" / "assets" / "real"
STRUCTURES = ROOT / "data" / "structures"


@dataclass(frozen=True)
class LabelledSet:
    name: str
    micrographs: list[Path]
    truth: dict[str, Picks]
    box: float  # px: the particle diameter, the box for picking and matching
    real: bool


#: The simulated sets: structure, `simulate` options. 768² x 3, seeds fixed; diameters 33-75 px.
SIM_SETS: dict[str, tuple[str, list[str]]] = {
    "sim-6vxx-float": ("6vxx.pdb.gz", ["--pixel-size", "3.0", "--seed", "11"]),
    "sim-5a1a-crowded-binned": (
        "5a1a.cif.gz",
        ["--pixel-size", "3.5", "--particles-per-micrograph", "70", "110", "--rendering", "binned", "--seed", "12"],
    ),
    "sim-4hhb-sparse-jpg": (
        "4hhb.pdb.gz",
        ["--pixel-size", "1.5", "--particles-per-micrograph", "8", "20", "--rendering", "jpg", "--seed", "13"],
    ),
    "sim-1hvr-lowpass-png": ("1hvr.pdb.gz", ["--pixel-size", "1.5", "--rendering", "lowpass-png", "--seed", "14"]),
    "sim-4v1w-crowded-denoised": (
        "4v1w.cif.gz",
        ["--pixel-size", "2.5", "--particles-per-micrograph", "60", "90", "--rendering", "denoised", "--seed", "15"],
    ),
}


#: More development sets (``--development``): 16 structures none of the sets above uses, sparse (8-20
#: and 2-6 particles per micrograph), default and crowded (60-110), every rendering. 768² x 3, seeds 101-116.
DEVELOPMENT_SETS: dict[str, tuple[str, list[str]]] = {
    name: (structure, ["--pixel-size", pixel, *crowding, "--rendering", rendering, "--seed", str(seed)])
    for seed, (name, structure, pixel, crowding, rendering) in enumerate(
        (
            ("d-1anf-sparse-jpg", "1anf.pdb.gz", "1.2", ["--particles-per-micrograph", "8", "20"], "jpg"),
            ("d-1ema-png", "1ema.pdb.gz", "1.0", [], "png"),
            ("d-1luc-sparse-float", "1luc.pdb.gz", "1.5", ["--particles-per-micrograph", "8", "20"], "float"),
            ("d-1n8z-crowded-lowpass", "1n8z.pdb.gz", "2.5", ["--particles-per-micrograph", "60", "110"], "lowpass"),
            ("d-1tf7-crowded-denoised", "1tf7.pdb.gz", "2.0", ["--particles-per-micrograph", "60", "110"], "denoised"),
            ("d-2bhw-binned", "2bhw.pdb.gz", "1.5", [], "binned"),
            (
                "d-3izx-sparse-denoised-png",
                "3izx.cif.gz",
                "3.5",
                ["--particles-per-micrograph", "8", "20"],
                "denoised-png",
            ),
            ("d-5a22-tif16", "5a22.pdb.gz", "2.5", [], "tif16"),
            ("d-6m03-crowded-jpg", "6m03.pdb.gz", "1.5", ["--particles-per-micrograph", "60", "110"], "jpg"),
            (
                "d-6qno-sparse-lowpass-png",
                "6qno.pdb.gz",
                "2.5",
                ["--particles-per-micrograph", "8", "20"],
                "lowpass-png",
            ),
            ("d-6wbf-lowpass", "6wbf.pdb.gz", "2.0", [], "lowpass"),
            ("d-5i08-very-sparse-float", "5i08.pdb.gz", "2.5", ["--particles-per-micrograph", "2", "6"], "float"),
            ("d-4blo-crowded-png", "4blo.pdb.gz", "3.0", ["--particles-per-micrograph", "60", "110"], "png"),
            ("d-5nj3-jpg", "5nj3.pdb.gz", "3.0", [], "jpg"),
            ("d-4zxb-denoised", "4zxb.cif.gz", "3.5", [], "denoised"),
            ("d-1vgv-very-sparse-jpg", "1vgv.pdb.gz", "2.5", ["--particles-per-micrograph", "2", "6"], "jpg"),
        ),
        start=101,
    )
}


def real_sets() -> list[LabelledSet]:
    sets = []
    for name, folder, box in (
        ("bgal", ASSETS / "empiar10017_bgal_bin4", 27.0),
        ("t20s", ASSETS / "empiar10025_t20s_1mic", 18.0),
    ):
        truth = {p.stem: read_picks(p, "csv", micrograph=p.stem)[p.stem] for p in sorted(folder.glob("*.csv"))}
        sets.append(LabelledSet(name, sorted(folder.glob("*.png")), truth, box, True))
    return sets


def simulated_set(name: str, work: Path) -> LabelledSet:
    """The simulated set ``name`` (:data:`SIM_SETS` or :data:`DEVELOPMENT_SETS`), simulated into ``work/sets/name`` once."""
    structure, options = {**SIM_SETS, **DEVELOPMENT_SETS}[name]
    folder = work / "sets" / name
    if not (folder / "dataset.toml").is_file():
        argv = ["simulate", str(STRUCTURES / structure), "--out", str(folder), "--name", name]
        argv += ["--n-micrographs", "3", "--size", "768", "--overwrite", *options]
        if cli(argv) != 0:
            raise SystemExit(f"simulating {name} failed")
    import tomllib

    entry = tomllib.loads((folder / "dataset.toml").read_text())["dataset"][0]
    truth = {}
    for path in sorted((folder / "coordinates").glob("*.star")):
        if not is_decoys_file(path):
            truth.update(read_picks(path, "star", micrograph=path.stem))
    micrographs = sorted(p for p in (folder / "micrographs").iterdir() if not p.name.startswith("."))
    return LabelledSet(name, micrographs, truth, entry["diameter"] / entry["pixel_size"], False)


def labelled_sets(work: Path, simulated: bool = True) -> list[LabelledSet]:
    return real_sets() + ([simulated_set(name, work) for name in SIM_SETS] if simulated else [])


def pick(sets: LabelledSet, model: Path | None, out: Path, *extra: str) -> Path:
    """``hydrapicker pick`` of the set's micrographs into ``out`` (once), at the set's box as the diameter."""
    argv = ["pick", *map(str, sets.micrographs), "--out", str(out), "--diameter-px", f"{sets.box:g}"]
    argv += ["--format", "csv", "--workers", "1", *(["--model", str(model)] if model else []), *extra]
    if not (out / "picks.csv").is_file() and cli(argv) != 0:
        raise SystemExit(f"picking {sets.name} failed")
    return out


def f1_at(evaluation: Evaluation, threshold: float) -> float:
    """F1 of the picks with score >= ``threshold`` (the operating point at or just above it)."""
    kept = np.flatnonzero(evaluation.thresholds >= threshold)
    if not len(kept):
        return 0.0
    p, r = evaluation.precision[kept[-1]], evaluation.recall[kept[-1]]
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


#: Thresholds at which each set's F1 is printed (the curve a rule has to land on).
CURVE = np.round(np.arange(0.1, 0.5, 0.025), 3)

#: Alternatives scored with --rules (name: candidates -> threshold); "suggested" is the shipped rule.
RULES: dict[str, Callable[[dict[str, Picks]], float]] = {"suggested": suggest_threshold}


def model_hash(model: Path | None) -> str:
    path = model or ROOT / "src" / "hydrapicker" / "assets" / "models" / "generic.pt"
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:10]  # = `git hash-object`


def run(name: str, model: Path | None, sets: LabelledSet, work: Path, rules: bool) -> tuple[list[str], dict]:
    out = pick(sets, model, work / f"{name}-{sets.name}")
    candidates = read_candidates(out)
    scored = evaluate(candidates, {s: sets.truth[s] for s in candidates}, sets.box)
    suggested = suggest_threshold(candidates)
    gap = scored.best_f1 - f1_at(scored, suggested)
    row = (
        f"| {name} | {sets.name} | {len(candidates)} | {sum(len(t) for t in sets.truth.values())} | {scored.ap:.3f} | "
        f"{scored.best_f1:.3f} | {scored.best_threshold:.3f} | {suggested:.3f} | {f1_at(scored, suggested):.3f} | "
        f"{gap:.3f} | {f1_at(scored, PICK_THRESHOLD):.3f} |"
    )
    figures = {"best_f1": scored.best_f1, "suggested": suggested, "gap": gap}
    figures["f1_curve"] = {f"{t:.3f}": f1_at(scored, t) for t in CURVE}
    if rules:
        figures["rules"] = {
            rule: (t := choose(candidates), scored.best_f1 - f1_at(scored, t)) for rule, choose in RULES.items()
        }
    return [row], figures


def oracles(candidates: dict[str, Picks], truth: dict[str, Picks], box: float, scored: Evaluation) -> dict[str, float]:
    """Gaps (best F1 - F1 there) of thresholds that use the labels, to bound what any rule on the scores can do.

    ``scored``: :func:`evaluate` of ``candidates`` against ``truth``.

    - ``own_calibration``: the expected-F1 rule with each score read through the set's own
      calibration (isotonic regression of the matches on the scores): the rule given what the
      scores alone cannot tell, how likely a score is to be a particle in *this* set;
    - ``true_count``: the threshold that keeps as many candidates as the set has particles;
    - ``one_micrograph``: the best-F1 threshold of one labelled micrograph applied to the set's
      others, the median over the micrographs (NaN with one micrograph).
    """
    tp_by, _ = match_picks(candidates, truth, box)
    score = np.concatenate([p.score for p in candidates.values()] + [np.zeros(0)])
    tp = np.concatenate([tp_by[name] for name in candidates] + [np.zeros(0, dtype=bool)])
    order = np.argsort(score, kind="stable")
    calibrated = np.empty(len(score))
    calibrated[order] = isotonic_regression(tp[order].astype(np.float64)).x
    ranked = np.sort(score)[::-1]
    gaps = []
    for name in candidates:
        others = {n: t for n, t in truth.items() if n != name}
        if not len(truth[name]) or not any(len(t) for t in others.values()):
            continue
        one = evaluate({name: candidates[name]}, {name: truth[name]}, box)
        rest = evaluate({n: p for n, p in candidates.items() if n != name}, others, box)
        gaps.append(rest.best_f1 - f1_at(rest, one.best_threshold))
    return {
        "own_calibration": scored.best_f1 - f1_at(scored, expected_f1_threshold(score, calibrated)),
        "true_count": scored.best_f1 - f1_at(scored, ranked[min(scored.n_true, len(ranked)) - 1]),
        "one_micrograph": float(np.median(gaps)) if gaps else float("nan"),
    }


def development(work: Path, model_path: Path | None = None, name: str = "generic") -> list[str]:
    """The rule on the development sets: benchmarks/validate.py's simulated sets (unseen 1jnb/6msm, the targets,
    packed 4v1w; made into data-generated/validation if missing) and :data:`DEVELOPMENT_SETS` (into ``work``),
    picked at default settings, with the oracles' gaps (:func:`oracles`). ``model_path``: another model to
    score than the shipped one (its picks go to ``work/<name>-<set>``)."""
    model, meta = checkpoint.load_model(model_path)
    found = []
    for labelled in simulated_sets():
        truth = labelled.read_truth()
        picker = _picker(
            model, meta, diameter_A=labelled.diameter_A, pixel_size=labelled.pixel_size, threshold=CANDIDATE_FLOOR
        )
        picked = _pick_all(picker, list(labelled.micrographs))[0]
        found.append((labelled.name, {stem: p for stem, p in picked.items() if stem in truth}, truth, labelled.box_px))
    for set_name in DEVELOPMENT_SETS:
        labelled = simulated_set(set_name, work)
        found.append(
            (
                set_name,
                read_candidates(pick(labelled, model_path, work / f"{name}-{set_name}")),
                labelled.truth,
                labelled.box,
            )
        )
    rows = [
        f"| set | particles | best F1 | at score | suggested | gap | gap at default {PICK_THRESHOLD:g} | "
        "oracle: own calibration | oracle: true count | one labelled micrograph (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    columns = {"gap": [], "default": [], "own_calibration": [], "true_count": [], "one_micrograph": []}
    for set_name, candidates, truth, box in found:
        scored = evaluate(candidates, truth, box)
        suggested = suggest_threshold(candidates)
        figures = {
            "gap": scored.best_f1 - f1_at(scored, suggested),
            "default": scored.best_f1 - f1_at(scored, PICK_THRESHOLD),
            **oracles(candidates, truth, box, scored),
        }
        for key, value in figures.items():
            columns[key].append(value)
        # round(..) + 0.0: a gap of -1e-17 (F1 read as 2PR/(P+R)) prints as 0.000, not -0.000
        rows.append(
            f"| {set_name} | {sum(len(t) for t in truth.values())} | {scored.best_f1:.3f} | {scored.best_threshold:.3f} | "
            f"{suggested:.3f} | " + " | ".join(f"{round(v, 3) + 0.0:.3f}" for v in figures.values()) + " |"
        )
    summary = []
    for values in columns.values():
        values = np.asarray(values)
        summary.append(
            f"{int(np.sum(values > 0.03))} > 0.03, max {np.nanmax(values):.3f}, mean {np.nanmean(values):.3f}"
        )
    rows.append(f"| **{len(found)} sets** | | | | | " + " | ".join(summary) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the simulated sets and pick outputs")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=CKPT",
        help="another model, scored on β-gal only (with --development: instead of the shipped one, on every set)",
    )
    parser.add_argument("--real-only", action="store_true", help="only the bundled real micrographs")
    parser.add_argument("--rules", action="store_true", help="also score the alternatives in RULES (F1 gaps)")
    parser.add_argument(
        "--development",
        action="store_true",
        help="instead: the rule and the oracles on the development sets (validate.py's and DEVELOPMENT_SETS)",
    )
    args = parser.parse_args()
    if args.development:
        name, _, path = args.model[0].partition("=") if args.model else ("generic", "", "")
        print("\n".join(development(args.work, Path(path) if path else None, name)))
        return
    rows = [
        f"generic = the shipped model, git hash-object {model_hash(None)}",
        "",
        "| model | set | micrographs | particles | AP | best F1 | at score | suggested | F1 there | gap | F1 at default "
        f"{PICK_THRESHOLD:g} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    figures = {}
    for sets in labelled_sets(args.work, simulated=not args.real_only):
        lines, figures[f"generic/{sets.name}"] = run("generic", None, sets, args.work, args.rules)
        rows += lines
    for spec in args.model:
        name, _, path = spec.partition("=")
        bgal = real_sets()[0]
        lines, figures[f"{name}/bgal"] = run(name, Path(path), bgal, args.work, args.rules)
        rows += lines
    worst = max(f["gap"] for f in figures.values())
    rows += ["", f"largest gap (best F1 - F1 at the suggestion): {worst:.3f}", "", "F1 at each threshold:", ""]
    rows += ["| model / set | " + " | ".join(f"{t:g}" for t in CURVE) + " |", "|---" * (len(CURVE) + 1) + "|"]
    rows += [
        f"| {key} | " + " | ".join(f"{v:.3f}" for v in f["f1_curve"].values()) + " |" for key, f in figures.items()
    ]
    print("\n".join(rows))
    (args.work / "threshold_rule.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
