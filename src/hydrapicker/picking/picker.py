"""Picking micrographs with a trained model: the settings of a run and the :class:`Picker` that applies them.

One micrograph goes through the input transform training applied
(:func:`hydrapicker.preprocess.prepare_micrograph`: rescale so the particle is the model's
``target_diameter_px`` wide, local normalisation); then trunk + one head
(:mod:`hydrapicker.picking.inference`), at the diameter the size head reads when the model has
one (:mod:`hydrapicker.picking.size`), and decoding to picks in the stored micrograph's pixel
frame (:mod:`hydrapicker.picking.decode`). A folder of micrographs is picked to files by
:mod:`hydrapicker.picking.runner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hydrapicker.checkpoint import ModelMeta
from hydrapicker.defaults import (
    CANDIDATE_FLOOR,
    GENERIC,
    MAX_REFINE_RADIUS,
    MAX_UPSCALE,
    NMS_IOU,
    PICK_ONE_PASS_SIZE,
    PICK_THRESHOLD,
    PICK_TILE_SIZE,
    REFINE_RADIUS,
    SIZE_CORRECTION_RANGE,
    SIZE_PASSES,
    SIZE_SAMPLE_MICROGRAPHS,
    WHOLE_BOXES,
)
from hydrapicker.device import check_device
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.micrograph import Micrograph, read_micrograph
from hydrapicker.io.picks import Picks
from hydrapicker.memory import keep_large_blocks
from hydrapicker.model import HydraPicker
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.decode import picks_from_outputs
from hydrapicker.picking.inference import tile_margin
from hydrapicker.picking.size import SizeEstimate, corrects_size, estimate_diameter_and_outputs, size_corrected_outputs
from hydrapicker.preprocess import check_rescale, prepare_micrograph

__all__ = ["PickSettings", "Picker", "Prepared", "evenly_spaced", "pick_micrograph"]


@dataclass(frozen=True)
class PickSettings:
    """How every micrograph of a run is picked.

    Attributes:
        size: the particle diameter given (None only for stand-in pickers that never rescale).
        head: the head to pick with (``"generic"``: zero-shot).
        threshold: lowest score (probability) kept.
        nms_iou: duplicate suppression IoU.
        tile_size, one_pass_size: a micrograph up to ``one_pass_size`` rescaled px goes through the network in one
            pass, a larger one in tiles of ``tile_size``; see :func:`hydrapicker.picking.inference.head_outputs`.
        whole_boxes: drop picks whose box reaches past the micrograph's edge (default; ``--keep-edge-picks``: False).
        refine_radius: see :func:`hydrapicker.picking.decode.picks_from_outputs` (0: each pick stays on its anchor's guess).
        correct_size: with a model that has a size head and the generic head, correct the
            diameter given when the particles look another size
            (:func:`hydrapicker.picking.size.size_corrected_outputs`); False: use it as given.
        device, bf16: where and in what precision the network runs.
    """

    size: ParticleSize | None = None
    head: str = GENERIC
    threshold: float = PICK_THRESHOLD
    nms_iou: float = NMS_IOU
    tile_size: int = PICK_TILE_SIZE
    one_pass_size: int = PICK_ONE_PASS_SIZE
    whole_boxes: bool = WHOLE_BOXES
    refine_radius: float = REFINE_RADIUS
    correct_size: bool = True
    device: str = "cpu"
    bf16: bool = False


@dataclass
class Prepared:
    """A micrograph read and prepared for the network (made in a reader thread), or already run
    through it (a micrograph of the size estimate's sample: ``outputs`` set, ``image`` None)."""

    name: str
    path: Path
    data: np.ndarray  # as stored, for the overlay
    image: np.ndarray | None  # rescaled, normalised (None once the network has run: ``outputs``)
    scale: float  # rescaled px per stored px, at the diameter it is picked at
    outputs: torch.Tensor | None = None  # the head's outputs ``[3, h, w]`` at ``scale``, when already run


def evenly_spaced(paths: Sequence[Path], most: int) -> list[Path]:
    """At most ``most`` of ``paths``, spread evenly from the first to the last."""
    if len(paths) <= most:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, most).round().astype(int)]


