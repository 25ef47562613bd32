"""Pixels of synthetic mammograms: breast geometry, fibroglandular tissue, lesions (masses,
calcification clusters, micro-calcification clusters, asymmetries, distortions) placed where the
findings say.

Two kinds of calcification cluster are drawn. ``calcifications`` scale with the image (dots about
0.25% of the image height wide, contrast 0.5): visible at any resolution. ``microcalcifications``
have a fixed size in pixels (`MICROCALCIFICATION_DIAMETER`, 2-3 px) and a lower contrast
(`MICROCALCIFICATION_CONTRAST`): on a full-resolution image (a breast about 2000 px tall) each dot
is sharper and brighter than anything the tissue texture makes at that scale, but in a view about
4x smaller (the paper's 518 x 518 input) it shrinks to a sub-pixel bump no stronger than the
texture's own, so only a model that sees full-resolution tiles can find them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .tables import _CC_LIKE_VIEWS, _MLO_LIKE_VIEWS, DENSE_FRACTION, GLAND_CONTRAST

# ----------------------------------------------------------------------------------------------
# Findings and breast geometry
# ----------------------------------------------------------------------------------------------

# Micro-calcifications: dot diameter (full width at half maximum) in pixels of the full view, and
# peak contrast over the tissue as a fraction of the detector range (regular calcifications: 0.5;
# gland over fat: 0.24-0.36; quantum noise about 0.004 + 0.01 x signal, see `_render_plan`).
MICROCALCIFICATION_DIAMETER = (2.0, 3.0)
MICROCALCIFICATION_CONTRAST = (0.07, 0.10)

_LESION_CHOICES = {
    "kind": ("mass", "calcifications", "microcalcifications", "asymmetry", "distortion"),
    "shape": ("round", "oval", "irregular"),
    "margin": ("circumscribed", "obscured", "microlobulated", "indistinct", "spiculated"),
    "density": ("high", "iso", "low", "fat"),
    "morphology": ("punctate", "amorphous", "pleomorphic", "fine-linear", "coarse"),
    "distribution": ("grouped", "clustered", "linear", "segmental", "regional", "diffuse"),
}


@dataclass(frozen=True)
class Lesion:
    """One visible finding, described in words (dataset codes are mapped before rendering).

    `size` is the radius of a mass, or of the area a calcification cluster spreads over, as a
    fraction of the image height. ``kind="microcalcifications"`` is a cluster of faint dots of a
    fixed 2-3 pixel size (`MICROCALCIFICATION_DIAMETER`), whatever the image size: visible on a
    full-resolution mammogram, lost when it is shrunk to a model's input size. `position` is (depth,
    across): depth 0 at the chest wall to 1 at the nipple, across -1 to 1 over the breast's height;
    None draws one at random. Giving the
    same position to the CC and MLO views of a breast puts the finding at the same place.

    >>> Lesion(kind="mass", shape="irregular", margin="spiculated", density="high", size=0.07).margin
    'spiculated'
    >>> Lesion(kind="tumour")
    Traceback (most recent call last):
    ValueError: Lesion.kind='tumour' is not one of ('mass', 'calcifications', 'microcalcifications', 'asymmetry', 'distortion')
    """

    kind: str = "mass"
    shape: str = "oval"
    margin: str = "circumscribed"
    density: str = "iso"
    morphology: str = "punctate"
    distribution: str = "grouped"
    size: float = 0.04
    position: tuple[float, float] | None = None

    def __post_init__(self):
        for name, choices in _LESION_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Lesion.{name}={getattr(self, name)!r} is not one of {choices}")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"Lesion.size={self.size} must be a fraction of the image height in (0, 0.5)")


@dataclass(frozen=True)
class _Geometry:
    """The breast in the full view, chest wall on the left, in pixels of the full view."""

    height: int
    width: int
    center_y: float
    depth: float
    half_height: float
    pectoral: tuple[float, float, float] | None  # width, height, bulge of the muscle triangle
    dense_fraction: float
    gland_contrast: float
    fat_level: float


@dataclass(frozen=True)
class _Window:
    """The part of the full view an image shows: the whole view, or a spot / magnification view."""

    top: float = 0.0
    left: float = 0.0
    zoom: float = 1.0


@dataclass(frozen=True)
class _LesionLayout:
    """Where and how one lesion is drawn, in full-view pixels (chest wall on the left)."""

    kind: str
    center: tuple[float, float]
    radius: float
    harmonics: tuple[tuple[int, float, float], ...]
    edge: float
    amplitude: float
    spicules: tuple[tuple[float, float], ...]
    fat_centre: bool
    dots: tuple[tuple[float, float, float, float], ...]  # y, x, sigma, amplitude

    def box(self) -> tuple[float, float, float, float]:
        """(ymin, xmin, ymax, xmax) around the lesion's body (spicule tips excluded)."""
        if self.dots:
            dots = np.asarray(self.dots)
            pad = np.maximum(2.0 * dots[:, 2], 1.5)
            return (float((dots[:, 0] - pad).min()), float((dots[:, 1] - pad).min()),
                    float((dots[:, 0] + pad).max()), float((dots[:, 1] + pad).max()))
        reach = self.radius * (1.0 + sum(abs(amplitude) for _, amplitude, _ in self.harmonics))
        if self.kind == "distortion":
            reach = 0.8 * max(length for _, length in self.spicules)
        y, x = self.center
        return (y - reach, x - reach, y + reach, x + reach)


