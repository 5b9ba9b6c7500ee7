"""Overlays: a micrograph with its picks drawn, as a PNG a person can look at."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hydrapicker.io.files import atomic_path
from hydrapicker.io.picks import Picks

__all__ = ["OVERLAY_COLOUR", "OVERLAY_MAX_SIZE", "overlay_image", "redraw_overlays", "write_overlay"]


#: Overlays are at most this many pixels on their long side (micrographs are block-averaged).
OVERLAY_MAX_SIZE = 1024

#: The colour of the boxes on an overlay (pure green, absent from a grey micrograph).
OVERLAY_COLOUR = (0, 255, 0)


def overlay_image(data: np.ndarray, picks: Picks, max_size: int = OVERLAY_MAX_SIZE):
    """An RGB PIL image: the micrograph contrast-stretched (0.5-99.5 percentiles), reduced by a whole
    factor to at most ``max_size`` px, with each pick's box drawn as a green square outline."""
    data = np.asarray(data, dtype=np.float32)
    factor = max(1, -(-max(data.shape) // max_size))
    rows, cols = data.shape[0] // factor, data.shape[1] // factor
    small = data[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    low, high = np.percentile(small, (0.5, 99.5))
    grey = np.clip((small - low) / max(high - low, 1e-12), 0, 1)
    image = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    h = (picks.box_size or 10.0) / factor / 2
    # Stored pixel x covers [x - 0.5, x + 0.5); overlay pixel u covers stored [u f - 0.5, (u + 1) f - 0.5).
    for x, y in zip((picks.x + 0.5) / factor - 0.5, (picks.y + 0.5) / factor - 0.5):
        draw.rectangle([round(x - h), round(y - h), round(x + h), round(y + h)], outline=OVERLAY_COLOUR, width=1)
    return image


def write_overlay(path: str | os.PathLike, data: np.ndarray, picks: Picks, max_size: int = OVERLAY_MAX_SIZE) -> None:
    """Write :func:`overlay_image` as a PNG, atomically."""
    image = overlay_image(data, picks, max_size)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def redraw_overlays(out_dir: str | os.PathLike, picks: Mapping[str, Picks]) -> tuple[list[Path], list[str]]:
    """Redraw the overlays of a pick output folder with ``picks`` (e.g. its candidates at a new threshold).

    Each micrograph's ``OUT/candidates/<stem>.json`` says where its micrograph is and where its
    overlay is, relative to OUT (written by ``pick`` with ``--overlay``); the micrograph is read again,
    the network is not run. Returns the overlays redrawn and the micrographs whose overlay could not
    be, each as one line naming it and why: no overlay path recorded (an older version), a sidecar
    missing, unreadable or with fields of the wrong kind, the micrograph gone, or the overlay not
    writable. None of these stops the others.
    """
    from hydrapicker.errors import HydraPickerError
    from hydrapicker.io.micrograph import read_micrograph
    from hydrapicker.io.run_folder import candidate_paths

    drawn, missed = [], []
    for stem, chosen in picks.items():
        _, sidecar = candidate_paths(out_dir, stem)
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            missed.append(f"{stem}: {sidecar} missing or unreadable ({exc})")
            continue
        if not isinstance(info, dict):
            missed.append(f"{stem}: {sidecar} is not a JSON object")
            continue
        if "overlay" not in info:
            if "path" not in info:  # picked by an older version: whether it drew an overlay is not known
                missed.append(f"{stem}: picked by an older version (no micrograph path in {sidecar.name})")
            continue
        micrograph, overlay = info.get("path"), info["overlay"]
        if not isinstance(micrograph, str) or not isinstance(overlay, str) or not micrograph or not overlay:
            missed.append(f"{stem}: {sidecar} gives no micrograph path or overlay path as text")
            continue
        try:
            data = read_micrograph(micrograph).data
        except (HydraPickerError, OSError, ValueError) as exc:
            missed.append(f"{stem}: cannot read {micrograph} ({exc})")
            continue
        target = Path(out_dir) / overlay  # relative to OUT (an absolute one stays as it is)
        try:
            write_overlay(target, data, chosen)
        except (HydraPickerError, OSError) as exc:
            missed.append(f"{stem}: cannot write {target} ({exc})")
            continue
        drawn.append(target)
    return drawn, missed