class Picker:
    """Model + settings: :meth:`prepare` (thread-safe, NumPy) then :meth:`pick` (the network)."""

    def __init__(self, model: HydraPicker, meta: ModelMeta, settings: PickSettings) -> None:
        check_device(settings.device)
        keep_large_blocks()
        if not (0 <= settings.threshold <= 1):
            raise HydraPickerError(f"threshold must be a score between 0 and 1, got {settings.threshold}")
        if not 0 <= settings.refine_radius <= MAX_REFINE_RADIUS:
            raise HydraPickerError(
                f"refine radius must be 0 (off) up to {MAX_REFINE_RADIUS:g} box size, got {settings.refine_radius}"
            )
        if not 0 < settings.nms_iou <= 1:
            raise HydraPickerError(f"NMS IoU must be above 0 and at most 1, got {settings.nms_iou}")
        model.head(settings.head)
        if settings.size is None:
            raise HydraPickerError("picking needs the particle diameter")
        # Check the numbers now, not once per micrograph (a stand-in pixel size when the files give it).
        scale = settings.size.scale(meta.target_diameter_px, 1.0)
        if not settings.size.needs_pixel_size and scale > MAX_UPSCALE:
            check_rescale(
                (1, 1), scale, meta.target_diameter_px, "--diameter-px" if settings.size.diameter_px else "--diameter-A"
            )
        if settings.tile_size < 2 * tile_margin(model) + model.stride:
            raise HydraPickerError(
                f"tile size {settings.tile_size} px is too small (at least {2 * tile_margin(model) + model.stride})"
            )
        self.model = model.to(settings.device).eval()
        self.meta = meta
        self.settings = settings
        #: The dataset's diameter correction, once :meth:`calibrate` has read it; until then each
        #: micrograph is corrected on its own (:func:`size_corrected_outputs`).
        self.size_estimate: SizeEstimate | None = None
        #: The sample :meth:`calibrate` read, already run at the run's diameter: :meth:`prepare`
        #: hands each out once instead of reading and running it again.
        self._sampled: dict[Path, Prepared] = {}

    def check_paths(self, paths: Sequence[Path]) -> None:
        """Refuse up front what would fail on every file: a size in Å, no pixel size, files without a header."""
        if self.settings.size is not None and self.settings.size.needs_pixel_size:
            for path in paths:
                if path.suffix.lower() not in (".mrc", ".mrcs"):
                    raise HydraPickerError(
                        f"{path}: a {path.suffix} file has no pixel size: give --pixel-size (Å/px) or --diameter-px"
                    )

    def _read(self, path: Path) -> tuple[Micrograph, float]:
        """One micrograph as stored and its scale at the diameter given."""
        size = self.settings.size
        assert size is not None, "checked in __init__"
        micrograph = read_micrograph(path)
        if size.needs_pixel_size and micrograph.pixel_size is None:
            raise HydraPickerError(
                f"{path}: no pixel size in the file header: give --pixel-size (Å/px) or --diameter-px"
            )
        scale = size.scale(self.meta.target_diameter_px, micrograph.pixel_size)
        # Every scale the run may pick at (the size correction's range too), from the header, before any array.
        corrected = self.settings.correct_size and corrects_size(self.model, self.settings.head)
        low, high = SIZE_CORRECTION_RANGE if corrected else (1.0, 1.0)
        for factor in (low, high):
            try:
                check_rescale(micrograph.shape, scale / factor, self.meta.target_diameter_px, str(path))
            except HydraPickerError as exc:
                header = f"; the header gives {micrograph.pixel_size:g} Å/px" if size.needs_pixel_size else ""
                raise HydraPickerError(f"{exc}{header}") from None
        return micrograph, scale

    def prepare(self, path: Path) -> Prepared:
        """Read one micrograph and rescale + normalise it (at the calibrated diameter, if any); HydraPickerError names the file if it is unusable.

        A micrograph of the size estimate's sample comes back as :meth:`calibrate` left it
        (read, and through the network at the run's diameter), once.
        """
        sampled = self._sampled.pop(Path(path), None)
        if sampled is not None:
            return sampled
        micrograph, scale = self._read(path)
        if self.size_estimate is not None:
            scale /= self.size_estimate.factor
        image = prepare_micrograph(micrograph.data, scale, self.meta.target_diameter_px, str(path))
        return Prepared(micrograph.name, path, micrograph.data, image, scale)

    def calibrate(self, paths: Sequence[Path], most: int | None = None) -> SizeEstimate | None:
        """Read the particle size once for the run, from up to ``most`` micrographs spread over ``paths``
        (:func:`estimate_diameter`; ``most`` defaults to ``SIZE_SAMPLE_MICROGRAPHS``); every
        micrograph is then picked at that one diameter.

        Returns None, and changes nothing, when the diameter is not corrected (``--fixed-diameter``,
        no size head, a dataset's own head), when already calibrated, or when no sampled
        micrograph can be read (those are reported when picked). The same ``paths`` give the
        same sample, so a rerun or another rank picks at the same diameter.
        """
        s = self.settings
        if self.size_estimate is not None or not s.correct_size or not corrects_size(self.model, s.head) or not paths:
            return None
        read = []
        for path in evenly_spaced(paths, SIZE_SAMPLE_MICROGRAPHS if most is None else most):
            try:
                read.append((Path(path), *self._read(path)))
            except (HydraPickerError, OSError):
                continue
        if not read:
            return None
        try:
            estimate, outputs = estimate_diameter_and_outputs(
                self.model,
                self.meta,
                [(micrograph.data, scale) for _, micrograph, scale in read],
                s.head,
                names=[str(path) for path, _, _ in read],
                tile_size=s.tile_size,
                one_pass_size=s.one_pass_size,
                device=s.device,
                bf16=s.bf16,
            )
        except HydraPickerError:
            # A sampled micrograph that fails in preparation must not stop the run: each micrograph
            # is then corrected on its own, and that one is reported, with its cause, when picked.
            return None
        self.size_estimate = estimate
        if outputs is not None:  # the last round ran at the run's diameter: those passes are the sample's picks
            for (path, micrograph, scale), out in zip(read, outputs, strict=True):
                self._sampled[path] = Prepared(
                    micrograph.name, path, micrograph.data, None, scale / estimate.factor, out
                )
        return self.size_estimate

    @property
    def sampled(self) -> frozenset[Path]:
        """The micrographs :meth:`prepare` hands out already run (the size estimate's sample, not yet picked)."""
        return frozenset(self._sampled)

    def keep_sampled(self, paths: Iterable[Path]) -> None:
        """Let go of the sampled micrographs this run will not pick (already picked, another rank's share)."""
        keep = {Path(path) for path in paths}
        for path in list(self._sampled):
            if path not in keep:
                del self._sampled[path]

    def describe_size(self) -> str:
        """One line on the diameter the run picks at (after :meth:`calibrate`)."""
        estimate, s = self.size_estimate, self.settings
        if estimate is None:
            return ""
        value, unit = s.size.given()
        given = f"{value:g} {unit}"
        if estimate.cells == 0:
            return f"particle diameter: {given} as given (the size head found no confident pick in {estimate.micrographs} micrograph(s))"
        if estimate.factor == 1.0:
            return f"particle diameter: {given} as given (the size head agrees, {estimate.micrographs} micrograph(s))"
        return (
            f"particle diameter: picking at {value * estimate.factor:.4g} {unit}, {estimate.factor:.2f}x the {given} given "
            f"(size head, {estimate.micrographs} micrograph(s)); --fixed-diameter picks at {given}"
        )

    def candidates(self, prepared: Prepared) -> Picks:
        """Every pick of one prepared micrograph down to ``CANDIDATE_FLOOR`` (or the threshold, if lower), in its stored frame.

        NMS is greedy in descending score, so a pick survives it or not whatever the picks
        below it are: the picks at any threshold ``t`` above the floor are exactly
        ``candidates(...).above(t)``, and one network pass gives both.
        """
        s = self.settings
        if prepared.outputs is not None:  # the size estimate ran it already, at the run's diameter
            return self._decode(prepared.outputs, prepared.scale, prepared)
        per_micrograph = s.correct_size and self.size_estimate is None  # calibrated: prepared at the run's diameter
        outputs, scale = size_corrected_outputs(
            self.model,
            self.meta,
            prepared.data,
            prepared.scale,
            s.head,
            prepared=prepared.image,
            name=str(prepared.path),
            passes=SIZE_PASSES if per_micrograph else 1,
            tile_size=s.tile_size,
            one_pass_size=s.one_pass_size,
            device=s.device,
            bf16=s.bf16,
        )
        return self._decode(outputs, scale, prepared)

    def _decode(self, outputs: torch.Tensor, scale: float, prepared: Prepared) -> Picks:
        s = self.settings
        return picks_from_outputs(
            outputs,
            self.meta,
            scale,
            prepared.data.shape,
            min(CANDIDATE_FLOOR, s.threshold),
            name=prepared.name,
            nms_iou=s.nms_iou,
            whole_boxes=s.whole_boxes,
            refine_radius=s.refine_radius,
        )

    def pick(self, prepared: Prepared) -> Picks:
        """The picks of one prepared micrograph at the threshold, in its stored frame."""
        return self.candidates(prepared).above(self.settings.threshold)


