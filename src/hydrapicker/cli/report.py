"""Write a visual report of a pick run: one self-contained HTML page, opened in any browser without a server.

PICKS_DIR is the --out folder of `hydrapicker pick` (or a RELION External job folder). The page
shows thumbnails of the micrographs with their picks drawn, a threshold slider that redraws the
picks and updates the per-micrograph counts, and the score histogram. Scores come from
PICKS_DIR/candidates/ (every candidate, so the slider goes below the run's threshold) or else
PICKS_DIR/csv/; the micrographs are those named in PICKS_DIR/command.json, or --micrographs.

Example:
  hydrapicker report picks/          # writes picks/report.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("picks_dir", type=Path, metavar="PICKS_DIR", help="output folder of `hydrapicker pick`")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write the page (default: PICKS_DIR/report.html)"
    )
    parser.add_argument(
        "--micrographs",
        nargs="+",
        metavar="PATH",
        help="micrograph files, folders or globs (default: from PICKS_DIR/command.json)",
    )
    parser.add_argument(
        "--thumbnails",
        type=int,
        default=24,
        metavar="N",
        help="micrographs shown with their picks (default: %(default)s; all are counted)",
    )
    parser.add_argument(
        "--thumbnail-size", type=int, default=512, metavar="PX", help="long side of a thumbnail (default: %(default)s)"
    )
    parser.add_argument(
        "--threshold", type=float, metavar="T", help="where the slider starts (default: the run's --threshold)"
    )
    parser.add_argument(
        "--box-size", type=float, metavar="PX", help="box edge in micrograph px, for runs whose files do not record it"
    )


def main(args: argparse.Namespace) -> int:
    from hydrapicker.report import write_report

    path = write_report(
        args.picks_dir,
        args.out,
        micrographs=args.micrographs,
        thumbnails=args.thumbnails,
        thumbnail_size=args.thumbnail_size,
        box_size=args.box_size,
        threshold=args.threshold,
    )
    print(f"report written to {path} (open it in a browser)")
    return 0