@dataclass(frozen=True)
class _ImagePlan:
    geometry: _Geometry
    window: _Window
    lesions: tuple[_LesionLayout, ...]
    tissue_seed: int
    noise_seed: int


def _view_is_mlo_like(view: str) -> bool:
    if view in _MLO_LIKE_VIEWS:
        return True
    if view in _CC_LIKE_VIEWS:
        return False
    raise ValueError(f"Unknown view {view!r}: use one of {sorted(_CC_LIKE_VIEWS | _MLO_LIKE_VIEWS)}")


def _breast_geometry(rng: np.random.Generator, height: int, width: int, view: str, density: int) -> _Geometry:
    mlo = _view_is_mlo_like(view)
    size = 0.65 if density == 5 else 1.0  # a male breast is small
    if mlo:
        center_y = rng.uniform(0.40, 0.46) * height
        half_height = rng.uniform(0.54, 0.60) * height * size
        depth = rng.uniform(0.68, 0.88) * width * size
        top_reach = depth * math.sqrt(max(0.0, 1.0 - (center_y / half_height) ** 2))
        pectoral = (
            rng.uniform(0.55, 0.85) * max(top_reach, 0.2 * width),
            rng.uniform(0.35, 0.60) * height,
            rng.uniform(-0.15, 0.25),
        )
    else:
        center_y = rng.uniform(0.46, 0.54) * height
        half_height = rng.uniform(0.38, 0.46) * height * size
        depth = rng.uniform(0.62, 0.85) * width * size
        pectoral = None
    return _Geometry(
        height=height, width=width, center_y=center_y, depth=depth,
        half_height=half_height, pectoral=pectoral,
        dense_fraction=float(np.clip(DENSE_FRACTION[density] + rng.normal(0.0, 0.025), 0.02, 0.92)),
        gland_contrast=GLAND_CONTRAST[density] * rng.uniform(0.95, 1.05),
        fat_level=rng.uniform(0.28, 0.32),
    )


def _inside_pectoral(geometry: _Geometry, y, x):
    """How far inside the muscle triangle a point is: > 0 inside, < 0 outside (unitless)."""
    width, height, bulge = geometry.pectoral
    u, v = x / width, y / height
    return 1.0 - (u + v + bulge * u * v)


def _random_position(rng: np.random.Generator) -> tuple[float, float]:
    """(depth, across) of a finding: away from the skin line and the chest wall."""
    return (float(rng.uniform(0.25, 0.7)), float(rng.uniform(-0.6, 0.6)))


def _lesion_centre(geometry: _Geometry, position: tuple[float, float]) -> tuple[float, float]:
    depth_fraction, across = position
    depth_fraction = float(np.clip(depth_fraction, 0.05, 0.9))
    across = float(np.clip(across, -1.0, 1.0))
    x = depth_fraction * geometry.depth
    y = geometry.center_y + 0.8 * across * geometry.half_height * math.sqrt(1.0 - depth_fraction**2)
    y = float(np.clip(y, 0.06 * geometry.height, 0.92 * geometry.height))
    if geometry.pectoral is not None and _inside_pectoral(geometry, y, x) > -0.15:
        # Findings are in the breast, not in the muscle: push the centre past the muscle's edge.
        width, height, bulge = geometry.pectoral
        v = y / height
        x = max(x, width * (1.15 - v) / (1.0 + bulge * v) + 0.05 * geometry.depth)
    return y, x


