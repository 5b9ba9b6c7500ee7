"""Helpers shared by the CLI verbs: the particle-size and pick-placing options, the run record of an output folder."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from hydrapicker.defaults import NMS_IOU, REFINE_RADIUS
from hydrapicker.particle_size import ParticleSize

if TYPE_CHECKING:
    from hydrapicker.picking.picker import PickSettings

__all__ = [
    "add_particle_size_arguments",
    "add_pick_placing_arguments",
    "particle_size",
    "pick_record_options",
    "pick_settings",
    "write_run_record",
]


def write_run_record(out_dir: str | Path, args: argparse.Namespace, options: dict | None = None) -> Path:
    """Write ``out_dir/command.json`` (:class:`hydrapicker.io.run_folder.RunRecord`): the verb, version, time, command line
    and the run's settings; ``options`` (verbs that pick give their settings) or, by default, every option."""
    from hydrapicker.io.run_folder import RunRecord

    if options is None:
        options = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "verb"}
    return RunRecord(verb=str(getattr(args, "verb", "")), options=options).write(out_dir)


def particle_size(args: argparse.Namespace) -> ParticleSize:
    """The :class:`hydrapicker.particle_size.ParticleSize` of ``--diameter-A`` / ``--diameter-px`` / ``--pixel-size``."""
    return ParticleSize(diameter_A=args.diameter_A, diameter_px=args.diameter_px, pixel_size=args.pixel_size)


def add_particle_size_arguments(parser: argparse.ArgumentParser, pixel_size_help: str) -> None:
    """The particle diameter, in pixels or in Å with the pixel size (one of the two is required)."""
    size = parser.add_argument_group("particle size (one of)")
    sizes = size.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--diameter-px", type=float, metavar="N", help="particle diameter in micrograph pixels")
    sizes.add_argument("--diameter-A", type=float, metavar="N", help="particle diameter in Å (needs the pixel size)")
    size.add_argument("--pixel-size", type=float, metavar="A", help=pixel_size_help)


def add_pick_placing_arguments(picking: argparse._ArgumentGroup) -> None:
    """How candidates become picks (verbs that pick: ``pick``, ``relion``): duplicates, centre refinement, edges."""
    picking.add_argument(
        "--nms-iou", type=float, default=NMS_IOU, metavar="IOU", help="duplicate suppression IoU (default: %(default)s)"
    )
    picking.add_argument(
        "--refine-radius",
        type=float,
        default=REFINE_RADIUS,
        metavar="R",
        help="move each pick to the consensus of the anchors' centres within R box sizes; 0: off (default: %(default)s)",
    )
    picking.add_argument(
        "--keep-edge-picks",
        action="store_true",
        help="keep picks whose box reaches past the micrograph edge (by default they are dropped: RELION's "
        "extraction would drop them, and many sit on the border's padding stripes)",
    )
    # the default since edge picks are dropped; still accepted from older scripts
    picking.add_argument("--whole-boxes", action="store_true", help=argparse.SUPPRESS)
    picking.add_argument(
        "--fixed-diameter",
        action="store_true",
        help="use the diameter exactly as given; by default, picking with the generic head of a model with a size head "
        "reads the particle size once over up to 8 of the micrographs and picks them all at the corrected "
        "diameter when the particles look another size (within x0.6-1.6); give this when you know the diameter",
    )


def pick_settings(args: argparse.Namespace) -> PickSettings:
    """The :class:`hydrapicker.picking.picker.PickSettings` of a verb that picks (``pick``, ``relion``) from its options."""
    from hydrapicker.picking.picker import PickSettings

    return PickSettings(
        particle_size(args),
        head=args.head,
        threshold=args.threshold,
        nms_iou=args.nms_iou,
        refine_radius=args.refine_radius,
        **({} if args.tile is None else {"tile_size": args.tile, "one_pass_size": args.tile}),
        whole_boxes=not args.keep_edge_picks,
        correct_size=not args.fixed_diameter,
        device=args.device,
        bf16=args.bf16,
    )


def pick_record_options(settings: PickSettings, **run: object) -> dict:
    """The run record's options of a picking run, from its settings (not from argparse): the settings' fields,
    the particle size flattened (``diameter_A``, ``diameter_px``, ``pixel_size``, as readers of older records
    expect), and ``run`` (``micrographs``, ``format``, ``overlay`` ...)."""
    options = {k: v for k, v in asdict(settings).items() if k != "size"}
    options.update(asdict(settings.size) if settings.size is not None else {})
    options["tile"] = options.pop("tile_size")
    options["one_pass"] = options.pop("one_pass_size")
    options.update(run)
    return options
