"""Simulate the whole training collection reproducibly from a seed, and say how long it took.

Every structure in data/structures (one copy of the two-copy asymmetric units), several
imaging conditions each (pixel size, defocus, dose, ice, crowding, rendering drawn per
condition), micrographs spread over processes. Writes OUT/<dataset>/... and OUT/collection.toml,
a project file that includes every dataset.

Usage:
  .venv/bin/python scripts/make_training_collection.py --out data-generated/collection            # everything
  .venv/bin/python scripts/make_training_collection.py --out /tmp/c --only 1hvr 4hhb --micrographs 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydrapicker.errors import HydraPickerError
from hydrapicker.simulate.collection import simulate_collection, structure_files

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=Path, default=ROOT / "data" / "structures")
    parser.add_argument("--out", type=Path, default=ROOT / "data-generated" / "collection")
    parser.add_argument("--only", nargs="+", metavar="ID", help="structure ids to simulate (default: all)")
    parser.add_argument(
        "--conditions", type=int, default=3, help="imaging conditions per structure (default: %(default)s)"
    )
    parser.add_argument("--micrographs", type=int, default=10, help="micrographs per condition (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=1024, help="micrograph edge in stored pixels (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        files = structure_files(args.structures, args.only)
        if not files:
            raise HydraPickerError(
                f"{args.structures}: no atomic models found" + (f" for {args.only}" if args.only else "")
            )
        result = simulate_collection(
            files,
            args.out,
            conditions=args.conditions,
            micrographs=args.micrographs,
            seed=args.seed,
            processes=args.processes,
            size=args.size,
        )
    except HydraPickerError as exc:
        print(f"make_training_collection: error: {exc}", file=sys.stderr)
        return 1
    per = result.seconds / max(result.micrographs, 1)
    print(
        f"{result.datasets} datasets, {result.micrographs} micrographs in {result.seconds:.1f} s "
        f"({per:.2f} s per micrograph wall-clock on {args.processes} processes); project: {result.project}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
