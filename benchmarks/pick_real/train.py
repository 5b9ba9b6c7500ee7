"""Train the small model that benchmarks/pick_real/run.py picks with (two of the three EMPIAR-10017 micrographs).

Usage: python benchmarks/pick_real/train.py OUT_DIR [--preset tiny] [--epochs 40] [--batches 20]
Stage 1 only (one head, stored as the generic head), on the project's ``train`` split; the
validation loss falls back to those same micrographs (the project has no ``val``), so it
measures fit. The third micrograph (the ``test`` split) is never seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydrapicker.data.project import load_project
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = TrainConfig(
        preset=args.preset,
        stage="1",
        epochs=args.epochs,
        batches_per_epoch=args.batches,
        val_batches=4,
        t0_epochs=args.epochs,
        seed=0,
    )
    specs = load_project(HERE / "empiar10017.toml")
    print(
        train(
            specs,
            args.out,
            config,
            resume=args.resume,
            on_epoch_end=lambda s, e, row: print(
                f"epoch {e} train {row['train_loss']:.4f} val {row['val_loss']:.4f} {row['seconds']}s", flush=True
            ),
        )
    )
