"""Micrographs in and out: MRC, TIFF, PNG/JPEG to float32 ``[row, col]`` arrays.

Convention, stated once: a micrograph is a 2-D float32 array indexed ``[row, col]`` exactly
as the file stores it (mrcfile / tifffile / Pillow order, no flip). Particle coordinates
elsewhere in HydraPicker use x = column and y = row of this array.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import tifffile
from PIL import Image

from hydrapicker.defaults import MICROGRAPH_SUFFIXES
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.files import atomic_path

__all__ = [
    "Micrograph",
    "expand_micrographs",
    "is_micrograph_path",
    "list_micrographs",
    "micrograph_stem",
    "read_micrograph",
    "write_mrc",
]


@dataclass(frozen=True)
class Micrograph:
    """One micrograph as read from disk.

    Attributes:
        data: float32 array ``[row, col]``.
        pixel_size: Å per pixel from the file header, or ``None`` when the file has none.
        path: where it was read from.
    """

    data: np.ndarray
    pixel_size: float | None
    path: Path

    @property
    def name(self) -> str:
        """The file stem: the key that matches a micrograph to its coordinate files."""
        return micrograph_stem(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))


def micrograph_stem(path: str | os.PathLike) -> str:
    """File name without its micrograph suffix(es): ``a/b/mic_001.mrc`` -> ``mic_001``."""
    name = Path(path).name
    for suffix in (".gz",) + MICROGRAPH_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def is_micrograph_path(path: str | os.PathLike) -> bool:
    """True when the suffix is one we read as a micrograph."""
    return Path(path).suffix.lower() in MICROGRAPH_SUFFIXES


def read_micrograph(path: str | os.PathLike) -> Micrograph:
    """Read a 2-D micrograph (or a 1-slice stack) from MRC, TIFF, PNG or JPEG.

    Raises:
        HydraPickerError: missing, unreadable, truncated or non-2-D file, NaN/Inf pixels,
            or a constant image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_symlink():
            raise HydraPickerError(f"{path}: a link to {os.readlink(path)}, which does not exist")
        raise HydraPickerError(f"{path}: no such micrograph file")
    suffix = path.suffix.lower()
    if suffix in (".mrc", ".mrcs"):
        data, pixel_size = _read_mrc(path)
    elif suffix in (".tif", ".tiff"):
        data, pixel_size = _read_tiff(path), None
    elif suffix in (".png", ".jpg", ".jpeg"):
        data, pixel_size = _read_image(path), None
    else:
        raise HydraPickerError(
            f"{path}: unknown micrograph type {suffix!r} (expected one of {', '.join(MICROGRAPH_SUFFIXES)})"
        )
    data = _as_2d(path, data)
    if np.iscomplexobj(data):
        raise HydraPickerError(
            f"{path}: complex pixels ({data.dtype}): a Fourier transform or a complex map, not a micrograph"
        )
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise HydraPickerError(f"{path}: {bad} pixel(s) are NaN or Inf")
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise HydraPickerError(
            f"{path}: the image is constant (every pixel is {float(data.flat[0]) if data.size else 'absent'})"
        )
    return Micrograph(data=data, pixel_size=pixel_size, path=path)


def _read_mrc(path: Path) -> tuple[np.ndarray, float | None]:
    try:
        # The header first: a movie is refused by its header, not after reading its gigabytes.
        with mrcfile.open(path, mode="r", permissive=False, header_only=True) as mrc:
            header = mrc.header
            _refuse_stack(path, (int(header.nz), int(header.ny), int(header.nx)))
        with mrcfile.open(path, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data)
            voxel = float(mrc.voxel_size.x)
    except HydraPickerError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise HydraPickerError(f"{path}: not a readable MRC file ({exc})") from exc
    if data is None or data.ndim == 0:
        raise HydraPickerError(f"{path}: MRC file holds no image data")
    return data, (voxel if np.isfinite(voxel) and voxel > 0 else None)


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tiff:
            shapes = [tuple(page.shape) for page in tiff.pages]
            if len(shapes) > 1:  # tifffile reads only the first of pages that differ in size
                _refuse_stack(
                    path, (len(shapes), *shapes[0]), f" ({len(set(shapes))} page sizes)" if len(set(shapes)) > 1 else ""
                )
            return tiff.asarray()
    except HydraPickerError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise HydraPickerError(f"{path}: not a readable TIFF file ({exc})") from exc


