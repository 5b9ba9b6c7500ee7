"""The specimen: where particles sit, and the ice, carbon and junk around them.

Everything here is in field coordinates: Å from the centre of fine pixel ``[0, 0]`` of the
padded field, ``x`` along columns and ``y`` along rows. Placement is random sequential
addition with a minimum distance, mixed with loose clusters and modulated by a smooth density
field, so fields range from sparse to crowded without packing into a lattice. What pickers must
not pick (carbon edge, contamination, aggregates, broken particles) is recorded as decoys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hydrapicker.simulate.potential import FineGrid, form_factor, radial_rows, radial_table, water_form_factor
from hydrapicker.simulate.structure import AtomicModel

__all__ = [
    "DECOY_KINDS",
    "Decoy",
    "Layout",
    "PlacedParticle",
    "Background",
    "layout_specimen",
    "background",
    "water_structure_factor",
    "smooth_field",
]

#: Decoy kinds and the class number written for each (``rlnClassNumber`` of the decoy file).
DECOY_KINDS: dict[str, int] = {"carbon_edge": 1, "contamination": 2, "aggregate": 3, "broken": 4, "fragment": 5}


@dataclass(frozen=True)
class PlacedParticle:
    """A copy of the model in the field: a true particle unless ``kind`` says otherwise."""

    x: float  # Å, field frame
    y: float
    rotation: np.ndarray  # [3, 3], model -> field frame
    kind: str = "particle"  # "particle", "aggregate" (member of one), "broken", "fragment"
    cut: tuple[np.ndarray, float] | None = None


@dataclass(frozen=True)
class Decoy:
    """Something on the micrograph that is not a particle."""

    x: float  # Å, field frame
    y: float
    kind: str
    diameter: float  # Å


@dataclass
class Layout:
    """Where everything is; the background maps are built from this by :func:`background`."""

    extent: tuple[float, float]  # (width, height) of the padded field, Å
    particles: list[PlacedParticle] = field(default_factory=list)
    decoys: list[Decoy] = field(default_factory=list)
    hole: tuple[float, float, float] | None = None  # carbon hole (cx, cy, radius), carbon outside
    carbon_thickness: float = 0.0
    contaminants: list[tuple[float, float, float, float]] = field(default_factory=list)  # x, y, radius, height
    # Hexagonal ice crystals: x, y, apothem, thickness, angle (rad), Bragg loss length (Å).
    crystals: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    ice_thickness: float = 0.0
    ice_gradient: tuple[float, float] = (0.0, 0.0)  # fractional change per Å along x, y
    ice_roughness: float = 0.0
    roughness_seed: int = 0
    ice_texture: float = 0.0  # rms Å of short-range thickness variation
    texture_length: float = 40.0  # its correlation length, Å


def smooth_field(shape: tuple[int, int], correlation_px: float, seed: int) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with the given correlation length (pixels).

    Drawn on a coarse grid and interpolated up, so its cost does not grow with ``shape``.
    """
    step = max(1.0, correlation_px / 4.0)
    coarse_shape = (int(np.ceil(shape[0] / step)) + 3, int(np.ceil(shape[1] / step)) + 3)
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma=correlation_px / step, mode="wrap")
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-12)
    zoom = (shape[0] / (coarse_shape[0] - 3), shape[1] / (coarse_shape[1] - 3))
    full = ndimage.zoom(coarse, zoom, order=1, grid_mode=True, mode="grid-wrap")
    return full[: shape[0], : shape[1]]


def water_structure_factor(q: np.ndarray, s0: float, peak_A: float) -> np.ndarray:
    """Crude structure factor of amorphous ice: ``s0`` at q = 0 (low compressibility), 1 at high
    q, a peak at ``1 / peak_A``. Without it (ideal-gas ice) particles drown in ice noise."""
    qp = 1.0 / peak_A
    rise = 1.0 - np.exp(-((q / (0.55 * qp)) ** 2))
    return s0 + (1.0 - s0) * rise + 0.8 * np.exp(-(((q - qp) / (0.18 * qp)) ** 2))


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, 3, 3))
    return Rotation.random(n, random_state=rng).as_matrix()


