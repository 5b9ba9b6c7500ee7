"""Write the shippable generic model: trunk + generic head (+ size head) of a training checkpoint, nothing else.

Dataset heads (stage 2 adds one per training dataset), optimiser state, RNG state and the
training log are dropped, so the file stays a few MB whatever the collection's size; the
metadata ``pick`` needs (preset, target diameter, stride, normalisation) and the training
config, epoch and validation loss are kept. The result loads with
``hydrapicker.checkpoint.load_checkpoint`` like any checkpoint.

Usage: .venv/bin/python scripts/ship_generic.py runs/pretrained/model.pt src/hydrapicker/assets/models/generic.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydrapicker.checkpoint import export_generic
from hydrapicker.errors import HydraPickerError


def ship_generic(checkpoint: Path, out: Path, trained_on: list[str] | None = None) -> dict:
    """Write trunk + generic head (and the size head, if it has one) of ``checkpoint`` to ``out``
    (:func:`hydrapicker.checkpoint.export_generic`); returns what was written."""
    return export_generic(checkpoint, out, trained_on)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--run-record", type=Path, help="the run's config.json (from `hydrapicker train`): its dataset names are stored"
    )
    args = parser.parse_args(argv)
    try:
        trained_on = json.loads(args.run_record.read_text())["datasets"] if args.run_record else None
        shipped = ship_generic(args.checkpoint, args.out, trained_on)
    except HydraPickerError as exc:
        print(f"ship_generic: error: {exc}", file=sys.stderr)
        return 1
    size = args.out.stat().st_size / 1e6
    size_head = " + size head" if any(k.startswith("size_head.") for k in shipped["model"]) else ""
    print(
        f"{args.out}: trunk + generic head{size_head}, preset {shipped['preset']['name']}, stage {shipped['stage']}, "
        f"epoch {shipped['epoch']}, validation loss {shipped['val_loss']:.4g}, "
        f"{len(shipped['trained_on'])} training datasets, {size:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
