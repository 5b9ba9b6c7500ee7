"""How picking copes with a wrong particle diameter: the experiment behind ``REFINE_RADIUS``.

Runs the generic head of a benchmark run's multi-head model on one simulated micrograph per
target and unseen dataset at many diameter factors (given diameter / true diameter), keeps
every anchor's decoded centre and score, and scores pick-time strategies with
``hydrapicker.evaluate`` (IoU 0.6, the true diameter as box):

- ``plain``: NMS at the given diameter (picking before ``REFINE_RADIUS`` existed);
- ``refine r``: then each pick moved to the score²-weighted mean of the predicted centres within
  r box sizes (:func:`hydrapicker.boxes.refine_centres`);
- ``merge``: the picks at 0.8, 1 and 1.25 x the given diameter pooled, NMS at the given one;
- ``select``: of those three, the one whose 100 best picks score highest on average.

    python benchmarks/scale_search.py runs/benchmark --split val     # choose settings here
    python benchmarks/scale_search.py runs/benchmark --split test    # then look once here

``--split val`` uses each target's validation micrograph (the unseen proteins have none: their
third micrograph, which no step of the benchmark reads); ``test`` the micrograph the report
scores. Results and what they were used for: benchmarks/scale_search.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hydrapicker.boxes import decode_outputs, nms, refine_centres
from hydrapicker.checkpoint import load_model
from hydrapicker.defaults import NMS_IOU
from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks, read_micrograph, read_picks
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.inference import head_outputs
from hydrapicker.preprocess import from_rescaled, prepare_micrograph

FACTORS = (0.64, 0.72, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.56)
ERRORS = (0.8, 0.9, 1.0, 1.12, 1.25)


def collect(run: Path, split: str) -> dict[str, dict]:
    """Per dataset: true diameter (px), shape, truth, and every anchor's (x, y, score) at each factor."""
    model, meta = load_model(run / "models" / "multihead" / "model.pt")
    out = {}
    for group in ("targets", "unseen"):
        for d in json.loads((run / "data" / f"{group}.json").read_text())["datasets"]:
            stem = d["splits"]["test"][0] if split == "test" else (d["splits"]["val"] or [f"{d['name']}_0002"])[0]
            folder = run / "data" / group / d["name"]
            image = read_micrograph(next((folder / "micrographs").glob(f"{stem}.*"))).data
            diameter = d["diameter"] / d["pixel_size"]
            truth = read_picks(folder / "coordinates" / f"{stem}.star", micrograph=stem)[stem]
            anchors = {}
            for f in FACTORS:
                scale = ParticleSize(diameter_px=diameter * f).scale(meta.target_diameter_px)
                outputs = head_outputs(model, prepare_micrograph(image, scale, meta.target_diameter_px), "generic")
                xy, score = (t.numpy().astype(np.float64) for t in decode_outputs(outputs, meta.anchor_stride))
                kept = score >= 0.001
                anchors[f] = (from_rescaled(xy[kept], scale).reshape(-1, 2), score[kept])
            out[d["name"]] = {
                "group": group,
                "stem": stem,
                "diameter": diameter,
                "shape": image.shape,
                "truth": replace(truth, box_size=diameter),
                "anchors": anchors,
            }
            print(f"{d['name']}: {len(truth)} particles", flush=True)
    return out


def picks_at(d: dict, f: float, refine: float = 0.0) -> np.ndarray:
    xy, score = d["anchors"][f]
    box = d["diameter"] * f
    keep = nms(xy, score, box, NMS_IOU)
    centres = refine_centres(xy[keep], xy, score, refine * box) if refine > 0 else xy[keep]
    return np.c_[centres, score[keep]]


def nearest(f: float) -> float:
    return min(FACTORS, key=lambda x: abs(x - f))


def score(d: dict, picks: np.ndarray) -> float:
    p = Picks(d["stem"], picks[:, 0], picks[:, 1], picks[:, 2], box_size=d["diameter"], shape=d["shape"])
    return evaluate({d["stem"]: p}, {d["stem"]: d["truth"]}, box_size=d["diameter"]).ap


def strategies(d: dict, g: float) -> dict[str, np.ndarray]:
    out = {"plain": picks_at(d, nearest(g))}
    for r in (0.2, 0.3, 0.4, 0.5, 0.6):
        out[f"refine {r}"] = picks_at(d, nearest(g), r)
    each = [picks_at(d, nearest(g * m)) for m in (0.8, 1.0, 1.25)]
    pooled = np.concatenate(each)
    out["merge"] = pooled[nms(pooled[:, :2], pooled[:, 2], d["diameter"] * g, NMS_IOU)]
    out["select"] = max(each, key=lambda p: np.sort(p[:, 2])[::-1][:100].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `hydrapicker benchmark` output folder")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = collect(args.run, args.split)
    rows: dict[str, dict[float, tuple[float, float]]] = {}
    for g in ERRORS:
        results: dict[str, dict[str, float]] = {}
        for name, d in data.items():
            for label, picks in strategies(d, g).items():
                results.setdefault(label, {})[name] = score(d, picks)
        for label, aps in results.items():
            tgt = np.mean([v for n, v in aps.items() if data[n]["group"] == "targets"])
            uns = np.mean([v for n, v in aps.items() if data[n]["group"] == "unseen"])
            rows.setdefault(label, {})[g] = (tgt, uns)
    print(f"\nmean AP targets / unseen on the {args.split} micrographs, by given diameter / true diameter")
    print("| strategy | " + " | ".join(f"x{g:g}" for g in ERRORS) + " | worst drop from x1 (targets) |")
    print("|---|" + "---:|" * (len(ERRORS) + 1))
    for label, by_g in rows.items():
        drop = max(by_g[1.0][0] - by_g[g][0] for g in (0.8, 1.25))
        print(f"| {label} | " + " | ".join(f"{t:.3f} / {u:.3f}" for t, u in by_g.values()) + f" | {drop:.3f} |")


if __name__ == "__main__":
    main()
