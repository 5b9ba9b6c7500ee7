"""Dataset-level size estimate: pool the confident cells of every micrograph of a dataset, pick all at one corrected diameter."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.defaults import SIZE_CORRECTION_RANGE, SIZE_MIN_SCORE, SIZE_TOLERANCE
from hydrapicker.evaluate import evaluate
from hydrapicker.io import read_micrograph, read_picks
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.inference import head_outputs, size_map
from hydrapicker.picking.picker import PickSettings, pick_micrograph
from hydrapicker.preprocess import prepare_micrograph

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
run = Path("runs/bench")
model, meta = load_checkpoint(sys.argv[1])
out = Path(sys.argv[2])
factors = [float(x) for x in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["0.8", "1.0", "1.25"])]
groups = sys.argv[4].split(",") if len(sys.argv) > 4 else ["targets", "unseen"]
PASSES = int(os.environ.get("PASSES", "3"))
rows = []


def confident_logs(outputs, sizes):
    scores = torch.nn.functional.max_pool2d(torch.sigmoid(outputs[2])[None], 2, ceil_mode=True)[0]
    return sizes[scores >= SIZE_MIN_SCORE].double()


for group in groups:
    rec = json.loads((run / "data" / f"{group}.json").read_text())
    for d in rec["datasets"]:
        paths = sorted((run / "data" / group / d["name"] / "micrographs").glob("*"))
        true_px = d["diameter"] / d["pixel_size"]
        images = [read_micrograph(p).data for p in paths]
        truths = [
            read_picks(
                run / "data" / group / d["name"] / "coordinates" / f"{p.stem}.star",
                "star",
                micrograph=p.stem,
                box_size=true_px,
                shape=im.shape,
            )[p.stem]
            for p, im in zip(paths, images)
        ]
        for f in factors:
            given = true_px * f
            c = 1.0
            for _ in range(PASSES - 1):
                logs = torch.cat(
                    [
                        confident_logs(
                            head_outputs(
                                model,
                                pr := prepare_micrograph(
                                    im, meta.target_diameter_px / (given * c), meta.target_diameter_px
                                ),
                            ),
                            size_map(model, pr),
                        )
                        for im in images
                    ]
                )
                if not len(logs):
                    break
                k = float(torch.exp(logs.mean()))
                if abs(np.log(k)) < np.log(SIZE_TOLERANCE):
                    break
                c = float(np.clip(c * k, *SIZE_CORRECTION_RANGE))
            for p, im, t in zip(paths, images, truths):
                pk = pick_micrograph(
                    model,
                    meta,
                    im,
                    PickSettings(ParticleSize(diameter_px=given * c), threshold=0.001, correct_size=False),
                    name=p.stem,
                )
                ev = evaluate({p.stem: pk}, {p.stem: t}, box_size=true_px)
                rows.append(
                    dict(
                        group=group,
                        dataset=d["name"],
                        micrograph=p.stem,
                        factor=f,
                        ap=ev.ap,
                        picked=given * c / true_px,
                    )
                )
            print(
                d["name"],
                f,
                f"picked at {given * c / true_px:.2f}",
                " ".join(f"{r['ap']:.2f}" for r in rows if r["dataset"] == d["name"] and r["factor"] == f),
                flush=True,
            )
            out.write_text(json.dumps(rows))
