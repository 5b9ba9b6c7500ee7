"""Difference-of-Gaussians blob picker: the classical baseline that needs no training and no labels.

Each micrograph is standardised (mean 0, std 1) and, for dark particles (the usual cryo-EM
contrast), negated so particles are bright. The DoG response G(s1) - G(s2) with s2 = K * s1 is a
band-pass that approximates a scale-normalised Laplacian of Gaussian at s1 * sqrt(K); that peaks
on a disc of radius r at sigma = r / sqrt(2) (Lindeberg's blob scale), so s1 = r / sqrt(2 K).
Picks are the local maxima of the response (window of one particle radius), thinned by the same
box NMS as ``hydrapicker pick`` (boxes of one particle diameter, IoU > NMS_IOU dropped); each
pick's score is its DoG response, in units of the micrograph's standard deviation.

Usage:
  python benchmarks/peers/dog_pick.py MICROGRAPHS... --out DIR --diameter-px N [--pixel-size A]
writes DIR/picks.csv (micrograph,x,y,score; x = column, y = row of the micrograph as stored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peer_common, when imported from elsewhere

from peer_common import add_common_arguments, micrograph_paths, particle_diameter_px, write_all_picks  # noqa: E402

from hydrapicker.boxes import nms  # noqa: E402
from hydrapicker.defaults import NMS_IOU  # noqa: E402
from hydrapicker.errors import HydraPickerError  # noqa: E402
from hydrapicker.io import Picks, read_micrograph  # noqa: E402

__all__ = ["DOG_RATIO", "dog_response", "pick_dog", "main"]

#: s2 / s1 of the two Gaussians: 1.6 is Marr and Hildreth's approximation of the LoG.
DOG_RATIO: float = 1.6


def dog_response(image: np.ndarray, diameter_px: float, polarity: str = "dark") -> np.ndarray:
    """DoG band-pass of a standardised micrograph, tuned to discs of ``diameter_px``; particles score high.

    Args:
        image: float ``[row, col]`` micrograph as stored.
        diameter_px: particle diameter in pixels of ``image``.
        polarity: ``dark`` (particles darker than the ice, the usual cryo-EM contrast) or ``light``.
    """
    if polarity not in ("dark", "light"):
        raise HydraPickerError(f"--polarity must be dark or light, got {polarity!r}")
    if not diameter_px > 0:
        raise HydraPickerError(f"particle diameter must be positive, got {diameter_px:g} px")
    data = np.asarray(image, dtype=np.float32)
    data = (data - data.mean()) / data.std()
    if polarity == "dark":
        data = -data
    sigma = diameter_px / 2 / np.sqrt(2 * DOG_RATIO)
    return ndimage.gaussian_filter(data, sigma, mode="reflect") - ndimage.gaussian_filter(
        data, DOG_RATIO * sigma, mode="reflect"
    )


def pick_dog(
    image: np.ndarray,
    diameter_px: float,
    *,
    polarity: str = "dark",
    nms_iou: float = NMS_IOU,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DoG picks of one micrograph: ``(x, y, score)`` in its pixel frame, in descending score.

    ``threshold`` (in response units) drops weaker picks; ``None`` keeps every local maximum,
    the full ranking that AP and AUROC need.
    """
    response = dog_response(image, diameter_px, polarity)
    window = max(3, 2 * int(round(diameter_px / 4)) + 1)  # about one particle radius across
    peaks = response == ndimage.maximum_filter(response, size=window, mode="nearest")
    if threshold is not None:
        peaks &= response >= threshold
    rows, cols = np.nonzero(peaks)
    score = response[rows, cols].astype(np.float64)
    xy = np.stack([cols, rows], axis=1).astype(np.float64)
    keep = nms(xy, score, diameter_px, nms_iou)
    return xy[keep, 0], xy[keep, 1], score[keep]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--polarity",
        choices=("dark", "light"),
        default="dark",
        help="particle contrast against the ice (default: %(default)s)",
    )
    parser.add_argument(
        "--nms-iou", type=float, default=NMS_IOU, metavar="IOU", help="duplicate suppression IoU (default: %(default)s)"
    )
    parser.add_argument(
        "--threshold", type=float, metavar="T", help="lowest DoG response kept (default: none, the full ranking)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        all_picks = []
        for path in micrograph_paths(args.micrographs):
            micrograph = read_micrograph(path)
            diameter = particle_diameter_px(args, micrograph)
            x, y, score = pick_dog(
                micrograph.data, diameter, polarity=args.polarity, nms_iou=args.nms_iou, threshold=args.threshold
            )
            all_picks.append(Picks(micrograph.name, x, y, score, diameter, micrograph.shape))
        out = write_all_picks(args.out, all_picks)
    except HydraPickerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{sum(len(p) for p in all_picks)} DoG picks on {len(all_picks)} micrographs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
