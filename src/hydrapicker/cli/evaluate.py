"""Score particle picks against true particles: AP, AUROC, best F1, PR and ROC curves.

Picks and truth may be in any supported coordinate format (RELION STAR, EMAN/crYOLO BOX,
crYOLO CBOX, Topaz, cryoSPARC .cs, CSV), chosen from each file's suffix unless named.
Micrographs are matched by name (the micrograph file's stem). `simulate`'s coordinates folder
reads as it is: its NAME_decoys.star files (carbon edges, contamination ...) are skipped. Every pick and true particle
is a square box of --box px; a pick is a true positive when it overlaps a free true box
with IoU >= --threshold, highest score first, pooled over all micrographs.

Example:
  hydrapicker evaluate picks/*.star --truth labels/*.csv --box 27 --json scores.json --plots plots/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydrapicker.defaults import COORDINATE_FORMATS, MATCH_IOU

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = sorted(COORDINATE_FORMATS)
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("picks", nargs="+", type=Path, metavar="PICKS", help="coordinate files with the picks to score")
    inputs.add_argument(
        "--truth", nargs="+", type=Path, required=True, metavar="TRUTH", help="coordinate files with the true particles"
    )
    inputs.add_argument("--picks-format", choices=formats, help="format of the picks files (default: from the suffix)")
    inputs.add_argument("--truth-format", choices=formats, help="format of the truth files (default: from the suffix)")
    matching = parser.add_argument_group("matching")
    matching.add_argument(
        "--box", type=float, required=True, metavar="PX", help="box edge in pixels for picks and true particles"
    )
    matching.add_argument(
        "--threshold",
        type=float,
        default=MATCH_IOU,
        metavar="IOU",
        help="IoU at or above which a pick matches (default: %(default)s)",
    )
    matching.add_argument(
        "--ignore-unlabelled",
        action="store_true",
        help="drop picks on micrographs that have no truth (default: an error)",
    )
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--json", type=Path, metavar="FILE", help="write the scores (pooled and per micrograph) as JSON"
    )
    outputs.add_argument("--plots", type=Path, metavar="DIR", help="write pr.png, roc.png and the run record into DIR")


def main(args: argparse.Namespace) -> int:
    import json

    from hydrapicker.cli._common import write_run_record
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.evaluate import evaluate, format_table, write_curves
    from hydrapicker.io.coordinates import read_picks_files, without_decoys
    from hydrapicker.io.files import atomic_write_text, refuse_overwriting_inputs

    for flag, path in (("--json", args.json), ("--plots", args.plots)):
        if path is not None and (path.is_dir() if flag == "--json" else path.is_file()):
            raise HydraPickerError(f"{flag} {path}: is a {'folder' if flag == '--json' else 'file'}")
    outputs = [args.json] if args.json is not None else []
    outputs += [args.plots / name for name in ("pr.png", "roc.png", "command.json")] if args.plots is not None else []
    refuse_overwriting_inputs(outputs, [*args.picks, *args.truth], "evaluate output")
    truth = read_picks_files(without_decoys(args.truth, "--truth"), args.truth_format)
    picks = read_picks_files(args.picks, args.picks_format)
    evaluation = evaluate(picks, truth, args.box, args.threshold, ignore_unlabelled=args.ignore_unlabelled)
    print(format_table(evaluation))
    if args.plots is not None:
        write_curves(evaluation, args.plots)
        write_run_record(args.plots, args)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(evaluation.to_json(), indent=2, allow_nan=False) + "\n")
    return 0
