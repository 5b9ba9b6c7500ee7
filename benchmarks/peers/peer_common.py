"""What every baseline picker script here shares: its command line shape and its one output file.

Each peer script takes ``MICROGRAPHS... --out DIR (--diameter-px N | --diameter-A N) [--pixel-size A]``
and writes ``DIR/picks.csv`` (``micrograph,x,y,score``, hydrapicker's CSV: x = column, y = row of
the micrograph as stored, in its original pixel frame), which ``hydrapicker evaluate`` scores.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import Micrograph, Picks, write_picks
from hydrapicker.io.micrograph import expand_micrographs

__all__ = [
    "PICKS_NAME",
    "add_common_arguments",
    "micrograph_paths",
    "particle_diameter_px",
    "pixel_size_of",
    "write_all_picks",
]

#: The one file every peer script writes into its --out folder.
PICKS_NAME = "picks.csv"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "micrographs", nargs="+", metavar="MICROGRAPHS", help="micrograph files, folders or globs (MRC, TIFF, PNG/JPEG)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help=f"output folder; the picks go to DIR/{PICKS_NAME}"
    )
    add_particle_size_arguments(parser, "Å per pixel (default: from the MRC header)")


def micrograph_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Micrograph files from files, folders and globs, as ``hydrapicker pick`` expands them."""
    return expand_micrographs(patterns)


def particle_diameter_px(args: argparse.Namespace, micrograph: Micrograph) -> float:
    """The particle diameter in this micrograph's pixels, from --diameter-px or --diameter-A."""
    if args.diameter_px is not None:
        diameter = float(args.diameter_px)
    else:
        pixel_size = args.pixel_size if args.pixel_size is not None else micrograph.pixel_size
        if pixel_size is None or not pixel_size > 0:
            raise HydraPickerError(f"{micrograph.path}: --diameter-A needs --pixel-size (the file has no pixel size)")
        diameter = float(args.diameter_A) / float(pixel_size)
    if not diameter > 0:
        raise HydraPickerError(f"particle diameter must be positive, got {diameter:g} px")
    return diameter


def pixel_size_of(args: argparse.Namespace, micrograph: Micrograph) -> float | None:
    """Å per pixel from --pixel-size, else the MRC header, else ``None``."""
    return float(args.pixel_size) if args.pixel_size is not None else micrograph.pixel_size


def write_all_picks(out_dir: Path, picks: Sequence[Picks]) -> Path:
    """Write every micrograph's picks to ``out_dir/picks.csv``, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PICKS_NAME
    write_picks(path, list(picks), fmt="csv")
    return path
