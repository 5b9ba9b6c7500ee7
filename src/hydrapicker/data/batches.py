"""Training batches: labelled micrographs prepared as the model sees them, and streamed augmented crops.

Conventions: micrographs and centres as in :mod:`hydrapicker.preprocess` (``(x, y)`` =
(column, row), the rescaled frame ``x' = (x + 0.5) * scale - 0.5``). A :class:`Batch` holds
``B`` crops ``[B, 1, S, S]`` from one dataset, with each crop's particle centres ``[n_i, 2]``
as ``(x, y)`` in crop pixels.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from hydrapicker.data.project import DatasetSpec, split_stems
from hydrapicker.defaults import BATCH_SIZE, CROP_SIZE, PAD_TO, PARTICLE_DIAMETER_PX, PREPARED_CACHE_SIZE
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import read_picks
from hydrapicker.io.files import atomic_path
from hydrapicker.io.micrograph import read_micrograph
from hydrapicker.particle_size import rescale_factor
from hydrapicker.preprocess import antialias_sigma, prepare_micrograph, to_rescaled

__all__ = ["Batch", "CropBatches", "background_stats", "load_labelled_micrograph"]

# --- one labelled micrograph -----------------------------------------------------------


def _read_centres(spec: DatasetSpec, stem: str, shape: tuple[int, int]) -> np.ndarray:
    path = spec.coordinates.get(stem)
    if path is None:
        raise HydraPickerError(f"dataset {spec.name!r}: micrograph {stem!r} has no coordinate file")
    picks = read_picks(path, spec.format, micrograph=stem, box_size=spec.diameter_px, shape=shape)[stem]
    return np.stack([picks.x, picks.y], axis=1).reshape(-1, 2)


def load_labelled_micrograph(
    spec: DatasetSpec, stem: str, target_diameter_px: float = PARTICLE_DIAMETER_PX
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read one labelled micrograph, rescale it and normalise it, as the model sees it.

    Returns:
        ``(image, centres, scale)``: the normalised rescaled float32 image ``[row, col]``,
        particle centres ``[n, 2]`` float64 ``(x, y)`` in rescaled pixels, and the scale
        (rescaled px per stored px; :func:`hydrapicker.preprocess.from_rescaled` maps picks back).
    """
    micrograph = read_micrograph(spec.micrograph_path(stem))
    centres = _read_centres(spec, stem, micrograph.shape)
    scale = rescale_factor(spec.pixel_size, spec.diameter, target_diameter_px)
    image = prepare_micrograph(micrograph.data, scale, target_diameter_px, str(spec.micrograph_path(stem)))
    return image, to_rescaled(centres, scale), scale


@dataclass(frozen=True)
class _Prepared:
    image: np.ndarray  # normalised, rescaled
    centres: np.ndarray  # [n, 2] (x, y) rescaled px
    mean: float  # of the background: pixels farther than one diameter from every centre
    std: float
    oversample: float = 1.0  # the particle is oversample x target_diameter_px wide in image


def background_stats(image: np.ndarray, centres: np.ndarray, diameter_px: float) -> tuple[float, float]:
    """Mean and std of the background: pixels farther than one diameter from every centre.

    Measured on a regular subsample of pixels (exact distances, ~250k pixels). When
    particles are so dense that under 1 % of the sample is background, every pixel counts.
    """
    step = max(1, int(math.sqrt(image.size / 250_000)))
    rows, cols = np.mgrid[0 : image.shape[0] : step, 0 : image.shape[1] : step]
    values = image[rows, cols].ravel()
    if len(centres):
        points = np.column_stack([cols.ravel(), rows.ravel()])
        distance, _ = cKDTree(np.asarray(centres, dtype=np.float64)).query(points, distance_upper_bound=diameter_px)
        if (far := distance > diameter_px).sum() >= 0.01 * len(values):
            values = values[far]
    return float(values.mean()), float(values.std())


def _prepare(spec: DatasetSpec, stem: str, target_diameter_px: float) -> _Prepared:
    image, centres, _ = load_labelled_micrograph(spec, stem, target_diameter_px)
    return _Prepared(image, centres, *background_stats(image, centres, target_diameter_px))


