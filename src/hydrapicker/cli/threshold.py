"""Choose the score threshold of a pick output folder, and re-write its files at a new one without picking again.

OUT is a folder written by `hydrapicker pick`, which keeps every candidate's score (down to
0.01) in OUT/candidates/. Without --set: prints the score histogram, the number of picks per
micrograph at a range of thresholds and a suggested threshold, and writes
score_histogram.png and picks_per_micrograph.png (into --plots, default OUT). With --set T:
re-writes every coordinate file (each format the pick run wrote), OUT/csv/ and
OUT/picks.csv at threshold T, records it in OUT/threshold.json, and redraws the overlays
(pick --overlay) from the stored candidates and the micrographs, without the network.

The suggestion is the threshold of highest expected F1, each candidate's score read as the
probability that it is a particle. With the shipped generic model it came within 0.02 F1 of the
best-F1 threshold on the bundled β-gal and T20S micrographs and on three of five small simulated
sets, but 0.097 under it on a sparse set of a small protein (benchmarks/threshold_rule.md).
A starting point: look at the overlays, or use `hydrapicker evaluate` (best-F1 threshold) where
you have labels.

T is recorded in OUT/threshold.json: a later `pick` into OUT without --threshold uses it, and a
running `pick --watch` switches to it for the micrographs it picks next.

Example:
  hydrapicker threshold picks/
  hydrapicker threshold picks/ --set 0.3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder of `hydrapicker pick`")
    parser.add_argument("--set", type=float, metavar="T", help="re-write OUT's coordinate files at threshold T")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="where to write the PNGs (default: OUT)")


def _recorded_overlays(out: Path) -> str | None:
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.io.run_folder import RunRecord

    try:
        record = RunRecord.read(out)
    except HydraPickerError:
        return None
    return record.overlay if record is not None else None


def main(args: argparse.Namespace) -> int:
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.io.run_folder import current_threshold
    from hydrapicker.picking.overlay import redraw_overlays
    from hydrapicker.threshold import format_summary, read_candidates, rewrite_outputs, suggest_threshold, write_plots

    if not args.out.is_dir():
        raise HydraPickerError(f"{args.out}: no such folder (expected the output folder of `hydrapicker pick`)")
    if args.plots is not None and args.plots.is_file():
        raise HydraPickerError(f"--plots {args.plots}: is a file, not a folder")
    if args.set is not None:
        done = rewrite_outputs(args.out, args.set)
        previous = "unknown" if done.previous is None else f"{done.previous:g}"
        print(
            f"re-wrote {done.n_micrographs} micrograph(s) at threshold {done.threshold:g} (was {previous}): "
            f"{done.n_picks} picks in {', '.join(done.formats)} and {args.out / 'picks.csv'}"
        )
        # from the picks just written: a micrograph whose overlay cannot be redrawn is named, not fatal
        drawn, missed = redraw_overlays(args.out, done.picks)
        if drawn:
            print(f"redrew {len(drawn)} overlay(s) in {drawn[0].parent.resolve()}")
        overlays = _recorded_overlays(args.out)
        if missed and (drawn or overlays is not None):  # the run drew overlays: these ones are stale
            print(
                f"warning: {len(missed)} overlay(s) in {overlays} still show the old picks; "
                "pick them again with --overwrite to redraw them:",
                file=sys.stderr,
            )
            for line in missed[:10]:
                print(f"  {line}", file=sys.stderr)
            if len(missed) > 10:
                print(f"  ... and {len(missed) - 10} more", file=sys.stderr)
        return 0
    candidates = read_candidates(args.out)
    suggested = suggest_threshold(candidates)
    current = current_threshold(args.out)
    print(format_summary(candidates, suggested, current))
    written = write_plots(candidates, args.plots or args.out, suggested, current)
    print("plots: " + ", ".join(str(p) for p in written))
    return 0
