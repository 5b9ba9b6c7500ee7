# Per-micrograph size correction on every zero-shot micrograph of runs/bench: see README.md here.
"""Zero-shot diameter curve on every target / unseen micrograph (the generic head saw none): per-micrograph AP, corrected and as given."""

import json
import os
import sys
from pathlib import Path

import torch

from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.evaluate import evaluate
from hydrapicker.io import read_micrograph, read_picks
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.picker import PickSettings, pick_micrograph

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
run = Path("runs/bench")
model, meta = load_checkpoint(sys.argv[1])
out = Path(sys.argv[2])
factors = [float(x) for x in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["0.8", "1.0", "1.25"])]
rows = []
for group in ("targets", "unseen"):
    rec = json.loads((run / "data" / f"{group}.json").read_text())
    for d in rec["datasets"]:
        for path in sorted((run / "data" / group / d["name"] / "micrographs").glob("*")):
            coords = run / "data" / group / d["name"] / "coordinates" / f"{path.stem}.star"
            image = read_micrograph(path).data
            true_px = d["diameter"] / d["pixel_size"]
            truth = read_picks(coords, "star", micrograph=path.stem, box_size=true_px, shape=image.shape)[path.stem]
            for f in factors:
                for corr in (False, True):
                    p = pick_micrograph(
                        model,
                        meta,
                        image,
                        PickSettings(ParticleSize(diameter_px=true_px * f), threshold=0.001, correct_size=corr),
                        name=path.stem,
                    )
                    ev = evaluate({path.stem: p}, {path.stem: truth}, box_size=true_px)
                    rows.append(
                        dict(
                            group=group,
                            dataset=d["name"],
                            micrograph=path.stem,
                            factor=f,
                            corrected=corr,
                            ap=ev.ap,
                            picked=p.box_size / true_px,
                        )
                    )
            print(
                path.stem,
                " ".join(
                    f"{r['factor']}{'c' if r['corrected'] else 'f'}={r['ap']:.2f}@{r['picked']:.2f}"
                    for r in rows
                    if r["micrograph"] == path.stem
                ),
                flush=True,
            )
            out.write_text(json.dumps(rows))
