"""Topaz baseline: its documented preprocessing and extraction with its shipped pretrained model.

Topaz (topaz-em, GPLv3) runs as a separate program from its own virtual environment
(``benchmarks/peers/topaz_setup.sh`` makes ``benchmarks/peers/.topaz-venv``); nothing of it is
imported here. For each micrograph:

1. read it with hydrapicker's reader and hand Topaz a float32 MRC copy, so both see the same
   array (x = column, y = row as stored);
2. ``topaz preprocess -s S``: Fourier downsampling by the integer S and Topaz's GMM
   normalisation. S follows Topaz's own advice (its GUI, topaz/gui/topaz.html: "Downsample such
   that the resulting pixelsize is about 8 angstroms"): S = max(1, round(8 Å / pixel size)).
   Without a pixel size (none given, none in the MRC header) we assume a 200 Å particle,
   i.e. pixel size = 200 Å / diameter;
3. ``topaz extract -m resnet16`` (Topaz's default pretrained model, resnet16_u64) with
   radius = half the particle diameter in downsampled pixels and threshold -6 (Topaz's default,
   p >= 0.0025: low enough to keep the ranking for AP);
4. coordinates back to the original frame: Topaz's x_coord/y_coord are the column/row of the
   downsampled array (topaz/algorithms.py), whose pixel i sits at i * (n / n_down) of the
   original along each axis (topaz/utils/image.py ``downsample`` crops the Fourier transform,
   which keeps pixel 0 in place). Topaz's own ``-x`` rescaling rounds to integers; we do not.

We call ``python -m topaz.commands.preprocess`` / ``topaz.commands.extract`` rather than the
``topaz`` entry point: the entry point imports every command, including training code that needs
torchvision, which is not installed beside the CPU torch wheel (see topaz_setup.sh). Both modules
run the same ``main`` the entry point dispatches to.

Usage:
  python benchmarks/peers/topaz_pick.py MICROGRAPHS... --out DIR --diameter-px N [--pixel-size A]
writes DIR/picks.csv (micrograph,x,y,score; score = Topaz's log-likelihood ratio) and keeps
Topaz's own output (downsampled frame) in DIR/topaz/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peer_common, when imported from elsewhere

from peer_common import add_common_arguments, micrograph_paths, particle_diameter_px, pixel_size_of, write_all_picks  # noqa: E402

from hydrapicker.errors import HydraPickerError  # noqa: E402
from hydrapicker.io import Picks, read_micrograph, read_picks, write_mrc  # noqa: E402

__all__ = [
    "TOPAZ_PIXEL_SIZE",
    "ASSUMED_PARTICLE_A",
    "DEFAULT_TOPAZ_PYTHON",
    "topaz_scale",
    "to_original_frame",
    "run_topaz",
    "main",
]

HERE = Path(__file__).resolve().parent

#: Where topaz_setup.sh puts Topaz's interpreter.
DEFAULT_TOPAZ_PYTHON = HERE / ".topaz-venv" / "bin" / "python"

#: Å per pixel Topaz recommends after downsampling (topaz/gui/topaz.html, preprocessing).
TOPAZ_PIXEL_SIZE: float = 8.0

#: Particle size assumed when no pixel size is known, to still choose a downsampling factor.
ASSUMED_PARTICLE_A: float = 200.0


def topaz_scale(pixel_size: float | None, diameter_px: float) -> int:
    """Topaz's integer downsampling factor: the one that brings the pixel size nearest 8 Å, at least 1."""
    if pixel_size is None:
        pixel_size = ASSUMED_PARTICLE_A / diameter_px
    return max(1, int(round(TOPAZ_PIXEL_SIZE / pixel_size)))


def to_original_frame(picks: Picks, original_shape: tuple[int, int], downsampled_shape: tuple[int, int]) -> Picks:
    """Topaz picks in a downsampled micrograph's pixels -> the original micrograph's pixels."""
    row_ratio = original_shape[0] / downsampled_shape[0]
    col_ratio = original_shape[1] / downsampled_shape[1]
    return Picks(
        picks.micrograph, picks.x * col_ratio, picks.y * row_ratio, picks.score, picks.box_size, original_shape
    )


