"""How far the overfit test's training gets with more steps: AP on the two training micrographs every 5 epochs.

Same data and scoring as tests/test_overfit.py (two real β-gal micrographs, box 27 px, IoU 0.6,
scored on those same micrographs: a training-set figure), with the schedule and any TrainConfig
field given on the command line, e.g.

    .venv/bin/python benchmarks/overfit_schedule.py --epochs 60 --out /tmp/ovf \
        --set '{"target_diameter_px": 40.0, "crop_size": 368, "pad_to": 520}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_overfit import BOX_PX, OVERFIT_CONFIG, PIXEL_SIZE  # noqa: E402  (the test's own settings)

from hydrapicker.data import load_project  # noqa: E402
from hydrapicker.evaluate import evaluate  # noqa: E402
from hydrapicker.io import read_micrograph, read_picks  # noqa: E402
from hydrapicker.pick import pick_micrograph  # noqa: E402
from hydrapicker.train import load_checkpoint, train  # noqa: E402

BGAL = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets" / "real" / "empiar10017_bgal_bin4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", default="{}", help="JSON object of TrainConfig fields to override")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    project = args.out / "project.toml"
    project.write_text(
        f'[[dataset]]\nname = "bgal"\nmicrographs = "{BGAL}/empiar10017_Falcon_2012_06_12-1[45]_*.png"\n'
        f'coordinates = "{BGAL}/empiar10017_Falcon_2012_06_12-1[45]_*.csv"\n'
        f"pixel_size = {PIXEL_SIZE}\ndiameter = {BOX_PX * PIXEL_SIZE}\n"
    )
    datasets = load_project(project)
    stems = datasets[0].splits["train"]
    config = replace(OVERFIT_CONFIG, epochs=args.epochs, t0_epochs=args.epochs, **json.loads(args.set))
    images = {s: read_micrograph(BGAL / f"{s}.png").data for s in stems}
    truth = {s: read_picks(BGAL / f"{s}.csv", micrograph=s)[s] for s in stems}
    start = time.time()

    def score(stage: int, epoch: int, row: dict) -> None:
        if (epoch + 1) % 5:
            return
        model, meta = load_checkpoint(args.out / "run" / "stage1" / "last.pt")
        picks = {
            s: pick_micrograph(model, meta, images[s], PIXEL_SIZE, diameter_A=BOX_PX * PIXEL_SIZE, threshold=0.01, name=s)
            for s in stems
        }
        result = evaluate(picks, truth, box_size=BOX_PX)
        steps = (epoch + 1) * config.batches_per_epoch
        print(f"epoch {epoch + 1} steps {steps} AP {result.ap:.3f} AUROC {result.auroc:.3f} t {time.time() - start:.0f}s", flush=True)

    train(datasets, args.out / "run", config, on_epoch_end=score)


if __name__ == "__main__":
    main()
