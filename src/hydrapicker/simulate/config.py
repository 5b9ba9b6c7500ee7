"""Simulation settings: one frozen dataclass, its defaults, and the renderings, in one place.

Ranges ``(lo, hi)`` are drawn uniformly per micrograph (from the micrograph's own seed), so one
config describes a dataset whose micrographs differ the way a real session's do. A range with
``lo == hi`` is a fixed value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from hydrapicker.errors import HydraPickerError

__all__ = [
    "ASYMMETRIC_UNIT_CHAINS",
    "RENDERINGS",
    "Rendering",
    "SimulationConfig",
    "rendering_by_name",
]

#: Crystal asymmetric units holding two copies of the assembly: the chains of one copy
#: (``data/structures/README.md``). Keyed by structure id.
ASYMMETRIC_UNIT_CHAINS: dict[str, str] = {"4blo": "ABCDEF", "3wip": "ABCDE"}

Range = tuple[float, float]


@dataclass(frozen=True)
class Rendering:
    """How a simulated micrograph reaches the picker (the "same" data as users hand it over).

    Applied in this order to the detector image (electron counts): denoise, bin, low-pass,
    border stripes, 8-bit export.

    Attributes:
        name: label recorded in the run record.
        bin: block-mean binning factor: the detector pixel is ``pixel_size / bin``.
        lowpass_A: Gaussian low-pass whose amplitude falls to 1/2 at this resolution (Å).
        denoise: ``None``, or the fraction of shot noise left in (0 = noise-free expectation),
            as a learned denoiser (JANNI, Topaz-Denoise) returns a smoothed estimate of the
            noiseless image with some residual noise.
        border_stripes_px: width of reflected-padding stripes at the borders, as some
            denoisers and exporters leave.
        eight_bit: ``None`` (float32 MRC), ``"png"`` or ``"jpg"``.
        sixteen_bit: a 16-bit contrast-stretched, clipped TIFF export (as some facilities hand
            over averaged frames): ``stretch`` percentiles map to 0 and 65535.
        stretch: percentiles mapped to the ends of the integer range for 8- and 16-bit exports
            ((0, 100) = min-max).
        jpeg_quality: JPEG quality for ``"jpg"``.
    """

    name: str = "float"
    bin: int = 1
    lowpass_A: float | None = None
    denoise: float | None = None
    border_stripes_px: int = 0
    eight_bit: str | None = None
    sixteen_bit: bool = False
    stretch: tuple[float, float] = (0.5, 99.5)
    jpeg_quality: int = 85

    @property
    def suffix(self) -> str:
        if self.sixteen_bit:
            return ".tif"
        return {None: ".mrc", "png": ".png", "jpg": ".jpg"}[self.eight_bit]


#: Named renderings for ``--rendering``; the training collection draws its own at random.
RENDERINGS: dict[str, Rendering] = {
    "float": Rendering("float"),
    "binned": Rendering("binned", bin=2),
    "lowpass": Rendering("lowpass", lowpass_A=20.0),
    "denoised": Rendering("denoised", denoise=0.25),
    "png": Rendering("png", eight_bit="png"),
    "jpg": Rendering("jpg", eight_bit="jpg", jpeg_quality=80),
    "denoised-png": Rendering("denoised-png", bin=2, denoise=0.25, border_stripes_px=12, eight_bit="png"),
    "lowpass-png": Rendering("lowpass-png", bin=2, lowpass_A=25.0, eight_bit="png", stretch=(0.0, 100.0)),
    "tif16": Rendering("tif16", sixteen_bit=True, stretch=(1.0, 99.0)),
}


def rendering_by_name(name: str) -> Rendering:
    """The named rendering, or a one-line error listing the names."""
    try:
        return RENDERINGS[name]
    except KeyError:
        raise HydraPickerError(f"unknown rendering {name!r} (choose from {', '.join(RENDERINGS)})") from None


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides what a simulated micrograph looks like.

    Lengths in Å unless the name says otherwise; ranges are drawn per micrograph.
    """

    # --- geometry of the stored micrograph
    shape: tuple[int, int] = (1024, 1024)  # rows, cols of the stored micrograph
    pixel_size: float = 1.5  # Å per stored pixel
    margin_px: int = 64  # simulated border beyond the image (particles cut by the edge, CTF spill)
    oversample: int = 2  # potential and exit wave sampled at pixel_size / max(bin, oversample)
    # --- specimen
    particles_per_micrograph: Range | None = None  # None: from coverage
    coverage: Range = (0.03, 0.40)  # fraction of the area under particle discs (sparse .. crowded)
    min_distance: Range = (0.75, 1.0)  # closest centre distance, in particle diameters
    clustering: Range = (0.0, 0.6)  # fraction of particles drawn in loose clusters
    ice_thickness: Range = (250.0, 600.0)
    ice_gradient: Range = (0.0, 0.25)  # fractional thickness change across the field
    ice_roughness: Range = (0.0, 0.08)  # fractional low-frequency thickness variation
    carbon_probability: float = 0.3
    carbon_thickness: Range = (100.0, 250.0)
    contamination_probability: float = 0.4
    aggregate_probability: float = 0.4
    broken_fraction: Range = (0.0, 0.08)  # extra half-particles (broken), per true particle
    fragment_fraction: Range = (0.0, 1.5)  # small pieces (5-30 % of a particle: dissociated subunits), per particle
    ice_texture: Range = (5.0, 40.0)  # rms thickness variation (Å) of the film surfaces at the 20-70 Å scale
    atom_b_factor: float = 20.0
    # --- optics (300 kV, Kirkland's sign convention: positive defocus = underfocus)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um: Range = (1.0, 3.0)
    astigmatism: Range = (0.0, 500.0)  # DefocusU - DefocusV
    b_factor: Range = (40.0, 150.0)  # image envelope exp(-B q^2 / 4)
    focal_spread: float = 40.0  # temporal coherence (Å)
    illumination_aperture_mrad: float = 0.02  # spatial coherence
    ctf: bool = True  # False: in-focus, aberration-free (for geometry checks)
    # --- detector
    dose: Range = (30.0, 60.0)  # e/Å^2
    motion: Range = (0.0, 3.0)  # residual beam-induced motion after correction, RMS Å
    mtf: bool = True  # counting-detector pixel MTF (sinc)
    shot_noise: bool = True
    dqe: Range = (0.5, 0.9)  # detective quantum efficiency at low frequency: noise as if dose x DQE
    hot_pixels: Range = (0.0, 1e-5)  # share of pixels left bright by an imperfect gain reference
    # --- physical constants that are crude and so exposed
    water_density: float = 0.0313  # molecules / Å^3 (vitreous ice, 0.94 g/cm^3)
    water_s0: float = 0.064  # structure factor S(0) from compressibility
    water_peak_A: float = 3.7  # the vitreous-ice ring
    carbon_density: float = 0.1  # atoms / Å^3 (amorphous carbon, 2 g/cm^3)
    solvent_volume_per_da: float = 1.21  # Å^3 / Da displaced by protein
    hydrogens_per_atom: dict[str, float] = field(
        default_factory=lambda: {"C": 1.3, "N": 1.1, "O": 0.4, "S": 0.4, "P": 0.0, "Se": 0.0}
    )
    inelastic_mfp_ice: float = 3500.0
    inelastic_mfp_carbon: float = 2000.0
    # --- how it is stored
    rendering: Rendering = Rendering()
    chains: str | None = None  # None: ASYMMETRIC_UNIT_CHAINS for known ids, else every chain

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes) -> SimulationConfig:
        return dataclasses.replace(self, **changes)

    @property
    def detector_pixel_size(self) -> float:
        return self.pixel_size / self.rendering.bin

    def validate(self) -> None:
        """Raise a one-line :class:`HydraPickerError` naming the first impossible setting."""

        def bad(name: str, value: object, why: str) -> None:
            raise HydraPickerError(f"simulation setting {name} = {value!r}: {why}")

        def positive(name: str, value: float, allow_zero: bool = False) -> None:
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not allow_zero)
            ):
                bad(name, value, "must be " + ("zero or positive" if allow_zero else "positive"))

        def ordered(name: str, rng: Range, allow_zero: bool = True, upper: float | None = None) -> None:
            if len(rng) != 2:
                bad(name, rng, "must be a (min, max) pair")
            lo, hi = rng
            positive(f"{name} min", lo, allow_zero)
            positive(f"{name} max", hi, allow_zero)
            if lo > hi:
                bad(name, rng, f"min {lo} is above max {hi}")
            if upper is not None and hi > upper:
                bad(name, rng, f"must be at most {upper}")

        if len(self.shape) != 2 or any(int(s) != s or s < 16 for s in self.shape):
            bad("shape", self.shape, "must be two whole numbers of at least 16 pixels")
        positive("pixel_size", self.pixel_size)
        if self.pixel_size < 0.2 or self.pixel_size > 50:
            bad("pixel_size", self.pixel_size, "must lie between 0.2 and 50 Å per pixel")
        if self.margin_px < 0 or int(self.margin_px) != self.margin_px:
            bad("margin_px", self.margin_px, "must be a whole number >= 0")
        if self.oversample not in (1, 2, 3, 4):
            bad("oversample", self.oversample, "must be 1, 2, 3 or 4")
        if self.particles_per_micrograph is not None:
            ordered("particles_per_micrograph", self.particles_per_micrograph)
        ordered("coverage", self.coverage, upper=0.6)
        ordered("min_distance", self.min_distance, allow_zero=False, upper=3.0)
        ordered("clustering", self.clustering, upper=1.0)
        ordered("ice_thickness", self.ice_thickness)
        ordered("ice_gradient", self.ice_gradient, upper=0.9)
        ordered("ice_roughness", self.ice_roughness, upper=0.5)
        ordered("carbon_thickness", self.carbon_thickness)
        ordered("broken_fraction", self.broken_fraction, upper=1.0)
        ordered("fragment_fraction", self.fragment_fraction, upper=5.0)
        ordered("ice_texture", self.ice_texture, upper=200.0)
        ordered("dqe", self.dqe, allow_zero=False, upper=1.0)
        ordered("hot_pixels", self.hot_pixels, upper=0.01)
        for name in ("carbon_probability", "contamination_probability", "aggregate_probability"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                bad(name, value, "must be a probability between 0 and 1")
        positive("atom_b_factor", self.atom_b_factor, allow_zero=True)
        positive("voltage_kv", self.voltage_kv)
        positive("cs_mm", self.cs_mm, allow_zero=True)
        if not 0 <= self.amplitude_contrast < 1:
            bad("amplitude_contrast", self.amplitude_contrast, "must be in [0, 1)")
        ordered("defocus_um", self.defocus_um, upper=20.0)
        ordered("astigmatism", self.astigmatism)
        ordered("b_factor", self.b_factor)
        ordered("dose", self.dose, allow_zero=False)
        ordered("motion", self.motion)
        if self.rendering.bin < 1 or int(self.rendering.bin) != self.rendering.bin:
            bad("rendering.bin", self.rendering.bin, "must be a whole number >= 1")
        if self.rendering.eight_bit not in (None, "png", "jpg"):
            bad("rendering.eight_bit", self.rendering.eight_bit, "must be png, jpg or none")
        if self.rendering.sixteen_bit and self.rendering.eight_bit is not None:
            bad("rendering.sixteen_bit", True, "a rendering is exported as 8-bit or as 16-bit, not both")
        lo, hi = self.rendering.stretch
        if not 0 <= lo < hi <= 100:
            bad("rendering.stretch", self.rendering.stretch, "must be percentiles 0 <= lo < hi <= 100")
        if self.rendering.denoise is not None and not 0 <= self.rendering.denoise <= 1:
            bad("rendering.denoise", self.rendering.denoise, "must be between 0 and 1")
