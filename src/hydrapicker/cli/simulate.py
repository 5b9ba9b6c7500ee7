"""Simulate a labelled dataset of realistic micrographs from an atomic model (PDB/mmCIF).

Writes DIR/micrographs/ (MRC with the pixel size in the header, or PNG/JPEG for 8-bit
renderings), DIR/coordinates/NAME.star (true particles, RELION columns; x = column, y = row),
DIR/coordinates/NAME_decoys.star (carbon edge, contamination, aggregates, broken particles:
not particles), DIR/dataset.toml (a dataset entry `train` reads) and DIR/config.json.
Ranges (two values) are drawn per micrograph; one value fixes the setting.

Example: hydrapicker simulate data/structures/4hhb.pdb.gz --out sim-4hhb --n-micrographs 20 --pixel-size 1.2
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def _range(values: list[float] | None) -> tuple[float, float] | None:
    if values is None:
        return None
    return (float(values[0]), float(values[-1]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hydrapicker.simulate.config import RENDERINGS

    parser.add_argument("model", type=Path, metavar="MODEL", help="atomic model: .pdb, .cif, optionally .gz")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--n-micrographs", type=int, default=10, metavar="N", help="micrographs to write (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed: same seed, same dataset (default: %(default)s)"
    )
    parser.add_argument("--name", help="dataset name (default: sim-<structure id>)")

    geometry = parser.add_argument_group("micrograph")
    geometry.add_argument(
        "--size", type=int, nargs="+", metavar="PX", help="stored size: PX (square) or ROWS COLS (default: 1024)"
    )
    geometry.add_argument("--pixel-size", type=float, metavar="A", help="Å per stored pixel (default: 1.5)")
    geometry.add_argument(
        "--rendering",
        default="float",
        choices=[*sorted(RENDERINGS), "random"],
        help="how micrographs are stored: float sums, binned, low-pass, denoised, 8-bit PNG/JPEG, or one drawn "
        "from --seed as the training collection does (default: %(default)s)",
    )

    imaging = parser.add_argument_group("imaging")
    imaging.add_argument(
        "--defocus",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="defocus range in µm, underfocus positive (default: 1 3)",
    )
    imaging.add_argument(
        "--dose", type=float, nargs="+", metavar="E_PER_A2", help="electron dose, e/Å² (default: 30 60)"
    )
    imaging.add_argument(
        "--b-factor", type=float, nargs="+", metavar="A2", help="image envelope B, Å² (default: 40 150)"
    )
    imaging.add_argument("--no-ctf", action="store_true", help="in focus without aberrations (geometry checks)")

    specimen = parser.add_argument_group("specimen")
    specimen.add_argument(
        "--particles-per-micrograph",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="particle count range (default: from 3-40 %% area coverage)",
    )
    specimen.add_argument(
        "--ice-thickness", type=float, nargs="+", metavar="NM", help="ice thickness in nm (default: 25 60)"
    )
    specimen.add_argument(
        "--carbon-probability",
        type=float,
        metavar="P",
        help="share of micrographs with a carbon hole edge (default: 0.3)",
    )
    specimen.add_argument(
        "--contamination-probability", type=float, metavar="P", help="share with ice contamination blobs (default: 0.4)"
    )
    specimen.add_argument(
        "--aggregate-probability", type=float, metavar="P", help="share with aggregates (default: 0.4)"
    )
    specimen.add_argument(
        "--chains", help="chains to keep, e.g. ABCDEF (default: all, or one copy of known two-copy asymmetric units)"
    )

    parser.add_argument("--overwrite", action="store_true", help="replace the micrographs of an earlier run in DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from hydrapicker.cli._common import write_run_record
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.simulate import SimulationConfig, rendering_by_name, simulate_dataset

    if args.rendering == "random":
        import numpy as np

        from hydrapicker.simulate.render import random_rendering

        rendering = random_rendering(np.random.default_rng(np.random.SeedSequence([args.seed, 1])))
    else:
        rendering = rendering_by_name(args.rendering)
    changes: dict = {"rendering": rendering}
    if args.size is not None and len(args.size) > 2:
        raise HydraPickerError(f"--size {' '.join(map(str, args.size))}: give PX or ROWS COLS")
    if args.size is not None:
        changes["shape"] = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size[:2])
    if args.pixel_size is not None:
        changes["pixel_size"] = args.pixel_size
    if args.defocus is not None:
        changes["defocus_um"] = _range(args.defocus)
    if args.dose is not None:
        changes["dose"] = _range(args.dose)
    if args.b_factor is not None:
        changes["b_factor"] = _range(args.b_factor)
    if args.no_ctf:
        changes["ctf"] = False
    if args.particles_per_micrograph is not None:
        changes["particles_per_micrograph"] = _range(args.particles_per_micrograph)
    if args.ice_thickness is not None:
        lo, hi = _range(args.ice_thickness)
        changes["ice_thickness"] = (lo * 10.0, hi * 10.0)
    for name in ("carbon_probability", "contamination_probability", "aggregate_probability", "chains"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = SimulationConfig(**changes)
    toml = simulate_dataset(
        args.model,
        args.out,
        config,
        args.n_micrographs,
        args.seed,
        name=args.name,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    write_run_record(args.out, args)
    print(f"Dataset entry: {toml}")
    return 0