def _run(command: list[str], log: Path) -> None:
    """Run one Topaz step, its output appended to ``log``; a failure names the step and its last line."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        raise HydraPickerError(
            f"Topaz failed ({' '.join(command[1:4])}, exit {done.returncode}): {lines[-1] if lines else ''} (log: {log})"
        )


def run_topaz(
    paths: list[Path],
    diameters_px: list[float],
    pixel_sizes: list[float | None],
    out_dir: Path,
    *,
    topaz_python: Path = DEFAULT_TOPAZ_PYTHON,
    model: str = "resnet16",
    threshold: float = -6.0,
    scale: int | None = None,
    threads: int = 1,
) -> list[Picks]:
    """Pick ``paths`` with Topaz; returns each micrograph's picks in its original pixel frame.

    Micrographs are grouped by (downsampling factor, extraction radius): one preprocess and one
    extract call per group. Topaz's outputs and log stay in ``out_dir/topaz``.
    """
    if not Path(topaz_python).is_file():
        raise HydraPickerError(f"{topaz_python}: no Topaz interpreter; run benchmarks/peers/topaz_setup.sh first")
    keep = out_dir / "topaz"
    keep.mkdir(parents=True, exist_ok=True)
    log = keep / "topaz.log"
    shapes: dict[str, tuple[int, int]] = {}
    groups: dict[tuple[int, int], list[tuple[str, float]]] = {}
    found: dict[str, Picks] = {}
    with tempfile.TemporaryDirectory(prefix="topaz_pick_") as tmp:
        for path, diameter, pixel_size in zip(paths, diameters_px, pixel_sizes):
            micrograph = read_micrograph(path)
            s = scale if scale is not None else topaz_scale(pixel_size, diameter)
            radius = max(1, int(round(diameter / s / 2)))
            shapes[micrograph.name] = micrograph.shape
            groups.setdefault((s, radius), []).append((micrograph.name, diameter))
            raw = Path(tmp, f"raw_s{s}_r{radius}")
            raw.mkdir(exist_ok=True)
            write_mrc(raw / f"{micrograph.name}.mrc", micrograph.data)
        for (s, radius), members in sorted(groups.items()):
            raw, pre = Path(tmp, f"raw_s{s}_r{radius}"), Path(tmp, f"pre_s{s}_r{radius}")
            raw_files = sorted(str(p) for p in raw.iterdir())
            started = time.perf_counter()
            _run(
                [
                    str(topaz_python),
                    "-m",
                    "topaz.commands.preprocess",
                    "-s",
                    str(s),
                    "-d",
                    "-1",
                    "-j",
                    str(threads),
                    "-o",
                    str(pre),
                    *raw_files,
                ],
                log,
            )
            coords = keep / f"picks_s{s}_r{radius}.txt"
            pre_files = sorted(str(p) for p in pre.glob("*.mrc"))
            _run(
                [
                    str(topaz_python),
                    "-m",
                    "topaz.commands.extract",
                    "-m",
                    model,
                    "-r",
                    str(radius),
                    "-t",
                    str(threshold),
                    "-d",
                    "-1",
                    "-j",
                    str(threads),
                    "-o",
                    str(coords),
                    *pre_files,
                ],
                log,
            )
            with open(log, "a") as handle:
                handle.write(
                    f"# {len(members)} micrographs, scale {s}, radius {radius}: {time.perf_counter() - started:.1f} s\n"
                )
            picked = read_picks(coords, "topaz") if coords.read_text().count("\n") > 1 else {}
            for name, diameter in members:
                down_shape = read_micrograph(pre / f"{name}.mrc").shape
                picks = picked.get(name, Picks.empty(name))
                picks.box_size = diameter
                found[name] = to_original_frame(picks, shapes[name], down_shape)
    return [found[name] for name in shapes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    topaz = parser.add_argument_group("Topaz")
    topaz.add_argument(
        "--topaz-python",
        type=Path,
        default=Path(os.environ.get("TOPAZ_PYTHON", DEFAULT_TOPAZ_PYTHON)),
        metavar="PY",
        help="Topaz's interpreter (default: $TOPAZ_PYTHON or %(default)s)",
    )
    topaz.add_argument(
        "--model", default="resnet16", help="Topaz pretrained model or model file (default: %(default)s = resnet16_u64)"
    )
    topaz.add_argument(
        "--threshold",
        type=float,
        default=-6.0,
        metavar="T",
        help="lowest log-likelihood ratio kept (default: %(default)s)",
    )
    topaz.add_argument(
        "--scale", type=int, metavar="S", help="downsampling factor (default: brings the pixel size nearest 8 Å)"
    )
    topaz.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="threads for Topaz (default: %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        paths = micrograph_paths(args.micrographs)
        diameters, pixel_sizes = [], []
        for path in paths:
            micrograph = read_micrograph(path)
            diameters.append(particle_diameter_px(args, micrograph))
            pixel_sizes.append(pixel_size_of(args, micrograph))
        picks = run_topaz(
            paths,
            diameters,
            pixel_sizes,
            args.out,
            topaz_python=args.topaz_python,
            model=args.model,
            threshold=args.threshold,
            scale=args.scale,
            threads=args.threads,
        )
        out = write_all_picks(args.out, picks)
    except HydraPickerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{sum(len(p) for p in picks)} Topaz picks on {len(picks)} micrographs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