#: Bump when preparation changes, so disk caches written by older code are not reused.
_PREPARATION_VERSION = 1


def _prepare_via_disk(spec: DatasetSpec, stem: str, target_diameter_px: float, cache_dir: Path) -> _Prepared:
    micrograph, coordinates = spec.micrograph_path(stem), spec.coordinates.get(stem)
    identity = [_PREPARATION_VERSION, spec.pixel_size, spec.diameter, spec.format, float(target_diameter_px)]
    for path in (micrograph, coordinates):
        if path is not None and path.exists():
            stat = path.stat()
            identity += [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    digest = hashlib.sha256(repr(identity).encode("utf-8")).hexdigest()[:16]
    path = cache_dir / spec.name / f"{stem}.{digest}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                stats = stored["stats"]
                return _Prepared(stored["image"], stored["centres"], float(stats[0]), float(stats[1]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable (e.g. a disk filled up mid-way by another tool): prepare again
    prepared = _prepare(spec, stem, target_diameter_px)
    with atomic_path(path) as tmp:
        np.savez(tmp, image=prepared.image, centres=prepared.centres, stats=np.array([prepared.mean, prepared.std]))
    return prepared


# --- crop batches ----------------------------------------------------------------------


@dataclass
class Batch:
    """Crops from one dataset, ready for the model.

    Attributes:
        dataset: the dataset's name (selects the head).
        images: float32 ``[B, 1, S, S]``, normalised.
        centres: per crop, float32 ``[n_i, 2]`` particle centres ``(x, y)`` in crop pixels
            (x = column, y = row; only centres inside the crop).
        micrographs: per crop, the stem of the micrograph it came from.
        padding: bool ``[B, 1, S, S]``, True where a crop shows padding noise rather than
            the micrograph (no labels can lie there).
        sizes: float32 ``[B]``, how large each crop's particles look relative to the
            trained diameter (the scale jitter drawn for the crop; 1 without jitter).
    """

    dataset: str
    images: torch.Tensor
    centres: list[torch.Tensor]
    micrographs: tuple[str, ...] = ()
    padding: torch.Tensor | None = None
    sizes: torch.Tensor | None = None


class CropBatches:
    """Mini-batches of augmented crops, each batch from a single dataset; streamed.

    Each batch picks a dataset uniformly at random (not in proportion to its size, so
    small datasets are not drowned out by large ones; paper, section 4), then
    ``batch_size`` of its micrographs of ``split`` (without replacement when it has
    enough). Each crop is made in one resampling of the prepared (rescaled, normalised)
    micrograph: an optional extra rescale by a factor drawn log-uniformly from
    ``scale_jitter``; padding to at least ``pad_to`` px per side with the micrograph
    centred; a rotation by a uniform random angle about the padded canvas's centre; a
    random ``crop_size`` crop of the canvas. The padding is Gaussian noise whose mean and
    std match the micrograph's background (pixels farther than one diameter from every
    labelled centre); it is laid down before resampling, as in the paper, so it is
    interpolated (and anti-aliased) exactly like the micrograph. Particle centres go
    through the same transform; those whose centre leaves the crop are dropped.

    Prepared micrographs live in an LRU cache of ``cache_size`` entries, so memory stays
    bounded however many micrographs the datasets hold. With ``cache_dir``, each prepared
    micrograph is also saved there (``.npz``, written atomically, keyed by the files'
    size and modification time and every setting that shapes it) and read back later
    instead of being prepared again (a disk read costs far less than preparing),
    which matters once the collection outgrows the memory cache. Batch ``i`` of epoch ``e`` depends
    only on ``(seed, e, i)``: the sequence is reproducible and :meth:`batch` can be called
    out of order (e.g. from DataLoader workers, or split across ranks).
    """

    def __init__(
        self,
        datasets: Sequence[DatasetSpec],
        split: str = "train",
        *,
        target_diameter_px: float = PARTICLE_DIAMETER_PX,
        crop_size: int = CROP_SIZE,
        pad_to: int = PAD_TO,
        batch_size: int = BATCH_SIZE,
        batches_per_epoch: int | None = None,
        rotate: bool = True,
        scale_jitter: tuple[float, float] = (1.0, 1.0),
        seed: int = 0,
        cache_size: int = PREPARED_CACHE_SIZE,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if crop_size < 1 or pad_to < crop_size:
            raise HydraPickerError(f"need 1 <= crop_size <= pad_to, got crop_size={crop_size}, pad_to={pad_to}")
        if batch_size < 1 or cache_size < 1:
            raise HydraPickerError(f"batch_size and cache_size must be >= 1, got {batch_size}, {cache_size}")
        low, high = (float(v) for v in scale_jitter)
        if not (0 < low <= high):
            raise HydraPickerError(f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter!r}")
        self.split = split
        self.datasets = [d for d in datasets if split_stems(d, split)]
        if not self.datasets:
            raise HydraPickerError(f"no dataset has labelled micrographs in split {split!r}")
        self.target_diameter_px = float(target_diameter_px)
        self.crop_size = int(crop_size)
        self.pad_to = int(pad_to)
        self.batch_size = int(batch_size)
        self.rotate = rotate
        self.scale_jitter = (low, high)
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        total = sum(len(split_stems(d, split)) for d in self.datasets)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else max(1, -(-total // batch_size))
        self.epoch = 0
        self._cache: OrderedDict[tuple[str, str], _Prepared] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches iteration yields (deterministic given seed and epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        for index in range(self.batches_per_epoch):
            yield self.batch(index)

    def __getitem__(self, index: int) -> Batch:
        """Batch ``index`` of the current epoch, so that
        ``torch.utils.data.DataLoader(stream, batch_size=None, num_workers=k)`` can make
        batches in worker processes (each keeps its own cache; call :meth:`set_epoch`
        before creating the loader's iterator)."""
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(f"batch {index} of an epoch of {self.batches_per_epoch}")
        return self.batch(index)

    @property
    def cached(self) -> tuple[tuple[str, str], ...]:
        """``(dataset, stem)`` of the prepared micrographs now held, least recent first."""
        return tuple(self._cache)

    def batch(self, index: int, epoch: int | None = None) -> Batch:
        """Batch ``index`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        spec = self.datasets[int(rng.integers(len(self.datasets)))]
        stems = split_stems(spec, self.split)
        chosen = rng.choice(len(stems), size=self.batch_size, replace=len(stems) < self.batch_size)
        images, centres, names, padding, sizes = [], [], [], [], []
        for i in chosen:
            crop, xy, outside, jitter = self._crop(self._prepared(spec, stems[int(i)]), rng)
            images.append(crop)
            centres.append(torch.from_numpy(xy.astype(np.float32)))
            names.append(stems[int(i)])
            padding.append(outside)
            sizes.append(jitter)
        return Batch(
            spec.name,
            torch.from_numpy(np.stack(images)[:, None]),
            centres,
            tuple(names),
            torch.from_numpy(np.stack(padding)[:, None]),
            torch.tensor(sizes, dtype=torch.float32),
        )

    def _prepared(self, spec: DatasetSpec, stem: str) -> _Prepared:
        key = (spec.name, stem)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        oversample = self._oversample(spec)
        diameter_px = self.target_diameter_px * oversample
        if self.cache_dir is None:
            prepared = _prepare(spec, stem, diameter_px)
        else:
            prepared = _prepare_via_disk(spec, stem, diameter_px, self.cache_dir)
        prepared = replace(prepared, oversample=oversample)
        self._cache[key] = prepared
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return prepared

    def _oversample(self, spec: DatasetSpec) -> float:
        """How much larger than ``target_diameter_px`` the particle is kept in the prepared micrograph.

        ``pick`` rescales a micrograph once, from its stored pixels, to whatever scale the given
        diameter asks for: a particle shown 1.25x too large has crisp noise around it, not the
        smooth noise of an image enlarged twice. So crops are made in one resampling from a
        micrograph prepared at the largest scale any crop needs (``high`` x the target scale),
        never above its stored pixels: every crop is then shrunk from it, or enlarged from the
        stored pixels themselves, as at pick time. Resampling the target-scale micrograph
        instead taught the model that large particles come with smooth noise, and neither it
        nor a size head then recognised large particles in a micrograph rescaled once
        (benchmarks/scale_search.md).
        """
        _, high = self.scale_jitter
        return min(high, 1.0 / rescale_factor(spec.pixel_size, spec.diameter, self.target_diameter_px))

    def _crop(self, prep: _Prepared, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        low, high = self.scale_jitter
        apparent = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if high > low else low
        jitter = apparent / prep.oversample  # the resampling of the prepared micrograph that shows it so
        angle = float(rng.uniform(0.0, 2 * np.pi)) if self.rotate else 0.0
        rows, cols = prep.image.shape
        canvas = np.array([max(math.ceil(cols * jitter), self.pad_to), max(math.ceil(rows * jitter), self.pad_to)])
        pad = np.floor((canvas - np.array([cols, rows]) * jitter) / 2)
        origin = np.array(
            [rng.integers(0, canvas[0] - self.crop_size + 1), rng.integers(0, canvas[1] - self.crop_size + 1)]
        )
        forward, offset = _crop_transform(jitter, angle, pad, (canvas - 1) / 2, origin)

        inverse = np.linalg.inv(forward)
        shift = -inverse @ offset  # source (x, y) = inverse @ crop (x, y) + shift
        edge = self.crop_size - 0.5
        corners = np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]]) @ inverse.T + shift
        sigma = antialias_sigma(jitter)
        margin = 2 + math.ceil(4 * sigma)
        (x0, y0), (x1, y1) = np.floor(corners.min(0)) - margin, np.ceil(corners.max(0)) + margin + 1
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)

        # The paper's order: pad the micrograph with background-matched noise, then
        # resample; noise and micrograph then go through the same interpolation and blur,
        # so the padding does not stand out by its texture. Only the crop's footprint is
        # built, never the whole padded canvas.
        source = rng.normal(prep.mean, prep.std, size=(y1 - y0, x1 - x0)).astype(np.float32)
        ry0, ry1, rx0, rx1 = max(y0, 0), min(y1, rows), max(x0, 0), min(x1, cols)
        if ry0 < ry1 and rx0 < rx1:
            source[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = prep.image[ry0:ry1, rx0:rx1]
        if sigma > 0:
            source = ndimage.gaussian_filter(source, sigma, mode="nearest")
        # affine_transform indexes (row, col): swap x and y on both sides.
        crop = ndimage.affine_transform(
            source,
            inverse[::-1, ::-1],
            (shift - (x0, y0))[::-1],
            output_shape=(self.crop_size, self.crop_size),
            order=1,
            mode="nearest",
        )
        grid = np.indices(crop.shape, dtype=np.float64)[::-1].reshape(2, -1)  # (x, y) of every crop pixel
        src = inverse @ grid + shift[:, None]
        outside = ((src[0] < -0.5) | (src[0] >= cols - 0.5) | (src[1] < -0.5) | (src[1] >= rows - 0.5)).reshape(
            crop.shape
        )

        xy = prep.centres @ forward.T + offset if len(prep.centres) else np.zeros((0, 2))
        inside = np.all((xy >= -0.5) & (xy < self.crop_size - 0.5), axis=1)
        return crop.astype(np.float32, copy=False), xy[inside], outside, apparent


def _crop_transform(
    jitter: float, angle: float, pad: np.ndarray, centre: np.ndarray, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``q = A p + b`` from prepared-micrograph ``(x, y)`` to crop ``(x, y)``.

    Composes: rescale by ``jitter`` about the pixel-edge origin (as :func:`to_rescaled`),
    shift by ``pad`` onto the canvas, rotate by ``angle`` (radians) about the canvas
    ``centre``, subtract the crop ``origin``. Returns ``(A, b)``.
    """
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    forward = jitter * rotation
    offset = rotation @ (np.full(2, 0.5 * jitter - 0.5) + pad - centre) + centre - origin
    return forward, offset