def layout_specimen(
    model: AtomicModel,
    diameter: float,
    extent: tuple[float, float],
    image_box: tuple[float, float, float, float],
    n_particles: int,
    rng: np.random.Generator,
    *,
    min_distance: float,
    clustering: float,
    ice_thickness: float,
    ice_gradient: float,
    ice_roughness: float,
    carbon: float | None,
    n_contaminants: int,
    n_aggregates: int,
    n_broken: int,
    n_fragments: int = 0,
    ice_texture: float = 0.0,
    positions: np.ndarray | None = None,
) -> Layout:
    """Draw a specimen.

    Args:
        diameter: particle diameter (Å) by :func:`hydrapicker.simulate.particle_diameter`.
        extent: (width, height) of the padded field in Å.
        image_box: (x0, y0, x1, y1), the part of the field that becomes the micrograph (Å).
        n_particles: true particles wanted over the whole padded field.
        min_distance: closest allowed centre distance, in diameters.
        clustering: fraction of particles drawn around cluster centres.
        carbon: carbon thickness (Å) for a hole edge in the field, or ``None``.
        positions: ``[n, 2]`` (x, y) Å: put the true particles exactly here instead of drawing
            them (tests, figures); the last ``n_broken`` become broken particles.
    """
    width, height = extent
    layout = Layout(extent=extent, ice_thickness=ice_thickness, ice_roughness=ice_roughness)
    angle = rng.uniform(0, 2 * np.pi)
    layout.ice_gradient = (ice_gradient * np.cos(angle) / width, ice_gradient * np.sin(angle) / height)
    layout.roughness_seed = int(rng.integers(2**31))
    layout.ice_texture = float(ice_texture)
    layout.texture_length = float(rng.uniform(20.0, 70.0))
    x0, y0, x1, y1 = image_box
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    obstacles: list[tuple[float, float, float]] = []  # x, y, keep-out radius (Å)

    if carbon is not None:
        radius = rng.uniform(4000.0, 8000.0)
        theta = rng.uniform(0, 2 * np.pi)
        # The edge crosses the image between 10 % and 45 % of its width from the centre.
        reach = rng.uniform(0.1, 0.45) * min(x1 - x0, y1 - y0)
        hx, hy = cx - (radius - reach) * np.cos(theta), cy - (radius - reach) * np.sin(theta)
        layout.hole = (float(hx), float(hy), float(radius))
        layout.carbon_thickness = float(carbon)
        # Decoys every half diameter along the part of the rim inside the image.
        n_arc = int(2 * np.pi * radius / (0.5 * diameter))
        phi = np.linspace(0, 2 * np.pi, n_arc, endpoint=False)
        ex, ey = hx + radius * np.cos(phi), hy + radius * np.sin(phi)
        inside = (ex >= x0) & (ex <= x1) & (ey >= y0) & (ey <= y1)
        layout.decoys += [Decoy(float(a), float(b), "carbon_edge", diameter) for a, b in zip(ex[inside], ey[inside])]

    for _ in range(n_contaminants):
        radius = float(np.exp(rng.uniform(np.log(0.5 * diameter), np.log(3.5 * diameter))))
        radius = min(radius, 0.15 * min(x1 - x0, y1 - y0))
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if rng.random() < 0.35:
            # A crystalline-ice plate: flat, angular, and dark from Bragg scattering out of the
            # aperture, unlike the round amorphous ice balls.
            thickness = float(rng.uniform(200.0, 1200.0))
            loss = float(np.exp(rng.uniform(np.log(1500.0), np.log(12000.0))))
            layout.crystals.append((float(x), float(y), radius, thickness, float(rng.uniform(0, np.pi / 3)), loss))
        else:
            height = float(min(rng.uniform(1.0, 2.0) * radius, 4000.0))
            layout.contaminants.append((float(x), float(y), radius, height))
        layout.decoys.append(Decoy(float(x), float(y), "contamination", 2 * radius))
        obstacles.append((float(x), float(y), 1.16 * radius + 0.5 * diameter))  # 1.16: a hexagon's corners

    def allowed(x: float, y: float, margin: float) -> bool:
        if layout.hole is not None:
            hx, hy, hr = layout.hole
            if (x - hx) ** 2 + (y - hy) ** 2 > (hr - margin) ** 2:
                return False
        for ox, oy, r in obstacles:
            if (x - ox) ** 2 + (y - oy) ** 2 < (r + margin - 0.5 * diameter) ** 2:
                return False
        return True

    for _ in range(n_aggregates):
        for _try in range(20):
            ax, ay = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if allowed(ax, ay, diameter):
                break
        else:
            continue
        members = int(rng.integers(3, 11))
        offsets = rng.normal(0.0, 0.45 * diameter * np.sqrt(members / 4), size=(members, 2))
        rotations = _rotations(rng, members)
        mx, my = ax + offsets[:, 0], ay + offsets[:, 1]
        for (px, py), rot in zip(offsets, rotations):
            layout.particles.append(PlacedParticle(float(ax + px), float(ay + py), rot, "aggregate"))
        spread = float(np.sqrt((offsets**2).sum(axis=1)).max()) + 0.5 * diameter
        layout.decoys.append(Decoy(float(mx.mean()), float(my.mean()), "aggregate", 2 * spread))
        obstacles.append((float(mx.mean()), float(my.mean()), spread + 0.5 * diameter))

    density = smooth_field((32, 32), 6.0, int(rng.integers(2**31)))
    if positions is None:
        positions = _sequential_placement(
            rng,
            n_particles + n_broken,
            extent,
            min_distance * diameter,
            clustering,
            diameter,
            density,
            lambda x, y: allowed(x, y, 0.5 * diameter),
        )
    else:
        positions = [(float(x), float(y)) for x, y in np.asarray(positions, dtype=np.float64).reshape(-1, 2)]
        n_broken = min(n_broken, len(positions))
    rotations = _rotations(rng, len(positions))
    all_coords = model.all_coords()
    for i, ((x, y), rot) in enumerate(zip(positions, rotations)):
        if i < len(positions) - n_broken:
            layout.particles.append(PlacedParticle(float(x), float(y), rot))
            continue
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        keep = rng.uniform(0.3, 0.7)
        offset = float(np.quantile(all_coords @ normal, keep))
        kept = all_coords[all_coords @ normal < offset]
        shift = rot[:2] @ kept.mean(axis=0)
        layout.particles.append(PlacedParticle(float(x), float(y), rot, "broken", (normal, offset)))
        layout.decoys.append(Decoy(float(x + shift[0]), float(y + shift[1]), "broken", diameter))

    # Small pieces (dissociated subunits, denatured protein): the faint blobs that fill real
    # backgrounds. Anywhere in the hole, overlaps allowed.
    for _ in range(n_fragments):
        for _try in range(10):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            if allowed(x, y, 0.0):
                break
        else:
            continue
        rot = _rotations(rng, 1)[0]
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        keep = rng.uniform(0.05, 0.3)
        offset = float(np.quantile(all_coords @ normal, keep))
        kept = all_coords[all_coords @ normal < offset]
        shift = rot[:2] @ kept.mean(axis=0)
        layout.particles.append(
            PlacedParticle(float(x - shift[0]), float(y - shift[1]), rot, "fragment", (normal, offset))
        )
        layout.decoys.append(Decoy(float(x), float(y), "fragment", diameter * keep ** (1 / 3)))
    return layout