def _lesion_layout(rng: np.random.Generator, geometry: _Geometry, lesion: Lesion) -> _LesionLayout:
    position = lesion.position
    if position is None:
        position = _random_position(rng)
    centre = _lesion_centre(geometry, position)
    height = geometry.height
    radius = lesion.size * height * rng.uniform(0.9, 1.1)
    harmonics: list[tuple[int, float, float]] = []
    spicules: tuple[tuple[float, float], ...] = ()
    dots: tuple[tuple[float, float, float, float], ...] = ()
    edge, amplitude, fat_centre = 0.1 * radius, 0.19, False

    if lesion.kind == "mass":
        if lesion.shape == "oval":
            harmonics.append((2, rng.uniform(0.18, 0.28), rng.uniform(0, 2 * math.pi)))
        elif lesion.shape == "irregular":
            harmonics += [(k, rng.uniform(0.07, 0.16), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4, 5)]
        if lesion.margin == "microlobulated":
            harmonics.append((int(rng.integers(8, 13)), 0.06, rng.uniform(0, 2 * math.pi)))
        edge = {"circumscribed": 0.06, "obscured": 0.25, "microlobulated": 0.1,
                "indistinct": 0.35, "spiculated": 0.15}[lesion.margin] * radius
        amplitude = {"high": 0.26, "iso": 0.19, "low": 0.13, "fat": 0.16}[lesion.density]
        fat_centre = lesion.density == "fat"
        if lesion.margin == "spiculated":
            count = int(rng.integers(8, 15))
            spicules = tuple((rng.uniform(0, 2 * math.pi), radius * rng.uniform(1.6, 2.6)) for _ in range(count))
    elif lesion.kind == "asymmetry":
        harmonics.append((2, rng.uniform(0.2, 0.35), rng.uniform(0, 2 * math.pi)))
        edge, amplitude = 0.6 * radius, 0.1
    elif lesion.kind == "distortion":
        count = int(rng.integers(10, 17))
        spicules = tuple((rng.uniform(0, 2 * math.pi), radius * rng.uniform(0.8, 1.4)) for _ in range(count))
        radius, edge, amplitude = 0.15 * radius, 0.5 * 0.15 * radius, 0.13
    elif lesion.kind == "microcalcifications":
        dots = _microcalcification_dots(rng, geometry, lesion, centre, radius)
    else:
        dots = _calcification_dots(rng, geometry, lesion, centre, radius)
    return _LesionLayout(
        kind=lesion.kind, center=centre, radius=radius, harmonics=tuple(harmonics), edge=edge,
        amplitude=amplitude, spicules=spicules, fat_centre=fat_centre, dots=dots,
    )


