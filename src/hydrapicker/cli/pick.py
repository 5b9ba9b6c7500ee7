"""Pick particles in micrographs and write their coordinates for RELION, cryoSPARC, crYOLO, Topaz.

MICROGRAPHS are files, folders or globs (MRC, TIFF, PNG/JPEG). Each micrograph is rescaled so
its particle is the model's particle size, picked with one head (default: generic, zero-shot),
and its picks are written, in the micrograph's own pixel frame, to OUT/<format>/<name><suffix>
for every --format, plus OUT/csv/<name>.csv and OUT/picks.csv (micrograph,x,y,score for all).
Micrographs larger than --tile px (after rescaling) are picked in overlapping tiles.

A rerun with the same OUT skips micrographs whose output files are all there (--overwrite redoes
them); a rerun with other picking options (threshold, diameter, model, ...) into an OUT that holds
picks is refused, naming what differs, unless --overwrite. No output may land on a micrograph
(--overlay into a folder of PNG micrographs is refused). Unreadable micrographs are reported and skipped,
and listed at the end; the exit status is 1 only when no micrograph could be picked, and such a run
leaves nothing behind (no OUT it created, no run record or picks.csv of its own).

Every candidate down to score 0.01 is also kept in OUT/candidates/, whatever --threshold is:
`hydrapicker threshold OUT` shows the score histogram, suggests a threshold and re-writes the
outputs at another one without picking again.

--watch follows MICROGRAPHS during collection: each micrograph is picked once it is complete
(same size on two looks --poll seconds apart, and readable); one that stays unreadable is
reported once and tried again only if it changes. It stops after --idle seconds with nothing
new, or on Ctrl-C after the micrograph being picked; run it again to go on where it stopped.

Example:
  hydrapicker pick 'micrographs/*.mrc' --out picks/ --model run/model.pt --diameter-A 190 --overlay picks/overlays
  hydrapicker pick 'incoming/*.mrc' --out picks/ --diameter-A 190 --watch --idle 1800
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from hydrapicker.cli._common import add_particle_size_arguments, add_pick_placing_arguments
from hydrapicker.defaults import (
    COORDINATE_FORMATS,
    PICK_ONE_PASS_SIZE,
    PICK_THRESHOLD,
    PICK_TILE_SIZE,
    WATCH_IDLE_S,
    WATCH_POLL_S,
)

__all__ = ["add_arguments", "main"]


def _formats(text: str) -> list[str]:
    return [f.strip().lower() for f in text.split(",") if f.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("micrographs", nargs="+", metavar="MICROGRAPHS", help="micrograph files, folders or globs")
    inputs.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    inputs.add_argument(
        "--model",
        type=Path,
        metavar="CKPT",
        help="checkpoint from `hydrapicker train` (default: the shipped generic model)",
    )
    inputs.add_argument(
        "--head", default="generic", metavar="NAME", help="head to pick with (default: %(default)s, zero-shot)"
    )
    add_particle_size_arguments(parser, "Å per pixel (default: from the MRC header)")
    picking = parser.add_argument_group("picking")
    picking.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help=f"lowest score written (default: OUT's, set with `hydrapicker threshold OUT --set` or by the run before, else {PICK_THRESHOLD}; "
        "a very low one, e.g. 0.001, keeps the ranking for AP)",
    )
    add_pick_placing_arguments(picking)
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--format",
        type=_formats,
        action="extend",  # --format star --format box: both (not the last one alone)
        metavar="LIST",
        help=f"comma-separated coordinate formats, or --format given more than once "
        f"(default: all of {','.join(COORDINATE_FORMATS)}; csv is always written)",
    )
    outputs.add_argument(
        "--overlay", type=Path, metavar="DIR", help="also write PNGs of the micrographs with the picks drawn"
    )
    outputs.add_argument(
        "--overwrite",
        action="store_true",
        help="pick again micrographs whose outputs exist (and replace a picks.csv or command.json no pick run wrote)",
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs (default: %(default)s)"
    )
    run.add_argument(
        "--workers", type=int, default=2, metavar="N", help="threads reading micrographs ahead (default: %(default)s)"
    )
    run.add_argument(
        "--tile",
        type=int,
        metavar="PX",
        help=f"run the network in tiles of PX rescaled px on micrographs larger than PX (default: one pass up to "
        f"{PICK_ONE_PASS_SIZE} px, tiles of {PICK_TILE_SIZE} px beyond; smaller tiles, less memory)",
    )
    run.add_argument(
        "--bf16", action="store_true", help="bfloat16 convolutions (faster on recent CPUs; scores change slightly)"
    )
    watching = parser.add_argument_group("watching a folder during collection")
    watching.add_argument(
        "--watch", action="store_true", help="keep following MICROGRAPHS and pick each new one once it is complete"
    )
    watching.add_argument(
        "--idle",
        type=float,
        default=WATCH_IDLE_S,
        metavar="S",
        help="with --watch: stop after S seconds with nothing new (default: only on Ctrl-C)",
    )
    watching.add_argument(
        "--poll",
        type=float,
        default=WATCH_POLL_S,
        metavar="S",
        help="with --watch: seconds between looks (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    from hydrapicker import distributed

    # several processes under torchrun: micrographs sharded by rank; gloo lets ranks share a GPU
    with distributed.session(args.device, backend="gloo"):
        return _pick(args)


def _pick(args: argparse.Namespace) -> int:
    from hydrapicker import distributed
    from hydrapicker.checkpoint import load_model
    from hydrapicker.cli._common import pick_record_options, pick_settings, write_run_record
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.io.coordinates import check_formats
    from hydrapicker.io.micrograph import expand_micrographs
    from hydrapicker.io.run_folder import check_outputs_apart, current_threshold, foreign_files, picking_changes
    from hydrapicker.picking.picker import Picker
    from hydrapicker.picking.runner import pick_files_sharded
    from hydrapicker.picking.watch import watch_folder

    if args.out.is_file():
        raise HydraPickerError(f"--out {args.out}: is a file, not a folder")
    formats = check_formats(args.format or list(COORDINATE_FORMATS))
    if args.watch and distributed.world_size() > 1:
        raise HydraPickerError("--watch runs in one process: start it without torchrun")
    paths = [] if args.watch else expand_micrographs(args.micrographs)  # a watched folder may be empty so far
    foreign = None if args.overwrite else foreign_files(args.out)
    if foreign:
        raise HydraPickerError(f"{foreign}; give another --out, or pass --overwrite to replace them")
    if args.threshold is None:  # the folder's (a rerun goes on at it); recorded in the run record as the value used
        recorded = current_threshold(args.out)
        args.threshold = PICK_THRESHOLD if recorded is None else recorded
    model, meta = load_model(args.model)
    settings = pick_settings(args)
    picker = Picker(model, meta, settings)
    picker.check_paths(paths)
    check_outputs_apart(args.out, paths, formats, args.overlay)
    options = pick_record_options(
        settings,
        micrographs=args.micrographs,
        format=formats,
        overlay=args.overlay,
        model=args.model,
        workers=args.workers,
        overwrite=args.overwrite,
        watch=args.watch,
        idle=args.idle,
        poll=args.poll,
    )
    changes = [] if args.overwrite else picking_changes(args.out, options)
    if changes:  # a rerun would skip the micrographs done and leave two kinds of picks in one folder
        raise HydraPickerError(
            f"--out {args.out}: holds picks made with other options ({'; '.join(changes)}); "
            "pass --overwrite to pick them again with these, or give another --out"
        )
    undo = None if args.watch else _Undo.before(args.out)
    try:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HydraPickerError(f"--out {args.out}: cannot make the folder ({exc.strerror or exc})") from exc
        if distributed.is_main():
            write_run_record(args.out, args, options)
        if args.watch:
            report = watch_folder(
                args.micrographs,
                args.out,
                picker,
                formats,
                poll=args.poll,
                idle=args.idle,
                overlay_dir=args.overlay,
                workers=args.workers,
                overwrite=args.overwrite,
            )
        else:
            report = pick_files_sharded(
                paths,
                args.out,
                picker,
                formats,
                overlay_dir=args.overlay,
                workers=args.workers,
                overwrite=args.overwrite,
            )
    except BaseException:
        # A run that stops on an error (or Ctrl-C) before it picked anything takes back what it wrote: the
        # folder it created, or its record and picks.csv in one that was there. One that picked some keeps
        # them (complete files: a rerun goes on from there). In one process only: other ranks may be writing.
        if undo is not None and distributed.world_size() == 1 and not undo.picked_any():
            with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
                undo.run()
        raise
    nothing = report.failed and not report.picked and not report.skipped
    if not distributed.is_main():  # rank 0 reports the whole run; every rank exits with its status
        return 1 if nothing else 0
    taken_back = nothing and undo is not None
    if taken_back:
        undo.run()
    rate = len(report.picked) / report.seconds if report.seconds > 0 else float("nan")
    where = f"nothing written to {args.out}" if taken_back else f"picks in {args.out}"
    print(
        f"picked {len(report.picked)} micrographs ({report.n_picks} particles, {rate:.2f} micrographs/s), "
        f"skipped {len(report.skipped)} already done, {len(report.failed)} failed; {where}"
    )
    if report.failed:
        print(f"{len(report.failed)} micrograph(s) could not be picked:", file=sys.stderr)
        for reason in report.failed.values():
            print(f"  {reason}", file=sys.stderr)  # each names its micrograph
    return 1 if nothing else 0


class _Undo:
    """What a run that picks nothing takes back: the folders it created, or its files in a folder that was there."""

    def __init__(
        self,
        out: Path,
        created: Path | None,
        record: bytes | None,
        new_files: list[Path],
        tables: dict[str, int],
    ) -> None:
        self.out, self.created, self.record, self.new_files, self.tables = out, created, record, new_files, tables

    @classmethod
    def before(cls, out: Path) -> _Undo:
        """Note what there is before the run writes anything into ``out``."""
        from hydrapicker.io.run_folder import RUN_RECORD

        created = None
        for folder in (out, *out.parents):  # the outermost folder that mkdir(parents=True) will create
            if folder.exists():
                break
            created = folder
        record = out / RUN_RECORD
        previous = record.read_bytes() if record.is_file() else None
        new_files = [p for p in (record, out / "picks.csv") if not p.exists()]
        return cls(out, created, previous, new_files, _picks_tables(out))

    def picked_any(self) -> bool:
        """Whether the run has written a micrograph's picks (a picks table new or re-written since :meth:`before`)."""
        return _picks_tables(self.out) != self.tables

    def run(self) -> None:
        import shutil

        from hydrapicker.io.files import atomic_write_bytes
        from hydrapicker.io.run_folder import RUN_RECORD

        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        if self.record is not None:
            atomic_write_bytes(self.out / RUN_RECORD, self.record)
        for path in self.new_files:
            path.unlink(missing_ok=True)


def _picks_tables(out: Path) -> dict[str, int]:
    """``OUT/csv``'s picks tables, each with its modification time (ns)."""
    from hydrapicker.io.run_folder import tables

    found = {}
    for path in tables(out / "csv"):
        with contextlib.suppress(OSError):
            found[path.name] = path.stat().st_mtime_ns
    return found