def _refuse_stack(path: Path, shape: tuple[int, ...], detail: str = "") -> None:
    """A stack of several images is no micrograph: refused from its header, before its data is read."""
    if len(shape) == 3 and shape[0] > 1:
        raise HydraPickerError(
            f"{path}: expected a 2-D micrograph, got {shape[0]} frames of {shape[1]} x {shape[2]} px (rows x cols){detail} "
            "(a movie or stack? motion-correct or split it first)"
        )


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "I;16", "I;16B", "F"):
                image = image.convert("L")
            return np.asarray(image)
    except Exception as exc:  # Pillow raises many types for corrupt files (ValueError: "Truncated IHDR chunk", ...)
        raise HydraPickerError(f"{path}: not a readable image file ({exc})") from exc


def _as_2d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise HydraPickerError(
            f"{path}: expected a 2-D micrograph, got an array of shape {tuple(data.shape)}"
            + (" (a movie or stack? motion-correct or split it first)" if data.ndim == 3 else "")
        )
    if min(data.shape) < 2:
        raise HydraPickerError(f"{path}: micrograph of shape {tuple(data.shape)} is too small")
    return data


def write_mrc(path: str | os.PathLike, data: np.ndarray, pixel_size: float | None = None) -> None:
    """Write a 2-D float32 micrograph to MRC atomically, pixel size (Å) in the header."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"write_mrc expects a 2-D array, got shape {data.shape}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)


# --- finding micrographs ------------------------------------------------------------------------


def _matching(pattern: str) -> list[Path]:
    """Micrograph files a folder or glob names, sorted. Hidden files are left out: writers (ours
    included) write under a hidden temporary name and rename, and that name keeps the suffix.
    A link that leads nowhere is kept, to be reported when read, not passed over in silence."""
    if Path(pattern).is_dir():
        found = (p for p in Path(pattern).iterdir() if p.is_file() or p.is_symlink())
    else:
        found = (Path(p) for p in glob.glob(pattern, recursive=True))
    return sorted(p for p in found if is_micrograph_path(p) and not p.name.startswith("."))


def expand_micrographs(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Micrograph files from files, folders (their micrograph files) and globs, in order, without repeats.

    Paths are made absolute but links are not followed: outputs are named after the link, two
    links to one file are two micrographs, and a link to nothing is read (and reported) like a missing file.

    A file named outright is kept even if missing (it is reported with the others when read).

    Raises:
        HydraPickerError: a pattern that matches no micrograph, a file name without a micrograph
            suffix, or two micrographs with the same stem (their output files would collide).
    """
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if Path(text).is_dir() or glob.has_magic(text):
            matches = _matching(text)
        else:
            matches = [Path(text)]
            if not is_micrograph_path(text):
                raise HydraPickerError(
                    f"{text}: not a micrograph file name (expected one of {', '.join(MICROGRAPH_SUFFIXES)})"
                )
        if not matches:
            raise HydraPickerError(f"{text}: matches no micrograph files")
        found.extend(matches)
    unique = list(dict.fromkeys(_absolute(p) for p in found))
    stems: dict[str, Path] = {}
    for path in unique:
        stem = micrograph_stem(path)
        if stem in stems:
            raise HydraPickerError(
                f"{stems[stem]} and {path} have the same name {stem!r}: their picks would overwrite each other"
            )
        stems[stem] = path
    return unique


def list_micrographs(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Micrograph files now matching files, folders or globs; none is fine (a watched folder fills later)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if Path(text).is_dir() or glob.has_magic(text):
            found.extend(_matching(text))
        elif Path(text).is_file() and is_micrograph_path(text) and not Path(text).name.startswith("."):
            found.append(Path(text))
    return list(dict.fromkeys(_absolute(p) for p in found))


def _absolute(path: Path) -> Path:
    """``path`` made absolute without following links: a micrograph is named after the path the
    user gave (cryoSPARC's ``imported/<uid>_<name>.mrc`` links), not after what a link points to."""
    return Path(os.path.abspath(path))