def _calcification_dots(rng, geometry: _Geometry, lesion: Lesion, centre, spread):
    low, high = {"punctate": (6, 14), "amorphous": (8, 20), "pleomorphic": (8, 22),
                 "fine-linear": (4, 8), "coarse": (2, 6)}[lesion.morphology]
    count = int(rng.integers(low, high + 1))
    y0, x0 = centre
    if lesion.distribution in ("grouped", "clustered"):
        ys = y0 + rng.normal(0, spread / 2, count)
        xs = x0 + rng.normal(0, spread / 2, count)
    elif lesion.distribution in ("linear", "segmental"):
        # Along a duct, i.e. roughly towards the nipple; a segment widens as it goes.
        along = rng.uniform(-1.2, 1.2, count) * spread
        half_angle = 0.08 if lesion.distribution == "linear" else 0.35
        offset = along * np.tan(rng.uniform(-half_angle, half_angle, count))
        angle = rng.uniform(-0.3, 0.3)
        ys = y0 + along * math.sin(angle) + offset * math.cos(angle)
        xs = x0 + along * math.cos(angle) - offset * math.sin(angle)
    elif lesion.distribution == "regional":
        r = 2.5 * spread * np.sqrt(rng.uniform(0, 1, count))
        theta = rng.uniform(0, 2 * math.pi, count)
        ys, xs = y0 + r * np.sin(theta), x0 + r * np.cos(theta)
    else:  # diffuse: scattered over the whole breast
        r = np.sqrt(rng.uniform(0, 0.8, count))
        theta = rng.uniform(-math.pi / 2, math.pi / 2, count)
        ys = geometry.center_y + r * np.sin(theta) * geometry.half_height
        xs = r * np.cos(theta) * geometry.depth * 0.9 + 0.05 * geometry.depth
    ys = np.clip(ys, 0.02 * geometry.height, 0.98 * geometry.height)
    xs = np.clip(xs, 0.02 * geometry.depth, 0.95 * geometry.depth)

    base_sigma = 0.0011 * geometry.height
    dots = []
    for y, x in zip(ys, xs):
        if lesion.morphology == "fine-linear":
            # A short cast: a few dots in a row.
            angle, pieces = rng.uniform(0, math.pi), int(rng.integers(3, 6))
            for step in range(pieces):
                dy, dx = 1.3 * base_sigma * step * math.sin(angle), 1.3 * base_sigma * step * math.cos(angle)
                dots.append((y + dy, x + dx, base_sigma * 0.8, 0.45))
            continue
        sigma, amplitude = {
            "punctate": (base_sigma, 0.5),
            "amorphous": (0.8 * base_sigma, 0.3),
            "pleomorphic": (base_sigma * rng.uniform(0.6, 1.6), 0.5),
            "coarse": (base_sigma * rng.uniform(2.5, 4.0), 0.55),
        }[lesion.morphology]
        dots.append((float(y), float(x), float(sigma), amplitude))
    return tuple(dots)


def _microcalcification_dots(rng, geometry: _Geometry, lesion: Lesion, centre, spread):
    """A cluster of faint dots of 2-3 pixels (sizes in pixels, not in fractions of the image).

    `spread` is the cluster's radius in pixels; the dots are scattered uniformly over that disc
    (a "grouped" / "clustered" distribution; a "linear" or "segmental" one lines them up along a
    duct), at least two diameters apart so that they stay separate dots.
    """
    low, high = {"punctate": (8, 16), "amorphous": (10, 20), "pleomorphic": (8, 18),
                 "fine-linear": (6, 12), "coarse": (5, 10)}[lesion.morphology]
    count = int(rng.integers(low, high + 1))
    y0, x0 = centre
    dots: list[tuple[float, float, float, float]] = []
    for _ in range(50 * count):  # rejection sampling; the disc has room for far more dots
        if len(dots) == count:
            break
        diameter = rng.uniform(*MICROCALCIFICATION_DIAMETER)
        if lesion.distribution in ("linear", "segmental"):
            along, across = rng.uniform(-1.0, 1.0) * spread, rng.normal(0.0, 0.12 * spread)
            y, x = y0 + across, x0 + along
        else:
            radius, angle = spread * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            y, x = y0 + radius * math.sin(angle), x0 + radius * math.cos(angle)
        if any(math.hypot(y - other_y, x - other_x) < 2.0 * MICROCALCIFICATION_DIAMETER[1]
               for other_y, other_x, _, _ in dots):
            continue
        # sigma of a Gaussian whose full width at half maximum is the diameter
        dots.append((float(y), float(x), diameter / 2.3548, float(rng.uniform(*MICROCALCIFICATION_CONTRAST))))
    return tuple(dots)


def _plan_image(
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    view: str,
    density: int,
    findings: Sequence[Lesion],
    spot_zoom: float | None = None,
) -> _ImagePlan:
    if density not in DENSE_FRACTION:
        raise ValueError(f"density={density!r} must be 1-4 (A-D) or 5 (male)")
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small: use at least 16x16")
    findings = [finding if isinstance(finding, Lesion) else Lesion(**finding) for finding in findings]
    # Separate streams so that adding a finding changes nothing but the finding.
    geometry_seed, tissue_seed, noise_seed, lesion_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=4))
    geometry = _breast_geometry(np.random.default_rng(geometry_seed), height, width, view, density)
    lesion_rng = np.random.default_rng(lesion_seed)
    lesions = tuple(_lesion_layout(lesion_rng, geometry, lesion) for lesion in findings)
    window = _Window()
    if spot_zoom is not None:
        # Spot compression / magnification: a zoomed part of the breast around the first finding.
        focus = lesions[0].center if lesions else (geometry.center_y, 0.5 * geometry.depth)
        shown_h, shown_w = height / spot_zoom, width / spot_zoom
        window = _Window(
            top=float(np.clip(focus[0] - shown_h / 2, 0, height - shown_h)),
            left=float(np.clip(focus[1] - shown_w / 2, 0, width - shown_w)),
            zoom=spot_zoom,
        )
    return _ImagePlan(geometry, window, lesions, tissue_seed, noise_seed)


