"""Run as a RELION 5 External job: pick the micrographs of --in_mics into the job folder --o.

RELION calls the External job's executable from the project folder as
  EXECUTABLE --o External/job005/ --in_mics CtfFind/job003/micrographs_ctf.star --LABEL VALUE ... --j N
so set, in RELION's External job: Input tab, "External executable" = hydrapicker-relion (or
"hydrapicker relion"), "Input micrographs" = a micrographs STAR file; Params tab, one row per
option below without its leading dashes, e.g. label diameter-A, value 190. The pixel size comes
from the optics table of --in_mics.

Writes OUT/star/<name>.star per micrograph, OUT/autopick.star (the list of coordinate files that
RELION's Extract job takes as its input coordinates), RELION_OUTPUT_NODES.star and
RELION_JOB_EXIT_SUCCESS (or RELION_JOB_EXIT_FAILURE), plus the usual OUT/csv, OUT/picks.csv and
OUT/candidates, so `hydrapicker report OUT` works on the job folder too.

Example (from the RELION project folder):
  hydrapicker relion --o External/job005/ --in_mics CtfFind/job003/micrographs_ctf.star --diameter-A 190
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments, add_pick_placing_arguments
from hydrapicker.defaults import PICK_ONE_PASS_SIZE, PICK_THRESHOLD, PICK_TILE_SIZE

__all__ = ["add_arguments", "main", "entry_point"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    relion = parser.add_argument_group("what RELION passes")
    relion.add_argument(
        "--o", dest="job_dir", type=Path, required=True, metavar="DIR", help="the job folder (External/jobNNN/)"
    )
    relion.add_argument(
        "--in_mics",
        type=Path,
        required=True,
        metavar="STAR",
        help="micrographs STAR file (data_optics + data_micrographs)",
    )
    relion.add_argument("--j", dest="threads", type=int, default=None, metavar="N", help="CPU threads for the network")
    relion.add_argument(
        "--pipeline_control", metavar="DIR", help=argparse.SUPPRESS
    )  # passed by some RELION versions; unused
    add_particle_size_arguments(parser, "Å per pixel (default: _rlnMicrographPixelSize of each optics group)")
    picking = parser.add_argument_group("picking (RELION Params tab: label without the dashes)")
    picking.add_argument("--model", type=Path, metavar="CKPT", help="checkpoint (default: the shipped generic model)")
    picking.add_argument("--head", default="generic", metavar="NAME", help="head to pick with (default: %(default)s)")
    picking.add_argument(
        "--threshold",
        type=float,
        default=PICK_THRESHOLD,
        metavar="T",
        help="lowest score written (default: %(default)s)",
    )
    add_pick_placing_arguments(picking)
    picking.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs (default: %(default)s)"
    )
    picking.add_argument(
        "--tile",
        type=int,
        metavar="PX",
        help=f"run the network in tiles of PX rescaled px on micrographs larger than PX (default: one pass up to "
        f"{PICK_ONE_PASS_SIZE} px, tiles of {PICK_TILE_SIZE} px beyond; smaller tiles, less memory)",
    )
    picking.add_argument("--bf16", action="store_true", help="bfloat16 convolutions")
    picking.add_argument("--overwrite", action="store_true", help="pick again micrographs whose outputs exist")


def main(args: argparse.Namespace) -> int:
    import torch

    from hydrapicker.checkpoint import load_model
    from hydrapicker.cli._common import pick_record_options, pick_settings, write_run_record
    from hydrapicker.picking.picker import Picker
    from hydrapicker.relion import JobAborted, mark_job_finished, read_micrographs_star, run_external_job

    try:
        if args.threads is not None and args.threads > 0:
            torch.set_num_threads(args.threads)
        model, meta = load_model(args.model)
        settings = pick_settings(args)
        # the run record names the micrographs picked, as `pick`'s does (hydrapicker report reads it)
        micrographs = [
            os.path.abspath(m.path) for m in read_micrographs_star(args.in_mics)
        ]  # links kept: names as given
        args.job_dir.mkdir(parents=True, exist_ok=True)
        options = pick_record_options(
            settings,
            micrographs=micrographs,
            format=["star"],
            in_mics=args.in_mics,
            job_dir=args.job_dir,
            model=args.model,
            threads=args.threads,
            overwrite=args.overwrite,
        )
        write_run_record(args.job_dir, args, options)
        report = run_external_job(
            args.in_mics,
            args.job_dir,
            lambda s: Picker(model, meta, s),
            settings,
            workers=2,
            overwrite=args.overwrite,
            log=lambda line: print(line, file=sys.stderr),
        )
    except JobAborted:
        mark_job_finished(args.job_dir, "aborted")
        raise
    except BaseException:
        mark_job_finished(args.job_dir, "failure")
        raise
    mark_job_finished(args.job_dir, "success")
    print(
        f"picked {len(report.picked)} micrographs ({report.n_picks} particles), skipped {len(report.skipped)} already done, "
        f"{len(report.failed)} failed; coordinates for RELION in {args.job_dir / 'autopick.star'}"
    )
    for reason in report.failed.values():
        print(f"  not picked: {reason}", file=sys.stderr)
    return 0


def entry_point(argv: Sequence[str] | None = None) -> int:
    """The ``hydrapicker-relion`` console script: one executable name for RELION's External job field."""
    from hydrapicker.cli import main as cli_main

    return cli_main(["relion", *(sys.argv[1:] if argv is None else argv)])