def _sequential_placement(
    rng: np.random.Generator,
    n: int,
    extent: tuple[float, float],
    min_dist: float,
    clustering: float,
    diameter: float,
    density: np.ndarray,
    allowed,
) -> list[tuple[float, float]]:
    """Random sequential addition from a mix of uniform and clustered candidates."""
    if n <= 0:
        return []
    width, height = extent
    n_candidates = 30 * n + 200
    n_clustered = int(round(clustering * n_candidates))
    parents = max(1, int(round(clustering * n / 6)))
    parent_xy = rng.uniform((0, 0), (width, height), size=(parents, 2))
    spread = rng.uniform(1.0, 2.5) * diameter
    clustered = parent_xy[rng.integers(parents, size=n_clustered)] + rng.normal(0, spread, size=(n_clustered, 2))
    uniform = rng.uniform((0, 0), (width, height), size=(n_candidates - n_clustered, 2))
    candidates = np.concatenate([clustered, uniform])
    candidates = candidates[rng.permutation(len(candidates))]
    candidates[:, 0] %= width
    candidates[:, 1] %= height
    # A smooth density field thins candidates, so some regions are crowded and others sparse.
    rows, cols = density.shape
    d = density[
        (candidates[:, 1] / height * rows).astype(int) % rows, (candidates[:, 0] / width * cols).astype(int) % cols
    ]
    keep_prob = np.clip(0.65 + 0.35 * d, 0.05, 1.0)
    candidates = candidates[rng.random(len(candidates)) < keep_prob]

    cell = max(min_dist, 1e-6)
    grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
    accepted: list[tuple[float, float]] = []
    min2 = min_dist**2
    for x, y in candidates:
        if not allowed(x, y):
            continue
        ci, cj = int(x // cell), int(y // cell)
        clash = False
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for ox, oy in grid.get((ci + di, cj + dj), ()):
                    if (x - ox) ** 2 + (y - oy) ** 2 < min2:
                        clash = True
                        break
                if clash:
                    break
            if clash:
                break
        if clash:
            continue
        grid.setdefault((ci, cj), []).append((x, y))
        accepted.append((float(x), float(y)))
        if len(accepted) == n:
            break
    return accepted


def background(layout: Layout, grid: FineGrid, config, sigma: float) -> Background:
    """Ice (thickness map with a gradient, smooth roughness, contaminants) and carbon on the fine grid."""
    return Background(layout, grid, config, sigma)


class Background:
    """Ice and carbon of a :class:`Layout` on the fine grid, made a block of rows at a time.

    :meth:`maps` gives the mean phase and the inelastic amplitude of some rows,
    :meth:`noise_spectrum` the solvent's fluctuations; no map of the whole grid is held (each
    would be 400 MB at K3 size).
    """

    def __init__(self, layout: Layout, grid: FineGrid, config, sigma: float) -> None:
        from hydrapicker.simulate.potential import POTENTIAL_CONSTANT

        self.layout, self.grid, self.config = layout, grid, config
        rows, cols = grid.shape
        s = grid.spacing
        self._y = (np.arange(rows, dtype=np.float32) * s)[:, None]
        self._x = (np.arange(cols, dtype=np.float32) * s)[None, :]
        self._coarse = None
        if layout.ice_roughness > 0 and layout.ice_thickness > 0:
            # Smooth on a 1500 Å scale: drawn 4x coarser and repeated, the steps are invisible.
            self._coarse = smooth_field(
                (-(-rows // _ROUGH_BLOCK), -(-cols // _ROUGH_BLOCK)), 1500.0 / (s * _ROUGH_BLOCK), layout.roughness_seed
            )
        # Contaminants and crystal plates with the rows and columns they reach; those off the grid dropped.
        balls = [(c, _box(c[0], c[1], c[2], s, grid.shape)) for c in layout.contaminants]
        plates = [(c, _box(c[0], c[1], c[2] / np.cos(np.pi / 6) + 30.0, s, grid.shape)) for c in layout.crystals]
        self._balls = [(c, box) for c, box in balls if box is not None]
        self._plates = [(c, box) for c, box in plates if box is not None]
        self._f_w0 = float(water_form_factor(np.zeros(1))[0])
        self._f_c0 = float(form_factor("C", np.zeros(1))[0])
        self._scale = sigma * POTENTIAL_CONSTANT

    def _thickness(self, rows: slice) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        # Ice, carbon and Bragg loss of rows r0:r1, float32; carbon and bragg are None when absent.
        layout = self.layout
        r0, r1 = rows.start, rows.stop
        x, y = self._x, self._y[rows]
        width, height = layout.extent
        gx, gy = layout.ice_gradient
        ice = np.float32(layout.ice_thickness) * (1.0 + gx * (x - 0.5 * width) + gy * (y - 0.5 * height)).astype(
            np.float32
        )
        if self._coarse is not None:
            b = _ROUGH_BLOCK
            coarse = self._coarse[r0 // b : (r1 - 1) // b + 1]
            rough = np.repeat(np.repeat(coarse, b, axis=0), b, axis=1)[r0 % b : r0 % b + r1 - r0, : x.shape[1]]
            ice *= (1.0 + layout.ice_roughness * rough).astype(np.float32)
        for (cx, cy, radius, h), (b0, b1, c0, c1) in self._balls:
            # A ball of ice: thickness follows a sphere's chord. Only its bounding box is touched.
            b0, b1 = max(b0, r0), min(b1, r1)
            if b0 >= b1:
                continue
            r2 = ((x[:, c0:c1] - cx) ** 2 + (self._y[b0:b1] - cy) ** 2) / radius**2
            ice[b0 - r0 : b1 - r0, c0:c1] += np.float32(h) * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        bragg = np.zeros_like(ice) if self._plates else None
        for (cx, cy, apothem, thickness, angle, loss_length), (b0, b1, c0, c1) in self._plates:
            b0, b1 = max(b0, r0), min(b1, r1)
            if b0 >= b1:
                continue
            dx, dy = x[:, c0:c1] - cx, self._y[b0:b1] - cy
            # Signed distance to a regular hexagon: the largest projection on its three face normals.
            inside_by = (
                np.max(
                    [np.abs(dx * np.cos(angle + k * np.pi / 3) + dy * np.sin(angle + k * np.pi / 3)) for k in range(3)],
                    axis=0,
                )
                - apothem
            )
            plate = (0.5 * (1 - np.tanh(inside_by / 8.0))).astype(np.float32)
            ice[b0 - r0 : b1 - r0, c0:c1] += np.float32(thickness) * plate
            bragg[b0 - r0 : b1 - r0, c0:c1] += np.float32(thickness / (2 * loss_length)) * plate
        carbon = None
        if layout.hole is not None:
            hx, hy, hr = layout.hole
            dist = np.sqrt((x - hx) ** 2 + (y - hy) ** 2) - hr
            edge = 0.5 * (1 + np.tanh(dist / 15.0))  # 0 in the hole, 1 on the carbon
            carbon = np.float32(layout.carbon_thickness) * edge
            ice *= 1.0 - 0.25 * edge  # somewhat thinner ice over the film; the film adds to it, so it looks darker
        np.clip(ice, 0.0, None, out=ice)
        return ice, carbon, bragg

    def maps(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Phase (rad, mean potential of ice + carbon) and amplitude (inelastic loss,
        ``exp(-t / (2 mfp))``) of ``rows`` of the grid, float32."""
        config = self.config
        ice, carbon, bragg = self._thickness(rows)
        phase = np.float32(self._scale * config.water_density * self._f_w0) * ice
        loss = ice / np.float32(2 * config.inelastic_mfp_ice)
        if carbon is not None:
            phase += np.float32(self._scale * config.carbon_density * self._f_c0) * carbon
            loss += carbon / np.float32(2 * config.inelastic_mfp_carbon)
        if bragg is not None:
            loss += bragg
        return phase, np.exp(-loss)

    def _std(self, rows: slice) -> np.ndarray:
        # Number fluctuations of solvent molecules per pixel column, in water-molecule units of
        # scattering: the variance is the mean count.
        config, area = self.config, self.grid.pixel_area
        ice, carbon, _ = self._thickness(rows)
        variance = np.float32(config.water_density * area) * ice
        if carbon is not None:
            variance += np.float32(config.carbon_density * area * (self._f_c0 / self._f_w0) ** 2) * carbon
        return np.sqrt(variance)

    def noise_spectrum(self, rng: np.random.Generator, workers: int = 1) -> np.ndarray:
        """The solvent's fluctuations, rfft2 layout, Å x molecules per pixel: white counts shaped
        by the structure factor and the molecular form factor, plus the film's surface texture."""
        layout, grid, config = self.layout, self.grid, self.config
        rows, cols = grid.shape
        blocks = grid.row_blocks()
        texture = layout.ice_texture > 0 and layout.ice_thickness > 0
        if texture:
            # The texture's scale needs the mean of its filter over the whole grid: taken first,
            # while little else is held.
            exponent = -2 * np.pi**2 * layout.texture_length**2
            squares = np.empty((rows, cols // 2 + 1))
            for block in blocks:
                squares[block] = np.exp(exponent * grid.rfft_q2(block)) ** 2
            norm = np.sqrt(rows * cols / max(float(squares.mean()), 1e-30))  # real-space rms of 1 per pixel
            del squares
        # noise holds the std first: its max decides whether noise is drawn at all (the random
        # stream must not move otherwise), and the draws then multiply it in place.
        noise = np.empty(grid.shape, dtype=np.float32)
        for block in blocks:
            noise[block] = self._std(block)
        if float(noise.max()) > 0:
            for block in blocks:
                noise[block] = rng.standard_normal(noise[block].shape, dtype=np.float32) * noise[block]
            spectrum = scipy.fft.rfft2(noise, workers=workers)
            del noise
            shaping = _solvent_table(grid, config.water_s0, config.water_peak_A)
            for block in blocks:
                spectrum[block] *= radial_rows(grid, shaping, block)
        else:
            del noise
            spectrum = np.zeros((rows, cols // 2 + 1), dtype=np.complex64)
        if texture:
            # The film's surfaces are not flat: thickness varies by some tens of Å over 20-70 Å,
            # which the low S(0) of bulk water does not give. Drawn straight in Fourier space as
            # Gaussian-filtered white noise (no FFT); units: water molecules x form factor per pixel.
            real = rng.standard_normal(spectrum.shape, dtype=np.float32)
            imag = rng.standard_normal(spectrum.shape, dtype=np.float32)
            scale = np.float32(config.water_density * grid.pixel_area * layout.ice_texture * norm / np.sqrt(2))
            f_w = radial_table(grid, lambda q: water_form_factor(q**2))
            for block in blocks:
                filt = np.exp(exponent * grid.rfft_q2(block))
                white = real[block] + 1j * imag[block]
                spectrum[block] += white * (scale * filt.astype(np.float32) * radial_rows(grid, f_w, block))
        return spectrum


_ROUGH_BLOCK = 4  # the ice roughness field is drawn this much coarser than the grid


def _box(cx: float, cy: float, reach: float, s: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    # Rows r0:r1 and columns c0:c1 of the grid within reach (Å) of (cx, cy); None if none are.
    r0, r1 = max(0, int((cy - reach) / s) - 1), min(shape[0], int((cy + reach) / s) + 2)
    c0, c1 = max(0, int((cx - reach) / s) - 1), min(shape[1], int((cx + reach) / s) + 2)
    return None if r0 >= r1 or c0 >= c1 else (r0, r1, c0, c1)


@functools.lru_cache(maxsize=4)
def _solvent_table(grid: FineGrid, s0: float, peak_A: float) -> tuple[np.ndarray, np.ndarray]:
    return radial_table(grid, lambda q: np.sqrt(water_structure_factor(q, s0, peak_A)) * water_form_factor(q**2))