def _output_boxes(plan: _ImagePlan, *, flip: bool) -> list[tuple[float, float, float, float] | None]:
    """Per lesion, its box in the stored image's pixels (ymin, xmin, ymax, xmax); None if not shown."""
    height, width, window = plan.geometry.height, plan.geometry.width, plan.window
    boxes = []
    for lesion in plan.lesions:
        y0, x0, y1, x1 = lesion.box()
        y0, y1 = (y0 - window.top) * window.zoom, (y1 - window.top) * window.zoom
        x0, x1 = (x0 - window.left) * window.zoom, (x1 - window.left) * window.zoom
        if flip:
            x0, x1 = width - x1, width - x0
        y0, x0, y1, x1 = max(y0, 0.0), max(x0, 0.0), min(y1, float(height)), min(x1, float(width))
        boxes.append((y0, x0, y1, x1) if y1 - y0 >= 1.0 and x1 - x0 >= 1.0 else None)
    return boxes


# ----------------------------------------------------------------------------------------------
# Pixel synthesis
# ----------------------------------------------------------------------------------------------


def _smoothstep(values, low: float, high: float):
    t = np.clip((values - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _noise_grid(rng: np.random.Generator, rows: int, cols: int, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Gaussian-blurred white noise on a coarse grid (periodic blur via FFT), zero mean, unit std."""
    noise = rng.standard_normal((rows, cols))
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    kernel = np.exp(-2.0 * math.pi**2 * ((fy * sigma_rows) ** 2 + (fx * sigma_cols) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(rows, cols))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _sample_grid(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear samples of a grid spanning the full view, at rows `ys` and columns `xs` (pixels)."""
    rows, cols = grid.shape
    gy = np.clip(ys / height * (rows - 1), 0, rows - 1)
    gx = np.clip(xs / width * (cols - 1), 0, cols - 1)
    y0 = np.minimum(gy.astype(np.int64), rows - 2)
    x0 = np.minimum(gx.astype(np.int64), cols - 2)
    wy = (gy - y0).astype(np.float32)[:, None]
    wx = (gx - x0).astype(np.float32)[None, :]
    by_rows = grid[y0] * (1 - wy) + grid[y0 + 1] * wy
    return by_rows[:, x0] * (1 - wx) + by_rows[:, x0 + 1] * wx


class _Tissue:
    """The breast's fat, gland and muscle, evaluated on any grid of full-view coordinates."""

    def __init__(self, geometry: _Geometry, rng: np.random.Generator):
        self.geometry = geometry
        aspect = geometry.width / geometry.height
        # Gland blobs at three scales, stretched along the ducts (towards the nipple).
        self.octaves = [
            (weight, _noise_grid(rng, rows, max(4, round(rows * aspect)), sigma, 1.8 * sigma))
            for weight, rows, sigma in ((1.0, 12, 1.0), (0.55, 32, 1.2), (0.3, 88, 1.3))
        ]
        # Fine texture: a few pixels per cell on small images, some tens of microns on full-size ones.
        rows = max(16, min(geometry.height // 2, 512))
        self.fine = _noise_grid(rng, rows, max(4, round(rows * aspect)), 0.8, 1.0)
        coarse_ys = (np.arange(96) + 0.5) * geometry.height / 96
        coarse_xs = (np.arange(max(8, round(96 * aspect))) + 0.5) * geometry.width / max(8, round(96 * aspect))
        r_ell, pectoral, gland = self._fields(coarse_ys, coarse_xs)
        breast = (r_ell < 1.0) & (pectoral < 0.5)
        values = gland[breast] if breast.sum() > 10 else gland.ravel()
        self.threshold = float(np.quantile(values, 1.0 - geometry.dense_fraction))

    def _fields(self, ys, xs):
        g = self.geometry
        y, x = ys[:, None].astype(np.float32), xs[None, :].astype(np.float32)
        r_ell = np.sqrt((x / g.depth) ** 2 + ((y - g.center_y) / g.half_height) ** 2)
        thickness = np.clip(1.0 - r_ell, 0.0, 1.0)
        if g.pectoral is not None:
            inside = _inside_pectoral(g, y, x)
            edge_px = g.pectoral[0] * g.pectoral[1] / math.hypot(g.pectoral[0], g.pectoral[1])
            pectoral = np.clip(0.5 + inside * edge_px / 1.5, 0.0, 1.0)
        else:
            pectoral = np.zeros_like(r_ell)
        gland = sum(weight * _sample_grid(grid, ys, xs, g.height, g.width) for weight, grid in self.octaves)
        # Gland sits inside a rim of subcutaneous fat and in front of the retro-mammary fat.
        prior = 1.6 * _smoothstep(thickness, 0.0, 0.35) - 0.7 * np.exp(-x / (0.08 * g.depth)) - 3.0 * pectoral
        return r_ell, pectoral, gland + prior

    def signal(self, ys: np.ndarray, xs: np.ndarray, zoom: float) -> np.ndarray:
        """Detector signal in [0, 1] (dense = bright) on the grid, before findings and noise."""
        g = self.geometry
        r_ell, pectoral, gland = self._fields(ys, xs)
        texture = _sample_grid(self.fine, ys, xs, g.height, g.width)
        thickness = np.clip(1.0 - r_ell, 0.0, 1.0)
        # A soft edge: gland fades into fat over a few pixels instead of a cut-out outline.
        dense = 1.0 / (1.0 + np.exp(-(gland - self.threshold) / 0.3))
        fat = g.fat_level * (0.72 + 0.28 * _smoothstep(thickness, 0.0, 0.3)) + 0.015 * texture
        breast = fat + g.gland_contrast * dense * (1.0 + 0.18 * texture)
        if g.pectoral is not None:
            muscle = 0.58 + 0.05 * np.clip(_inside_pectoral(g, ys[:, None], xs[None, :]), 0, 1) + 0.015 * texture
            breast = breast * (1.0 - pectoral) + muscle * pectoral
        skin_px = (1.0 - r_ell) * min(g.depth, g.half_height) * zoom
        inside = np.clip(0.5 + skin_px / 1.5, 0.0, 1.0)
        background = 0.03
        return (background + inside * (breast - background)).astype(np.float32)


def _draw_lesion(signal: np.ndarray, lesion: _LesionLayout, ys: np.ndarray, xs: np.ndarray, zoom: float) -> None:
    """Add one lesion to `signal` (on the grid `ys` x `xs` of full-view coordinates), in place."""
    if lesion.dots:
        for y, x, sigma, amplitude in lesion.dots:
            # At least about one output pixel wide, so tiny images still show the dot.
            sigma_px = max(sigma * zoom, 0.55)
            reach = 3.0 * sigma_px / zoom
            rows = np.nonzero(np.abs(ys - y) <= reach)[0]
            cols = np.nonzero(np.abs(xs - x) <= reach)[0]
            if rows.size and cols.size:
                dy = (ys[rows] - y)[:, None] * zoom
                dx = (xs[cols] - x)[None, :] * zoom
                signal[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += amplitude * np.exp(
                    -(dy**2 + dx**2) / (2 * sigma_px**2))
        return
    cy, cx = lesion.center
    reach = lesion.radius * 1.8 + lesion.edge * 2 + max((length for _, length in lesion.spicules), default=0.0)
    rows = np.nonzero(np.abs(ys - cy) <= reach)[0]
    cols = np.nonzero(np.abs(xs - cx) <= reach)[0]
    if not (rows.size and cols.size):
        return
    dy = (ys[rows] - cy)[:, None]
    dx = (xs[cols] - cx)[None, :]
    distance = np.sqrt(dy**2 + dx**2)
    angle = np.arctan2(dy, dx)
    outline = lesion.radius * (1.0 + sum(a * np.cos(k * angle + phase) for k, a, phase in lesion.harmonics))
    body = _smoothstep((outline - distance) / max(lesion.edge, 0.5 / zoom), -0.5, 0.5)
    dome = 0.75 + 0.25 * np.sqrt(np.clip(1.0 - (distance / np.maximum(outline, 1e-6)) ** 2, 0.0, 1.0))
    value = lesion.amplitude * body * dome
    if lesion.fat_centre:
        value = value * (1.0 - 0.9 * np.exp(-((distance / (0.5 * lesion.radius)) ** 2)))
    width = max(0.06 * lesion.radius, 0.7 / zoom)
    for theta, length in lesion.spicules:
        along = dx * math.cos(theta) + dy * math.sin(theta)
        across = -dx * math.sin(theta) + dy * math.cos(theta)
        fade = np.clip(1.0 - along / length, 0.0, 1.0) * (along >= 0)
        value = value + 0.55 * lesion.amplitude * fade * np.exp(-((across / width) ** 2))
    signal[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += value.astype(np.float32)


def _binomial_blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    rows = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def _render_plan(plan: _ImagePlan, *, bits_stored: int, flip: bool, synthetic_2d: bool = False) -> np.ndarray:
    g, window = plan.geometry, plan.window
    ys = window.top + (np.arange(g.height) + 0.5) / window.zoom
    xs = window.left + (np.arange(g.width) + 0.5) / window.zoom
    signal = _Tissue(g, np.random.default_rng(plan.tissue_seed)).signal(ys, xs, window.zoom)
    for lesion in plan.lesions:
        _draw_lesion(signal, lesion, ys, xs, window.zoom)
    noise_scale = 0.5 if synthetic_2d else 1.0
    if synthetic_2d:
        # A C-view is reconstructed from the tomosynthesis slices: smoother, a little flatter.
        signal = _binomial_blur(_binomial_blur(signal)) ** 1.1
    noise = np.random.default_rng(plan.noise_seed).standard_normal(signal.shape, dtype=np.float32)
    signal = signal + noise_scale * (0.004 + 0.01 * signal) * noise
    maxval = 2**bits_stored - 1
    pixels = np.rint(np.clip(signal, 0.0, 1.0) * maxval).astype(np.uint16)
    return np.ascontiguousarray(pixels[:, ::-1]) if flip else pixels


def _stored_flip(laterality: str, mirrored: bool) -> bool:
    """Right breasts are stored with the chest wall on the right, unless the unit mirrors them."""
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality={laterality!r} must be 'L' or 'R'")
    return (laterality == "R") != mirrored


def render_mammogram(
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    laterality: str,
    view: str,
    density: int,
    findings: Sequence[Lesion],
    bits_stored: int = 16,
    return_boxes: bool = False,
):
    """A detector-like mammogram: uint16, dense tissue bright (MONOCHROME2), values < 2**bits_stored.

    The breast is stored as a unit stores it: chest wall on the left for `laterality` "L", on the
    right for "R". `view` is CC-like (CC, XCCL, ...) or MLO-like (MLO, ML, LM, ...: with a pectoral
    muscle). `density` is 1-4 (A-D) or 5 (male). `findings` are `Lesion`s (or dicts of their
    fields); the same generator state with and without a finding gives the same breast, texture
    and noise, so the difference is the finding alone. With `return_boxes=True` the result is
    `(pixels, boxes)`: per finding, its (ymin, xmin, ymax, xmax) box in pixels, or None when the
    finding falls outside the image.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> pixels, boxes = render_mammogram(rng, height=128, width=104, laterality="R", view="MLO",
    ...     density=2, findings=[Lesion(kind="mass", size=0.06)], bits_stored=12, return_boxes=True)
    >>> int(pixels.max()) < 4096, len(boxes)
    (True, 1)
    >>> bool(pixels[:, 52:].mean() > pixels[:, :52].mean())  # right breast: chest wall on the right
    True
    """
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored={bits_stored} must be between 8 and 16")
    flip = _stored_flip(laterality, False)
    plan = _plan_image(rng, height=height, width=width, view=view, density=density, findings=findings)
    pixels = _render_plan(plan, bits_stored=bits_stored, flip=flip)
    return (pixels, _output_boxes(plan, flip=flip)) if return_boxes else pixels
