"""Helpers shared by the CLI verbs: the particle-size and pick-placing options, the run record of an output folder."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydrapicker import __version__
from hydrapicker.defaults import NMS_IOU, REFINE_RADIUS
from hydrapicker.io.files import atomic_write_text

if TYPE_CHECKING:
    from hydrapicker.pick import PickSettings

__all__ = ["add_particle_size_arguments", "add_pick_placing_arguments", "pick_settings", "write_run_record"]


def write_run_record(out_dir: str | Path, args: argparse.Namespace, name: str = "command.json") -> Path:
    """Write what produced an output folder: version, time, command line and every option."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
    record = {
        "hydrapicker_version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": sys.argv,
        "python": platform.python_version(),
        "options": options,
    }
    path = Path(out_dir) / name
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def add_particle_size_arguments(parser: argparse.ArgumentParser, pixel_size_help: str) -> None:
    """The particle diameter, in pixels or in Å with the pixel size (one of the two is required)."""
    size = parser.add_argument_group("particle size (one of)")
    sizes = size.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--diameter-px", type=float, metavar="N", help="particle diameter in micrograph pixels")
    sizes.add_argument("--diameter-A", type=float, metavar="N", help="particle diameter in Å (needs the pixel size)")
    size.add_argument("--pixel-size", type=float, metavar="A", help=pixel_size_help)


def add_pick_placing_arguments(picking: argparse._ArgumentGroup) -> None:
    """How candidates become picks (verbs that pick: ``pick``, ``relion``): duplicates, centre refinement, edges."""
    picking.add_argument("--nms-iou", type=float, default=NMS_IOU, metavar="IOU", help="duplicate suppression IoU (default: %(default)s)")
    picking.add_argument("--refine-radius", type=float, default=REFINE_RADIUS, metavar="R",
                         help="move each pick to the consensus of the anchors' centres within R box sizes; 0: off (default: %(default)s)")
    picking.add_argument("--whole-boxes", action="store_true", help="drop picks whose box reaches past the micrograph edge")
    picking.add_argument("--fixed-diameter", action="store_true",
                         help="use the diameter exactly as given; by default, picking with the generic head of a model with a size head "
                              "reads the particle size once over up to 8 of the micrographs and picks them all at the corrected "
                              "diameter when the particles look another size (within x0.6-1.6); give this when you know the diameter")  # fmt: skip


def pick_settings(args: argparse.Namespace) -> "PickSettings":
    """The :class:`hydrapicker.pick.PickSettings` of a verb that picks (``pick``, ``relion``) from its options."""
    from hydrapicker.pick import PickSettings

    return PickSettings(
        diameter_A=args.diameter_A, diameter_px=args.diameter_px, pixel_size=args.pixel_size, head=args.head,
        threshold=args.threshold, nms_iou=args.nms_iou, refine_radius=args.refine_radius, tile_size=args.tile, whole_boxes=args.whole_boxes,
        correct_size=not args.fixed_diameter, device=args.device, bf16=args.bf16,
    )  # fmt: skip