def pick_micrograph(
    model: HydraPicker,
    meta: ModelMeta,
    image: np.ndarray,
    settings: PickSettings,
    *,
    pixel_size: float | None = None,
    name: str = "",
) -> Picks:
    """Pick the particles of one micrograph held in memory.

    Args:
        model, meta: from :func:`hydrapicker.checkpoint.load_checkpoint`.
        image: the micrograph as stored, ``[row, col]``.
        settings: how to pick (``settings.size`` the particle diameter).
        pixel_size: Å/px of ``image``, used when the diameter is in Å and ``settings`` gives no pixel size.
        name: the micrograph name the picks carry.

    Returns:
        Picks in the stored frame (x = column, y = row), descending score, box size = the
        particle diameter in stored pixels (as corrected); none outside the micrograph.
    """
    if settings.size is None:
        raise HydraPickerError("picking needs the particle diameter")
    scale = settings.size.scale(meta.target_diameter_px, pixel_size)
    outputs, scale = size_corrected_outputs(
        model,
        meta,
        np.asarray(image),
        scale,
        settings.head,
        name=name,
        passes=SIZE_PASSES if settings.correct_size else 1,
        tile_size=settings.tile_size,
        one_pass_size=settings.one_pass_size,
        device=settings.device,
        bf16=settings.bf16,
    )
    return picks_from_outputs(
        outputs,
        meta,
        scale,
        (int(np.shape(image)[0]), int(np.shape(image)[1])),
        settings.threshold,
        name=name,
        nms_iou=settings.nms_iou,
        whole_boxes=settings.whole_boxes,
        refine_radius=settings.refine_radius,
    )
