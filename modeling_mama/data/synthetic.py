"""Synthetic look-alikes of EMBED, RSNA and VinDr-Mammo, written as real DICOM files.

The real datasets need an access application, so converters, processors and training code are
developed and tested on these look-alikes: the same folder shapes, the same table columns, real
DICOM files (pydicom) with the awkward parts of real mammograms (MONOCHROME1, 12-16 stored bits,
rescale slope/intercept, LINEAR and SIGMOID windows, JPEG 2000 lossless and RLE lossless pixel
data, missing laterality tags), and pictures that carry the tables' labels:

- the breast is a half ellipse against the chest wall, with a pectoral muscle triangle on MLO-like
  views; images are stored the way mammography units store them: a **left** breast has its chest
  wall on the **left** of the array and a **right** breast on the **right** (PatientOrientation
  ``A\\R`` / ``P\\L`` for CC views), so a reader flips right breasts to put every chest wall left;
- the fibroglandular tissue covers about 10 / 30 / 55 / 80 % of the breast for density 1-4 (A-D)
  and is brighter for denser breasts;
- masses (round / oval / irregular, circumscribed to spiculated, low to high density) and
  calcification clusters follow the findings: none for a negative breast, small benign ones for
  BI-RADS 2-3, larger irregular masses and clustered pleomorphic calcifications for BI-RADS 4-6,
  on the side of the finding and at the same place in every view of that breast.

Layouts (``<root>`` is the folder given to the generator):

- EMBED: ``tables/EMBED_OpenData_metadata.csv``, ``tables/EMBED_OpenData_clinical.csv``,
  ``tables/AWS_Open_Data_Clinical_Legend.csv`` and ``cohort_{1,2}/<empi_anon>/<study>/<SOP>.dcm``.
  ``anon_dicom_path`` holds the provider's absolute path (``/mnt/NAS2/mammo/anon_dicom/cohort_1/...``)
  that a converter re-roots. As in the public release, ``ROI_SSC`` screen-save rows are listed in
  the metadata but have **no file**; ``C-view`` rows do. The legend has the real file's extra
  ``Discription`` column and space-padded ``tissueden`` meanings; the metadata has four extra
  DICOM-derived columns (Manufacturer, ManufacturerModelName, Rows, Columns).
- RSNA: ``train.csv`` + ``train_images/<patient_id>/<image_id>.dcm`` (and a small ``test.csv`` +
  ``test_images/``); about one image in twelve is stored mirrored (its PatientOrientation says so),
  as on some real units, so orientation must be checked against the pixels.
- VinDr: ``breast-level_annotations.csv``, ``finding_annotations.csv`` and
  ``images/<study_id>/<image_id>.dicom``; boxes are in stored-pixel coordinates.

Everything is deterministic given the seed, whatever the number of worker processes: every image
has its own seed derived from the dataset seed and its path. Files are written under a temporary
name and renamed, so a killed run never leaves a half-written file, and running again into the
same folder with the same settings only writes what is missing.

>>> import numpy as np
>>> pixels = render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="L",
...                           view="CC", density=3, findings=[])
>>> pixels.shape, pixels.dtype
((64, 52), dtype('uint16'))
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------------------------
# Names and constants of the datasets
# ----------------------------------------------------------------------------------------------

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
"""SOP class "Digital Mammography X-Ray Image Storage - For Presentation"."""

DEFAULT_IMAGE_SIZE = (256, 208)
FULL_IMAGE_SIZE = (3328, 2560)
"""A Hologic full-field image (rows, columns)."""

EMBED_DICOM_ROOT = "/mnt/NAS2/mammo/anon_dicom"
EMBED_PNG_ROOT = "/mnt/NAS2/mammo/anon_png"

EMBED_METADATA_COLUMNS = [
    "empi_anon", "acc_anon", "anon_dicom_path", "png_path", "png_filename", "study_date_anon",
    "StudyDescription", "SeriesDescription", "FinalImageType", "ImageLateralityFinal",
    "ViewPosition", "spot_mag", "num_roi", "ROI_coords", "SRC_DST", "match_level",
]
EMBED_METADATA_EXTRA_COLUMNS = ["Manufacturer", "ManufacturerModelName", "Rows", "Columns"]
EMBED_CLINICAL_COLUMNS = [
    "empi_anon", "acc_anon", "study_date_anon", "desc", "tissueden", "asses", "numfind", "side",
    "total_l_find", "total_r_find", "massshape", "massmargin", "massdens", "calcfind",
    "calcdistri", "bside", "procdate_anon", "type", *[f"path{i}" for i in range(1, 11)],
    "path_severity", "RACE_DESC", "ETHNIC_GROUP_DESC", "age_at_study",
]
EMBED_LEGEND_COLUMNS = ["Header in export", "Discription", "Code", "Meaning"]

RSNA_TRAIN_COLUMNS = [
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy",
    "invasive", "BIRADS", "implant", "density", "machine_id", "difficult_negative_case",
]
RSNA_TEST_COLUMNS = [
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "implant", "machine_id",
    "prediction_id",
]

VINDR_BREAST_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]
VINDR_FINDING_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]

# The legend rows a converter needs (codes and words as in the public EMBED legend).
_LEGEND = {
    ("massshape", "Mass Shape"): [
        ("G", "Generic"), ("R", "Round"), ("O", "Oval"), ("X", "Irregular"),
        ("Q", "Questioned architectural distortion"), ("A", "Architectural distortion"),
        ("T", "Asymmectric tubular structure/solitary dilated duct"),
        ("N", "Intramammary lymph node"), ("B", "Global asymmetry"), ("F", "Focal asymetry"),
        ("S", "Asymmetry"), ("V", "Developing asymmestry"), ("Y", "Lumph Node"),
    ],
    ("massmargin", "Mass Margin"): [
        ("D", "Circumscribed"), ("U", "Obscured"), ("M", "Microlobulated"), ("I", "Indistinct"),
        ("S", "Spiculated"),
    ],
    ("massdens", "Mass Density"): [
        ("+", "High density"), ("=", "Isodense"), ("-", "Low density"), ("0", "Fat containing"),
    ],
    ("calcfind", "Calcification Finding"): [
        ("A", "Amorphous"), ("9", "Benign"), ("H", "Coarse heterogeneous"),
        ("C", "Course Popcorn-like"), ("D", "Dystrophic"), ("E", "Rim"),
        ("F", "Fine-linear (casting)"), ("B", "Fine linear-branching (casting)"), ("G", "Generic"),
        ("I", "Fine pleomorphic"), ("L", "Large Rodlike"), ("M", "Milk of calcium"),
        ("J", "Oil Cyst"), ("K", "Pleomorphic"), ("P", "Punctate"), ("R", "Round"), ("S", "Skin"),
        ("O", "Lucent-centered"), ("U", "Suture"), ("V", "Vascular"), ("Q", "Coarse"),
    ],
    ("calcdistri", "Calcification Distribution"): [
        ("G", "Grouped"), ("S", "Segmental"), ("R", "Regional"), ("D", "Diffuse/scattered"),
        ("L", "Linear"), ("C", "Clustered"),
    ],
    ("asses", "Assessment (Bi-Rads)"): [
        ("N", "Negative"), ("B", "Benign"), ("P", "Probably benign"), ("A", "Additional evaluation"),
        ("S", "Suspicious"), ("M", "Highly suggestive of malignancy"),
        ("K", "Known biopsy-proven malignancy"), ("X", "**No Assessment**"),
    ],
    # The real file pads these meanings with trailing spaces; converters must strip them.
    ("tissueden", "Tissue Density"): [
        ("1", "The breasts are almost entirely fat".ljust(60)),
        ("2", "Scattered fibroglandular densities".ljust(60)),
        ("3", "Heterogeneously dense".ljust(60)),
        ("4", "Extremely dense".ljust(60)),
        ("5", "Normal male".ljust(60)),
    ],
    ("side", "Side"): [("L", "Left"), ("R", "Right"), ("B", "Both")],
    ("bside", "Biopsy Side"): [("L", "Left"), ("R", "Right"), ("B", "Both")],
    ("type", "Biopsy Type"): [("B", "Needle biopsy pathology"), ("S", "Surgical pathology")],
}

# Fibroglandular fraction of the breast and extra brightness of gland over fat, by density 1-4
# (A-D); 5 is EMBED's "normal male".
DENSE_FRACTION = {1: 0.10, 2: 0.30, 3: 0.55, 4: 0.80, 5: 0.04}
GLAND_CONTRAST = {1: 0.24, 2: 0.28, 3: 0.32, 4: 0.36, 5: 0.24}

_CC_LIKE_VIEWS = {"CC", "XCCL", "XCCM", "FB", "CV"}
_MLO_LIKE_VIEWS = {"MLO", "ML", "LM", "LMO", "AT", "SIO", "ISO"}

# ----------------------------------------------------------------------------------------------
# Findings and breast geometry
# ----------------------------------------------------------------------------------------------

_LESION_CHOICES = {
    "kind": ("mass", "calcifications", "asymmetry", "distortion"),
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
    fraction of the image height. `position` is (depth, across): depth 0 at the chest wall to 1
    at the nipple, across -1 to 1 over the breast's height; None draws one at random. Giving the
    same position to the CC and MLO views of a breast puts the finding at the same place.

    >>> Lesion(kind="mass", shape="irregular", margin="spiculated", density="high", size=0.07).margin
    'spiculated'
    >>> Lesion(kind="tumour")
    Traceback (most recent call last):
    ValueError: Lesion.kind='tumour' is not one of ('mass', 'calcifications', 'asymmetry', 'distortion')
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


# ----------------------------------------------------------------------------------------------
# DICOM files
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomEncoding:
    """How a picture is stored, i.e. what a reader has to undo to get it back.

    `photometric` MONOCHROME1 stores `2**bits_stored - 1 - value`; `rescale` (slope, intercept)
    adds a modality LUT; the window is chosen on the breast and expressed after the modality LUT;
    `voi_lut_function` None leaves the tag out (LINEAR by default); `laterality_tag` names the tag
    carrying the laterality ("ImageLaterality", "Laterality" or None for a file without one).
    """

    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    rescale: tuple[float, float] | None = None
    voi_lut_function: str | None = None
    second_window: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian
    laterality_tag: str | None = "ImageLaterality"


def _voi_window(pixels: np.ndarray, maxval: int) -> tuple[float, float]:
    """Centre and width (stored MONOCHROME2 units) spanning the breast's values."""
    step = max(1, min(pixels.shape) // 256)
    sample = pixels[::step, ::step].astype(np.float64)
    breast = sample[sample > 0.12 * maxval]
    if breast.size < 16:
        breast = sample.ravel()
    low, high = np.percentile(breast, [0.5, 99.5])
    width = max(high - low, 1.0) * 1.1 + 1.0
    return (low + high) / 2.0, width


def _patient_orientation(laterality: str, view: str, flipped: bool) -> list[str]:
    """Row direction (A: towards the nipple, P: towards the chest wall) and column direction."""
    row = "P" if flipped else "A"
    if _view_is_mlo_like(view):
        column = "F"
    else:
        column = "L" if laterality == "R" else "R"
    return [row, column]


def mammogram_dataset(
    pixels: np.ndarray,
    encoding: DicomEncoding = DicomEncoding(),
    *,
    laterality: str,
    view_position: str,
    flipped: bool | None = None,
    tags: Mapping[str, object] | None = None,
) -> Dataset:
    """A "For Presentation" MG dataset holding `pixels` (MONOCHROME2 values, dense = bright).

    `flipped` says whether the chest wall is on the right of the array (default: for right
    breasts); it sets PatientOrientation. `tags` adds or overrides DICOM keywords (PatientID,
    StudyInstanceUID, SOPInstanceUID, ...); missing UIDs are generated.

    >>> import numpy as np
    >>> ds = mammogram_dataset(np.full((32, 24), 900, np.uint16), laterality="L", view_position="CC")
    >>> ds.Modality, ds.ImageLaterality, list(ds.PatientOrientation), ds.BitsStored
    ('MG', 'L', ['A', 'R'], 12)
    """
    if not 8 <= encoding.bits_stored <= 16:
        raise ValueError(f"bits_stored={encoding.bits_stored} must be between 8 and 16 (16 bits are allocated)")
    maxval = 2**encoding.bits_stored - 1
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    if int(pixels.max(initial=0)) > maxval:
        raise ValueError(f"pixel values up to {int(pixels.max())} do not fit in {encoding.bits_stored} stored bits")
    if encoding.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric={encoding.photometric!r} must be MONOCHROME1 or MONOCHROME2")
    tags = dict(tags or {})
    if flipped is None:
        flipped = laterality == "R"

    centre, width = _voi_window(pixels, maxval)
    stored = pixels.astype(np.uint16)
    if encoding.photometric == "MONOCHROME1":
        stored = (maxval - stored).astype(np.uint16)
        centre = maxval - centre
    slope, intercept = encoding.rescale or (1.0, 0.0)
    centre, width = slope * centre + intercept, slope * width

    ds = Dataset()
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = tags.pop("SOPInstanceUID", None) or generate_uid()
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", None) or generate_uid()
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view_position
    if encoding.laterality_tag is not None:
        setattr(ds, encoding.laterality_tag, laterality)
    ds.PatientOrientation = _patient_orientation(laterality, view_position, flipped)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    if encoding.second_window:
        ds.WindowCenter = [f"{centre:.2f}", f"{centre:.2f}"]
        ds.WindowWidth = [f"{width:.2f}", f"{1.6 * width:.2f}"]
        ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
    else:
        ds.WindowCenter = f"{centre:.2f}"
        ds.WindowWidth = f"{width:.2f}"
    if encoding.voi_lut_function is not None:
        ds.VOILUTFunction = encoding.voi_lut_function
    if encoding.rescale is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if encoding.transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    elif encoding.transfer_syntax in (JPEG2000Lossless, RLELossless):
        ds.compress(encoding.transfer_syntax, stored, generate_instance_uid=False)
    else:
        raise ValueError(
            f"transfer syntax {encoding.transfer_syntax} is not written here: use "
            f"{ExplicitVRLittleEndian} (uncompressed), {JPEG2000Lossless} or {RLELossless}"
        )
    return ds


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same folder, then rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))


# ----------------------------------------------------------------------------------------------
# Image jobs (run in worker processes)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageJob:
    """Everything needed to render and write one file; picklable for the process pool."""

    path: str
    seed: int
    height: int
    width: int
    laterality: str
    view: str
    density: int
    lesions: tuple[Lesion, ...]
    encoding: DicomEncoding
    tags: dict = field(default_factory=dict)
    spot_zoom: float | None = None
    synthetic_2d: bool = False
    mirrored: bool = False

    def plan(self) -> _ImagePlan:
        return _plan_image(
            np.random.default_rng(self.seed), height=self.height, width=self.width, view=self.view,
            density=self.density, findings=self.lesions, spot_zoom=self.spot_zoom,
        )

    def boxes(self) -> list[tuple[float, float, float, float] | None]:
        return _output_boxes(self.plan(), flip=_stored_flip(self.laterality, self.mirrored))


def _write_image(job: _ImageJob) -> str:
    path = Path(job.path)
    flip = _stored_flip(job.laterality, job.mirrored)
    pixels = _render_plan(job.plan(), bits_stored=job.encoding.bits_stored, flip=flip, synthetic_2d=job.synthetic_2d)
    dataset = mammogram_dataset(
        pixels, job.encoding, laterality=job.laterality, view_position=job.view, flipped=flip, tags=job.tags,
    )
    _atomic_write(path, lambda temporary: pydicom.dcmwrite(temporary, dataset, enforce_file_format=True))
    return job.path


def _write_images(jobs: Sequence[_ImageJob], *, workers: int, progress: bool, description: str) -> None:
    todo = [job for job in jobs if not Path(job.path).exists()]
    bar = tqdm(total=len(todo), desc=description, unit="img", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            _write_image(job)
            bar.update()
    else:
        # fork keeps the already-imported modules (the package import is slow); each job has
        # its own seed, so the output does not depend on which worker runs it.
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for _ in pool.map(_write_image, todo, chunksize=max(1, len(todo) // (8 * workers))):
                bar.update()
    bar.close()


def _image_seed(dataset_seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{dataset_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


class _Deck:
    """Draws from a shuffled pile refilled when empty: every value shows up every few draws."""

    def __init__(self, rng: np.random.Generator, pile: Sequence):
        self._rng, self._pile, self._left = rng, list(pile), []

    def draw(self):
        if not self._left:
            self._left = [self._pile[i] for i in self._rng.permutation(len(self._pile))]
        return self._left.pop()


class _EncodingDecks:
    """The storage variants of a dataset, each one guaranteed to appear regularly."""

    def __init__(self, rng: np.random.Generator, transfer_syntaxes: Sequence[str]):
        self.transfer_syntax = _Deck(rng, transfer_syntaxes)
        self.bits_stored = _Deck(rng, [12, 12, 12, 12, 14, 14, 16])
        self.photometric = _Deck(rng, ["MONOCHROME2"] * 6 + ["MONOCHROME1"])
        self.rescale = _Deck(rng, [None] * 4 + [(1.0, -512.0), (0.5, 0.0)])
        self.voi_lut_function = _Deck(rng, [None] * 4 + ["LINEAR", "SIGMOID"])
        self.second_window = _Deck(rng, [False] * 4 + [True])
        self.laterality_tag = _Deck(rng, ["ImageLaterality"] * 14 + ["Laterality", None])

    def draw(self, *, photometric: str | None = None) -> DicomEncoding:
        return DicomEncoding(
            bits_stored=self.bits_stored.draw(),
            photometric=photometric or self.photometric.draw(),
            rescale=self.rescale.draw(),
            voi_lut_function=self.voi_lut_function.draw(),
            second_window=self.second_window.draw(),
            transfer_syntax=self.transfer_syntax.draw(),
            laterality_tag=self.laterality_tag.draw(),
        )


# ----------------------------------------------------------------------------------------------
# Shared generator plumbing
# ----------------------------------------------------------------------------------------------


def parse_image_size(image_size) -> tuple[int, int]:
    """(rows, columns) from a pair, "HxW" or "full" (3328x2560).

    >>> parse_image_size("256x208"), parse_image_size("full"), parse_image_size((64, 52))
    ((256, 208), (3328, 2560), (64, 52))
    """
    if isinstance(image_size, str):
        text = image_size.strip().lower()
        if text == "full":
            return FULL_IMAGE_SIZE
        parts = text.split("x")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"image size {image_size!r} must look like '256x208' (rows x columns) or 'full'")
        image_size = (int(parts[0]), int(parts[1]))
    height, width = (int(value) for value in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small: use at least 16x16")
    return height, width


def _prepare_root(out_dir, settings: dict) -> Path:
    """Create the folder and record the settings; refuse to mix two different datasets."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / ".synthetic.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous != settings:
            raise ValueError(
                f"{manifest} says this folder holds a synthetic dataset made with {previous}, "
                f"not {settings}: use an empty folder, or the same settings to resume"
            )
    else:
        _atomic_write(manifest, lambda temporary: temporary.write_text(json.dumps(settings, sort_keys=True)))
    return root


def _remove_stale_partials(root: Path) -> None:
    """Temporary files of an interrupted run that this run did not need to rewrite."""
    for partial in root.rglob(".*.partial"):
        partial.unlink()


def _date(day: dt.date) -> str:
    return day.isoformat()


def _choice(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


# ----------------------------------------------------------------------------------------------
# EMBED
# ----------------------------------------------------------------------------------------------

_RACES = [
    "African American  or Black", "Caucasian or White", "Asian",
    "Native Hawaiian or Other Pacific Islander", "American Indian or Alaskan Native", "Multiple",
    "Unknown, Unavailable or Unreported", None,
]
_RACE_P = [0.40, 0.40, 0.065, 0.01, 0.005, 0.01, 0.07, 0.04]
_ETHNICITIES = ["Non-Hispanic or Latino", "Hispanic or Latino", "Unknown, Unavailable or Unreported", None]
_ETHNICITY_P = [0.86, 0.056, 0.04, 0.044]
_MANUFACTURERS = [
    ("HOLOGIC, Inc.", "Selenia Dimensions"), ("GE MEDICAL SYSTEMS", "Senographe Essential"),
    ("FUJIFILM Corporation", "FDR-3000AWS"),
]
# How the first patients start, so that even a tiny dataset has every kind of exam.
_FIRST_SCENARIOS = ["N", "A", "B", "S", "N", "M", "P", "K"]


@dataclass
class _EmbedPatient:
    empi: int
    cohort: int
    race: str | None
    ethnicity: str | None
    birth: dt.date
    density: int
    male: bool


@dataclass
class _EmbedFinding:
    asses: str
    side: str | None
    massshape: str | None = None
    massmargin: str | None = None
    massdens: str | None = None
    calcfind: str | None = None
    calcdistri: str | None = None
    position: tuple[float, float] = (0.5, 0.0)
    pathology: dict = field(default_factory=dict)


@dataclass
class _EmbedExam:
    patient: _EmbedPatient
    acc: int
    date: dt.date
    screening: bool
    imaged_sides: tuple[str, ...]
    desc: str
    findings: list[_EmbedFinding]
    manufacturer: tuple[str, str] = _MANUFACTURERS[0]


def _embed_descriptors(rng: np.random.Generator, asses: str) -> dict:
    """Coded descriptors of one finding, with the gaps real reports have."""
    if asses == "N":
        return {}
    if asses in ("B", "P"):
        if rng.uniform() < 0.55:
            return {
                "massshape": _choice(rng, ["O", "R", "N", "G"], [0.5, 0.3, 0.1, 0.1]),
                "massmargin": _choice(rng, ["D", "U", None], [0.7, 0.15, 0.15]),
                "massdens": _choice(rng, ["=", "-", "0", None], [0.4, 0.3, 0.1, 0.2]),
            }
        if asses == "P":
            return {"calcfind": "P", "calcdistri": _choice(rng, ["G", "C"])}
        return {"calcfind": _choice(rng, ["9", "C", "E", "V", "R", "Q"]),
                "calcdistri": _choice(rng, ["D", "R", "S", None])}
    if asses == "A":
        kind = rng.uniform()
        if kind < 0.35:
            return {"massshape": _choice(rng, ["S", "F", "B", "V"])}
        if kind < 0.6:
            return {"massshape": _choice(rng, ["X", "O", "G", "A"]),
                    "massmargin": _choice(rng, ["I", "U", "D", None]), "massdens": _choice(rng, ["=", "+", None])}
        if kind < 0.8:
            return {"calcfind": _choice(rng, ["A", "P", "I"]), "calcdistri": _choice(rng, ["G", "C", "R"])}
        return {}  # "additional evaluation" with nothing coded
    # S, M, K: a suspicious mass and/or suspicious calcifications.
    kind = rng.uniform()
    mass = {"massshape": _choice(rng, ["X", "X", "O", "R"] if asses == "S" else ["X"]),
            "massmargin": _choice(rng, ["S", "I", "M"] if asses != "S" else ["I", "M", "S", "U"]),
            "massdens": _choice(rng, ["+", "=", None], [0.5, 0.35, 0.15])}
    calcs = {"calcfind": _choice(rng, ["K", "I", "F", "B", "A"]), "calcdistri": _choice(rng, ["G", "C", "S", "L"])}
    if kind < 0.5:
        return mass
    if kind < 0.75:
        return calcs
    if kind < 0.9:
        return {**mass, **calcs}
    return {}


def _embed_lesions(rng: np.random.Generator, finding: _EmbedFinding) -> list[Lesion]:
    """The visible lesions of one clinical row (its codes translated to the renderer's words)."""
    if finding.asses == "N":
        return []
    malignant_looking = finding.asses in ("S", "M", "K")
    size_range = {"B": (0.022, 0.035), "P": (0.02, 0.032), "A": (0.03, 0.045), "S": (0.045, 0.06),
                  "M": (0.06, 0.085), "K": (0.06, 0.085)}[finding.asses]
    lesions = []
    shape_code = finding.massshape
    if shape_code is not None:
        if shape_code in ("S", "F", "B", "V"):
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=finding.position))
        elif shape_code in ("A", "Q"):
            lesions.append(Lesion(kind="distortion", size=rng.uniform(0.05, 0.08), position=finding.position))
        else:
            lesions.append(Lesion(
                kind="mass",
                shape={"R": "round", "X": "irregular"}.get(shape_code, "oval"),
                margin={"D": "circumscribed", "U": "obscured", "M": "microlobulated", "I": "indistinct",
                        "S": "spiculated"}.get(finding.massmargin,
                                               "indistinct" if malignant_looking else "circumscribed"),
                density={"+": "high", "=": "iso", "-": "low", "0": "fat"}.get(
                    finding.massdens, "fat" if shape_code in ("N", "Y") else ("high" if malignant_looking else "iso")),
                size=rng.uniform(*size_range),
                position=finding.position,
            ))
    if finding.calcfind is not None:
        morphology = {"A": "amorphous", "I": "pleomorphic", "K": "pleomorphic", "F": "fine-linear",
                      "B": "fine-linear", "P": "punctate", "R": "punctate"}.get(finding.calcfind, "coarse")
        distribution = {"G": "grouped", "C": "clustered", "S": "segmental", "L": "linear", "R": "regional",
                        "D": "diffuse"}.get(finding.calcdistri, "grouped")
        lesions.append(Lesion(kind="calcifications", morphology=morphology, distribution=distribution,
                              size=rng.uniform(0.025, 0.04), position=finding.position))
    if not lesions:
        # Nothing coded, yet the radiologist saw something the BI-RADS category stands for.
        if finding.asses == "A":
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=finding.position))
        elif malignant_looking:
            lesions.append(Lesion(kind="mass", shape="irregular", margin="spiculated", density="high",
                                  size=rng.uniform(*size_range), position=finding.position))
        else:
            lesions.append(Lesion(kind="mass", shape="oval", size=rng.uniform(*size_range), position=finding.position))
    return lesions


def _embed_pathology(rng: np.random.Generator, finding: _EmbedFinding, exam_date: dt.date) -> dict:
    biopsied = {"S": 0.85, "M": 0.95, "K": 1.0}.get(finding.asses, 0.0)
    if rng.uniform() >= biopsied:
        return {}
    malignant_p = {"S": 0.3, "M": 0.9, "K": 1.0}[finding.asses]
    if rng.uniform() < malignant_p:
        severity = 0 if rng.uniform() < 0.75 else 1
    else:
        severity = _choice(rng, [2, 4, 5], [0.2, 0.7, 0.1])
    codes = {0: ["ID", "IDC", "IL", "I"], 1: ["DC", "DCH", "DS"], 2: ["ADH", "ALH", "LS"],
             4: ["FA", "FC", "BEN", "PA", "FN"], 5: ["NBT"]}[severity]
    paths = [_choice(rng, codes)]
    if rng.uniform() < 0.3:
        paths.append(_choice(rng, ["FC", "CCC", "AD", "SA"]))
    return {
        "bside": finding.side,
        "procdate_anon": _date(exam_date + dt.timedelta(days=int(rng.integers(5, 26)))),
        "type": _choice(rng, ["B", "S"], [0.8, 0.2]),
        **{f"path{i + 1}": code for i, code in enumerate(paths)},
        "path_severity": float(severity),
    }


def _embed_exams(rng: np.random.Generator, num_exams: int) -> list[_EmbedExam]:
    exams: list[_EmbedExam] = []
    used_empi: set[int] = set()
    used_acc: set[int] = set()
    patient_index = 0

    def new_acc() -> int:
        while True:
            acc = int(rng.integers(10**15, 10**16))
            if acc not in used_acc:
                used_acc.add(acc)
                return acc

    while len(exams) < num_exams:
        empi = int(rng.integers(10**7, 10**8))
        if empi in used_empi:
            continue
        used_empi.add(empi)
        male = patient_index >= len(_FIRST_SCENARIOS) and rng.uniform() < 0.01
        patient = _EmbedPatient(
            empi=empi,
            cohort=2 if patient_index == 1 or (patient_index > 1 and rng.uniform() < 0.25) else 1,
            race=_choice(rng, _RACES, _RACE_P),
            ethnicity=_choice(rng, _ETHNICITIES, _ETHNICITY_P),
            birth=dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 40))),
            density=5 if male else int(_choice(rng, [1, 2, 3, 4], [0.12, 0.40, 0.36, 0.12])),
            male=male,
        )
        first_day = dt.date(2013, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 4)))
        first_day = max(first_day, dt.date(patient.birth.year + 40, 1, 1))
        visits = int(_choice(rng, [1, 2, 3], [0.55, 0.3, 0.15]))
        for visit in range(visits):
            day = first_day + dt.timedelta(days=int(365 * visit + rng.integers(-20, 40)))
            if visit == 0 and patient_index < len(_FIRST_SCENARIOS):
                scenario = _FIRST_SCENARIOS[patient_index]
            elif male:
                scenario = _choice(rng, ["N", "B"])
            else:
                scenario = _choice(rng, ["N", "B", "A", "P", "S", "M", "K"], [0.5, 0.2, 0.14, 0.04, 0.07, 0.03, 0.02])
            manufacturer = _MANUFACTURERS[int(rng.choice(3, p=[0.92, 0.06, 0.02]))]
            if scenario in ("N", "B", "A", "P"):
                exam = _screening_exam(rng, patient, new_acc(), day, scenario, manufacturer)
            else:
                side = _choice(rng, ["L", "R"])
                exam = _diagnostic_exam(rng, patient, new_acc(), day, scenario, side, _random_position(rng),
                                        manufacturer)
            exams.append(exam)
            if len(exams) >= num_exams:
                break
            callback = [f for f in exam.findings if f.asses == "A" and f.side in ("L", "R")]
            if callback and (patient_index == 1 or rng.uniform() < 0.7):
                # BI-RADS 0 at screening: a diagnostic work-up of that breast weeks later.
                followup_day = day + dt.timedelta(days=int(rng.integers(10, 40)))
                outcome = "S" if patient_index == 1 else _choice(
                    rng, ["N", "B", "P", "S", "M"], [0.25, 0.25, 0.1, 0.25, 0.15])
                exams.append(_diagnostic_exam(rng, patient, new_acc(), followup_day, outcome, callback[0].side,
                                              callback[0].position, manufacturer))
                if len(exams) >= num_exams:
                    break
        patient_index += 1
    return exams


def _screening_exam(rng, patient, acc, day, scenario, manufacturer) -> _EmbedExam:
    tomo = rng.uniform() < 0.35
    if tomo:
        desc = _choice(rng, ["MG Screen Bilat w/Tomo/CAD Stnd Protocol", "MG Screening Bilat w/Tomosynthesis"])
    else:
        desc = _choice(rng, ["MG Screening Bilateral", "MG Screening Bilateral w/CAD"])
    findings: list[_EmbedFinding] = []
    if scenario == "N":
        findings.append(_EmbedFinding("N", None))
    elif scenario in ("B", "P"):
        side = _choice(rng, ["L", "R", "B"], [0.4, 0.4, 0.2] if scenario == "B" else [0.5, 0.5, 0.0])
        findings.append(_EmbedFinding(scenario, side, position=_random_position(rng),
                                      **_embed_descriptors(rng, scenario)))
        if rng.uniform() < 0.2:
            findings.append(_EmbedFinding("B", _choice(rng, ["L", "R"]), position=_random_position(rng),
                                          **_embed_descriptors(rng, "B")))
    else:  # "A": a BI-RADS 0 row, usually followed by a row for the other breast
        side = _choice(rng, ["L", "R"])
        findings.append(_EmbedFinding("A", side, position=_random_position(rng), **_embed_descriptors(rng, "A")))
        if rng.uniform() < 0.25:
            findings.append(_EmbedFinding("A", side, position=_random_position(rng), **_embed_descriptors(rng, "A")))
        other = "R" if side == "L" else "L"
        if rng.uniform() < 0.8:
            other_asses = _choice(rng, ["N", "B"], [0.7, 0.3])
            findings.append(_EmbedFinding(other_asses, other, position=_random_position(rng),
                                          **_embed_descriptors(rng, other_asses)))
    return _EmbedExam(patient, acc, day, True, ("R", "L"), desc, findings, manufacturer)


def _diagnostic_exam(rng, patient, acc, day, outcome, side, position, manufacturer) -> _EmbedExam:
    bilateral = rng.uniform() < 0.3
    tomo = rng.uniform() < 0.35
    word = {"L": "Left", "R": "Right"}[side]
    if bilateral:
        desc = "MG Diagnostic Bilateral w/Tomo/CAD" if tomo else "MG Diagnostic Mammo Bilateral"
    else:
        desc = f"MG Diagnostic  {word} w/Tomosynthesis" if tomo else f"MG Diagnostic {word} w/CAD"
    findings = [_EmbedFinding(outcome, side, position=position, **_embed_descriptors(rng, outcome))]
    if outcome in ("S", "M") and rng.uniform() < 0.3:
        findings.append(_EmbedFinding("B", side, position=_random_position(rng),
                                      **_embed_descriptors(rng, "B")))
    for finding in findings:
        finding.pathology = _embed_pathology(rng, finding, day) if finding.asses in ("S", "M", "K") else {}
    return _EmbedExam(patient, acc, day, False, ("R", "L") if bilateral else (side,), desc, findings, manufacturer)


def _format_rois(boxes: Sequence[tuple[float, float, float, float]], height: int, width: int) -> str:
    """EMBED's ROI string: a tuple of (ymin, xmin, ymax, xmax) integer tuples."""
    items = []
    for y0, x0, y1, x1 in boxes:
        items.append((int(math.floor(y0)), int(math.floor(x0)), min(int(math.ceil(y1)), height - 1),
                      min(int(math.ceil(x1)), width - 1)))
    return repr(tuple(items))


def _embed_clinical_rows(rng: np.random.Generator, exam: _EmbedExam) -> list[dict]:
    """One row per finding; the exam-level fields are repeated on every row, as in EMBED."""
    patient = exam.patient
    # The report may be signed a day or two after the images were taken.
    report_day = exam.date + dt.timedelta(days=int(_choice(rng, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2])))
    age = (exam.date - patient.birth).days / 365.25
    common = {
        "empi_anon": patient.empi, "acc_anon": exam.acc, "study_date_anon": _date(report_day), "desc": exam.desc,
        "tissueden": float(patient.density) if rng.uniform() > 0.04 else None,
        "total_l_find": float(sum(f.side in ("L", "B") for f in exam.findings if f.asses != "N")),
        "total_r_find": float(sum(f.side in ("R", "B") for f in exam.findings if f.asses != "N")),
        "RACE_DESC": patient.race, "ETHNIC_GROUP_DESC": patient.ethnicity,
        "age_at_study": round(age, 6) if rng.uniform() > 0.02 else None,
    }
    return [
        {**common, "asses": finding.asses, "numfind": number, "side": finding.side,
         "massshape": finding.massshape, "massmargin": finding.massmargin, "massdens": finding.massdens,
         "calcfind": finding.calcfind, "calcdistri": finding.calcdistri, **finding.pathology}
        for number, finding in enumerate(exam.findings, start=1)
    ]


def _embed_lesions_by_side(rng: np.random.Generator, exam: _EmbedExam) -> dict[str, list[tuple[Lesion, bool]]]:
    """Per breast, the lesions to draw and whether the radiologist marked each one (an ROI)."""
    lesions_by_side: dict[str, list[tuple[Lesion, bool]]] = {"L": [], "R": []}
    for finding in exam.findings:
        sides = ("L", "R") if finding.side == "B" else ((finding.side,) if finding.side else ())
        marked = finding.asses in ("A", "P", "S", "M", "K")
        for lesion in _embed_lesions(rng, finding):
            for side in sides:
                lesions_by_side[side].append((lesion, marked and lesion.distribution != "diffuse"))
    return lesions_by_side


def _embed_exam_files(rng, exam: _EmbedExam, *, root: Path, seed: int, height: int, width: int,
                      decks: _EncodingDecks) -> tuple[list[_ImageJob], list[dict]]:
    """The image files of one exam and their metadata rows (plus a screen-save row, sometimes)."""
    patient = exam.patient
    lesions_by_side = _embed_lesions_by_side(rng, exam)
    has_roi = rng.uniform() < 0.85
    study_uid = _uid(seed, "embed-study", exam.acc)
    study_dir = f"cohort_{patient.cohort}/{patient.empi}/{study_uid}"
    # The metadata's description occasionally differs from the report's, as data entry does.
    description = exam.desc if rng.uniform() > 0.05 else exam.desc.replace("Bilateral", "Bilat")
    age = int((exam.date - patient.birth).days / 365.25)
    jobs, rows = [], []
    for index, image in enumerate(_embed_exam_images(rng, exam, lesions_by_side)):
        sop = _uid(seed, "embed-sop", exam.acc, index)
        relative = f"{study_dir}/{sop}.dcm"
        lesions = lesions_by_side[image["laterality"]]
        job = _ImageJob(
            # A C-view shares its 2D image's key, hence the same breast and findings.
            path=str(root / relative), seed=_image_seed(seed, f"embed/{exam.acc}/{image['key']}"),
            height=height, width=width, laterality=image["laterality"], view=image["view"],
            density=patient.density, lesions=tuple(lesion for lesion, _ in lesions), encoding=decks.draw(),
            spot_zoom=image["spot_zoom"], synthetic_2d=image["type"] == "C-view",
            tags={
                "SOPInstanceUID": sop, "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": _uid(seed, "embed-series", exam.acc, image["series"]),
                "PatientID": str(patient.empi), "AccessionNumber": str(exam.acc),
                "StudyDate": exam.date.strftime("%Y%m%d"), "StudyDescription": description,
                "SeriesDescription": image["series"], "Manufacturer": exam.manufacturer[0],
                "ManufacturerModelName": exam.manufacturer[1], "PatientSex": "M" if patient.male else "F",
                "PatientAge": f"{age:03d}Y", "InstanceNumber": index + 1,
                "PixelSpacing": [f"{0.07 * FULL_IMAGE_SIZE[0] / height / (image['spot_zoom'] or 1):.4f}"] * 2,
                "ImageType": ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]
                if image["type"] == "C-view" else ["DERIVED", "PRIMARY"],
            },
        )
        jobs.append(job)
        boxes = [box for box, (_, marked) in zip(job.boxes(), lesions) if marked and box is not None]
        boxes = boxes if has_roi else []
        png_name = hashlib.md5(f"{seed}/{sop}".encode()).hexdigest() + ".png"
        row = {
            "empi_anon": patient.empi, "acc_anon": exam.acc, "anon_dicom_path": f"{EMBED_DICOM_ROOT}/{relative}",
            "png_path": f"{EMBED_PNG_ROOT}/cohort_{patient.cohort}/{patient.empi}/{png_name}",
            "png_filename": png_name, "study_date_anon": _date(exam.date), "StudyDescription": description,
            "SeriesDescription": image["series"], "FinalImageType": image["type"],
            "ImageLateralityFinal": image["laterality"], "ViewPosition": image["view"],
            "spot_mag": float(image["spot_zoom"] is not None), "num_roi": len(boxes),
            "ROI_coords": _format_rois(boxes, height, width), "SRC_DST": None, "match_level": None,
            "Manufacturer": exam.manufacturer[0], "ManufacturerModelName": exam.manufacturer[1],
            "Rows": height, "Columns": width,
        }
        if boxes:
            # The ROI was drawn on a screen save (the source), then matched to 2D (1) and C-view (2).
            screensave_sop = _uid(seed, "embed-ssc", exam.acc, image["laterality"])
            row["SRC_DST"] = repr((f"{EMBED_DICOM_ROOT}/{study_dir}/{screensave_sop}.dcm",) * len(boxes))
            row["match_level"] = repr((2 if image["type"] == "C-view" else 1,) * len(boxes))
        rows.append(row)
    return jobs, rows


def _screensave_row(rng: np.random.Generator, source: dict) -> dict:
    """The radiologist's screen save behind a 2D image's ROI: listed, but (as in the public data) no file."""
    path = ast.literal_eval(source["SRC_DST"])[0]
    offset = int(rng.integers(20, 60))  # the ROI sits elsewhere on the screen than on the image
    y0, x0, y1, x1 = ast.literal_eval(source["ROI_coords"])[0]
    png_name = hashlib.md5(path.encode()).hexdigest() + ".png"
    return {
        **source, "anon_dicom_path": path, "png_filename": png_name,
        "png_path": str(Path(source["png_path"]).with_name(png_name)),
        "SeriesDescription": "Screen Save", "FinalImageType": "ROI_SSC", "ViewPosition": None, "spot_mag": None,
        "num_roi": 1, "ROI_coords": repr(((y0 + offset, x0 + offset, y1 + offset, x1 + offset),)),
        "SRC_DST": repr((source["anon_dicom_path"],)), "match_level": None,
    }


def generate_embed(
    out_dir,
    *,
    num_exams: int = 40,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write an EMBED look-alike (tables + DICOM files) under `out_dir` and return its root.

    >>> import tempfile
    >>> root = generate_embed(tempfile.mkdtemp(), num_exams=2, image_size=(48, 40), progress=False)
    >>> sorted(p.name for p in (root / "tables").iterdir())
    ['AWS_Open_Data_Clinical_Legend.csv', 'EMBED_OpenData_clinical.csv', 'EMBED_OpenData_metadata.csv']
    """
    if num_exams < 1:
        raise ValueError(f"num_exams={num_exams} must be at least 1")
    height, width = parse_image_size(image_size)
    settings = {"format": "embed", "num_exams": num_exams, "image_size": [height, width], "seed": seed}
    root = _prepare_root(out_dir, settings)
    rng = np.random.default_rng([seed, 1])
    exams = _embed_exams(rng, num_exams)
    decks = _EncodingDecks(rng, [ExplicitVRLittleEndian] * 4 + [JPEG2000Lossless] * 3 + [RLELossless])

    metadata_rows: list[dict] = []
    clinical_rows: list[dict] = []
    jobs: list[_ImageJob] = []
    for exam in exams:
        clinical_rows += _embed_clinical_rows(rng, exam)
        exam_jobs, exam_rows = _embed_exam_files(rng, exam, root=root, seed=seed, height=height, width=width,
                                                 decks=decks)
        jobs += exam_jobs
        metadata_rows += exam_rows
        marked_2d = [row for row in exam_rows if row["num_roi"] and row["FinalImageType"] == "2D"]
        listed = any(row["FinalImageType"] == "ROI_SSC" for row in metadata_rows)
        if marked_2d and (not listed or rng.uniform() < 0.5):
            metadata_rows.append(_screensave_row(rng, marked_2d[0]))

    _write_images(jobs, workers=workers, progress=progress, description="EMBED images")
    tables = root / "tables"
    legend = pd.DataFrame(
        [(header, description, code, meaning)
         for (header, description), rows in _LEGEND.items() for code, meaning in rows],
        columns=EMBED_LEGEND_COLUMNS,
    )
    _write_csv(pd.DataFrame(metadata_rows, columns=EMBED_METADATA_COLUMNS + EMBED_METADATA_EXTRA_COLUMNS),
               tables / "EMBED_OpenData_metadata.csv")
    _write_csv(pd.DataFrame(clinical_rows, columns=EMBED_CLINICAL_COLUMNS), tables / "EMBED_OpenData_clinical.csv")
    _write_csv(legend, tables / "AWS_Open_Data_Clinical_Legend.csv")
    _remove_stale_partials(root)
    return root


def _embed_exam_images(rng, exam: _EmbedExam, lesions_by_side) -> list[dict]:
    """The images of one exam: standard views, some missing or extra, spot views, C-views."""
    tomo = "Tomo" in exam.desc
    images = []

    def add(laterality, view, series, spot_zoom=None, final_type="2D", key=None):
        images.append({"laterality": laterality, "view": view, "series": series, "spot_zoom": spot_zoom,
                       "type": final_type, "key": key or f"{laterality}-{view}-{len(images)}"})

    for side in exam.imaged_sides:
        views = ["CC", "MLO"] if exam.screening or rng.uniform() < 0.7 else ["CC", "ML"]
        if exam.screening and rng.uniform() < 0.08:
            views.remove(_choice(rng, views))  # a view is missing
        if rng.uniform() < 0.1:
            views.append(_choice(rng, ["CC", "MLO", "XCCL"]))  # an extra view (large breast, axilla)
        for view in views:
            add(side, view, f"{side} {view}")
            if tomo and view != "XCCL":
                add(side, view, f"{side} {view} C-View", final_type="C-view", key=images[-1]["key"])
        if not exam.screening and lesions_by_side[side]:
            for _ in range(int(rng.integers(1, 3))):
                view = _choice(rng, ["CC", "ML", "XCCL"])
                zoom = _choice(rng, [1.5, 1.8])
                add(side, view, f"{side} {view} {'SPOT' if zoom == 1.5 else 'MAG'}", spot_zoom=zoom)
    return images


# ----------------------------------------------------------------------------------------------
# RSNA screening mammography
# ----------------------------------------------------------------------------------------------

_RSNA_MACHINES = {1: [49, 48, 29, 21, 93, 216, 210], 2: [170, 190, 197]}


def _rsna_malignant_lesions(rng: np.random.Generator, position) -> list[Lesion]:
    kind = rng.uniform()
    mass = Lesion(kind="mass", shape="irregular", margin=_choice(rng, ["spiculated", "indistinct"]),
                  density="high", size=rng.uniform(0.05, 0.08), position=position)
    calcs = Lesion(kind="calcifications", morphology=_choice(rng, ["pleomorphic", "fine-linear"]),
                   distribution=_choice(rng, ["clustered", "segmental"]), size=rng.uniform(0.025, 0.04),
                   position=position)
    if kind < 0.55:
        return [mass]
    if kind < 0.8:
        return [calcs]
    return [mass, calcs]


def generate_rsna(
    out_dir,
    *,
    num_patients: int = 20,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write an RSNA screening look-alike (train.csv, test.csv, *_images/) and return its root.

    Cancer is a breast-level label: every view of a cancer breast shows the lesion.

    >>> import tempfile
    >>> root = generate_rsna(tempfile.mkdtemp(), num_patients=1, image_size=(48, 40), progress=False)
    >>> (root / "train.csv").exists(), (root / "train_images").is_dir()
    (True, True)
    """
    if num_patients < 1:
        raise ValueError(f"num_patients={num_patients} must be at least 1")
    height, width = parse_image_size(image_size)
    settings = {"format": "rsna", "num_patients": num_patients, "image_size": [height, width], "seed": seed}
    root = _prepare_root(out_dir, settings)
    rng = np.random.default_rng([seed, 2])
    decks = _EncodingDecks(rng, [JPEG2000Lossless] * 4 + [ExplicitVRLittleEndian])
    mirrored_deck = _Deck(rng, [False] * 11 + [True])
    used_patients: set[int] = set()
    used_images: set[int] = set()
    train_rows, test_rows, jobs = [], [], []
    num_test = max(1, num_patients // 10)

    for index in range(num_patients + num_test):
        split = "train" if index < num_patients else "test"
        patient_id = int(rng.integers(10000, 65535))
        while patient_id in used_patients:
            patient_id = int(rng.integers(10000, 65535))
        used_patients.add(patient_id)
        site = int(_choice(rng, [1, 2], [0.7, 0.3]))
        machine = int(_choice(rng, _RSNA_MACHINES[site]))
        density_value = int(_choice(rng, [1, 2, 3, 4], [0.1, 0.42, 0.38, 0.1]))
        density_letter = "ABCD"[density_value - 1] if site == 1 and rng.uniform() < 0.7 else None
        age = float(rng.integers(38, 89)) if rng.uniform() > 0.05 else None
        implant = int(rng.uniform() < 0.03)
        # Breast-level cancer; the first two patients cover both labels.
        cancer_side = {0: "L", 1: None}.get(index, _choice(rng, ["L", "R"]) if rng.uniform() < 0.25 else None)
        # A scanner's photometric convention is a machine property.
        photometric = "MONOCHROME1" if machine in (29, 190) else None
        for laterality in ("L", "R"):
            cancer = int(cancer_side == laterality)
            position = _random_position(rng)
            if cancer:
                lesions = _rsna_malignant_lesions(rng, position)
                birads = 0.0
            else:
                birads = float(_choice(rng, [1.0, 2.0, 0.0], [0.7, 0.2, 0.1]))
                lesions = [Lesion(kind="mass", shape="oval", density="low", size=rng.uniform(0.02, 0.03),
                                  position=position)] if birads == 2.0 else []
            if site == 2 or rng.uniform() < 0.2:
                birads = None
            biopsy = int(cancer or rng.uniform() < 0.05)
            invasive = int(cancer and rng.uniform() < 0.85)
            views = ["CC", "MLO"] + ([_choice(rng, ["MLO", "CC", "AT", "ML", "LM"])] if rng.uniform() < 0.1 else [])
            for view in views:
                image_id = int(rng.integers(10**6, 2**31 - 1))
                while image_id in used_images:
                    image_id = int(rng.integers(10**6, 2**31 - 1))
                used_images.add(image_id)
                relative = f"{split}_images/{patient_id}/{image_id}.dcm"
                jobs.append(_ImageJob(
                    path=str(root / relative), seed=_image_seed(seed, f"rsna/{relative}"), height=height,
                    width=width, laterality=laterality, view=view, density=density_value,
                    lesions=tuple(lesions), encoding=decks.draw(photometric=photometric),
                    mirrored=mirrored_deck.draw(),
                    tags={"PatientID": str(patient_id), "InstanceNumber": 1,
                          "SOPInstanceUID": f"1.2.840.10009.1.2.3.{patient_id}.1.{image_id}",
                          "StudyInstanceUID": _uid(seed, "rsna-study", patient_id),
                          "SeriesInstanceUID": _uid(seed, "rsna-series", patient_id, image_id)},
                ))
                common = {"site_id": site, "patient_id": patient_id, "image_id": image_id,
                          "laterality": laterality, "view": view, "age": age, "implant": implant,
                          "machine_id": machine}
                if split == "train":
                    train_rows.append({
                        **common, "cancer": cancer, "biopsy": biopsy, "invasive": invasive, "BIRADS": birads,
                        "density": density_letter,
                        "difficult_negative_case": bool(biopsy and not cancer),
                    })
                else:
                    test_rows.append({**common, "prediction_id": f"{patient_id}_{laterality}"})

    _write_images(jobs, workers=workers, progress=progress, description="RSNA images")
    _write_csv(pd.DataFrame(train_rows, columns=RSNA_TRAIN_COLUMNS), root / "train.csv")
    _write_csv(pd.DataFrame(test_rows, columns=RSNA_TEST_COLUMNS), root / "test.csv")
    _remove_stale_partials(root)
    return root


# ----------------------------------------------------------------------------------------------
# VinDr-Mammo
# ----------------------------------------------------------------------------------------------

_VINDR_CATEGORIES = {
    3: [["Mass"], ["Focal Asymmetry"], ["Suspicious Calcification"]],
    4: [["Mass"], ["Suspicious Calcification"], ["Architectural Distortion"], ["Mass", "Suspicious Calcification"]],
    5: [["Mass"], ["Mass", "Suspicious Calcification"], ["Suspicious Calcification"]],
}


def _vindr_lesions(rng: np.random.Generator, categories: list[str], birads: int, position) -> list[Lesion]:
    lesions = []
    for category in categories:
        if category == "Mass":
            shape, margin = {3: ("oval", "circumscribed"), 4: ("irregular", "indistinct"),
                             5: ("irregular", "spiculated")}[birads]
            size = {3: (0.025, 0.035), 4: (0.045, 0.06), 5: (0.06, 0.085)}[birads]
            lesions.append(Lesion(kind="mass", shape=shape, margin=margin, density="high" if birads >= 4 else "iso",
                                  size=rng.uniform(*size), position=position))
        elif category == "Suspicious Calcification":
            morphology = {3: "punctate", 4: "amorphous", 5: "pleomorphic"}[birads]
            lesions.append(Lesion(kind="calcifications", morphology=morphology,
                                  distribution="grouped" if birads == 3 else "clustered",
                                  size=rng.uniform(0.025, 0.04), position=position))
        elif category in ("Focal Asymmetry", "Asymmetry"):
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=position))
        else:
            lesions.append(Lesion(kind="distortion", size=rng.uniform(0.05, 0.08), position=position))
    return lesions


def generate_vindr(
    out_dir,
    *,
    num_studies: int = 20,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a VinDr-Mammo look-alike (two annotation CSVs + images/*.dicom) and return its root.

    >>> import tempfile
    >>> root = generate_vindr(tempfile.mkdtemp(), num_studies=1, image_size=(48, 40), progress=False)
    >>> len(list((root / "images").glob("*/*.dicom")))
    4
    """
    if num_studies < 1:
        raise ValueError(f"num_studies={num_studies} must be at least 1")
    height, width = parse_image_size(image_size)
    settings = {"format": "vindr", "num_studies": num_studies, "image_size": [height, width], "seed": seed}
    root = _prepare_root(out_dir, settings)
    rng = np.random.default_rng([seed, 3])
    decks = _EncodingDecks(rng, [ExplicitVRLittleEndian] * 3 + [JPEG2000Lossless])
    breast_rows, finding_rows, jobs = [], [], []

    def hex_id() -> str:
        return rng.bytes(16).hex()

    for index in range(num_studies):
        study_id = hex_id()
        density = int(_choice(rng, [1, 2, 3, 4], [0.1, 0.25, 0.45, 0.2]))
        split = "test" if rng.uniform() < 0.2 else "training"
        manufacturer = _choice(rng, [("SIEMENS", "Mammomat Inspiration"), ("Planmed", "Planmed Nuance"),
                                     ("IMS s.r.l.", "GIOTTO IMAGE 3DL")])
        for laterality in ("R", "L"):
            series_id = hex_id()
            if index == 0:
                birads = 4 if laterality == "L" else 1  # the first study covers a finding and a normal breast
            else:
                birads = int(_choice(rng, [1, 2, 3, 4, 5], [0.45, 0.25, 0.1, 0.12, 0.08]))
            position = _random_position(rng)
            categories: list[str] = []
            if birads >= 3:
                options = _VINDR_CATEGORIES[birads]
                categories = list(options[-1 if index == 0 else int(rng.integers(len(options)))])
                lesions = _vindr_lesions(rng, categories, birads, position)
            elif birads == 2:
                # Benign findings are visible but not boxed in VinDr.
                lesions = [Lesion(kind="calcifications", morphology="coarse", distribution="regional",
                                  size=0.03, position=position)]
            else:
                lesions = []
            for view in ("CC", "MLO"):
                image_id = hex_id()
                relative = f"images/{study_id}/{image_id}.dicom"
                job = _ImageJob(
                    path=str(root / relative), seed=_image_seed(seed, f"vindr/{relative}"), height=height,
                    width=width, laterality=laterality, view=view, density=density, lesions=tuple(lesions),
                    encoding=decks.draw(),
                    tags={"PatientID": study_id[:12], "Manufacturer": manufacturer[0],
                          "ManufacturerModelName": manufacturer[1],
                          "SOPInstanceUID": _uid(seed, "vindr-sop", image_id),
                          "StudyInstanceUID": _uid(seed, "vindr-study", study_id),
                          "SeriesInstanceUID": _uid(seed, "vindr-series", series_id)},
                )
                jobs.append(job)
                common = {"study_id": study_id, "series_id": series_id, "image_id": image_id,
                          "laterality": laterality, "view_position": view, "height": height, "width": width,
                          "breast_birads": f"BI-RADS {birads}", "breast_density": f"DENSITY {'ABCD'[density - 1]}",
                          "split": split}
                breast_rows.append(common)
                boxes = [box for box in job.boxes() if box is not None] if categories else []
                if boxes:
                    # One annotated finding: the union of its lesions' boxes.
                    y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
                    y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
                    finding_rows.append({**common, "finding_categories": repr(categories),
                                         "finding_birads": f"BI-RADS {birads}", "xmin": round(x0, 2),
                                         "ymin": round(y0, 2), "xmax": round(x1, 2), "ymax": round(y1, 2)})
                else:
                    finding_rows.append({**common, "finding_categories": repr(["No Finding"]), "finding_birads": None,
                                         "xmin": None, "ymin": None, "xmax": None, "ymax": None})

    _write_images(jobs, workers=workers, progress=progress, description="VinDr images")
    _write_csv(pd.DataFrame(breast_rows, columns=VINDR_BREAST_COLUMNS), root / "breast-level_annotations.csv")
    _write_csv(pd.DataFrame(finding_rows, columns=VINDR_FINDING_COLUMNS), root / "finding_annotations.csv")
    _remove_stale_partials(root)
    return root


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python data_scripts/synthetic.py --out X [--format embed|rsna|vindr] [--num-exams N] ...`"""
    parser = argparse.ArgumentParser(
        description="Write a synthetic EMBED / RSNA / VinDr look-alike with real DICOM files.")
    parser.add_argument("--out", required=True, help="folder to write (created; re-running resumes)")
    parser.add_argument("--format", choices=("embed", "rsna", "vindr"), default="embed")
    parser.add_argument("--num-exams", type=int, default=None,
                        help="EMBED exams (default 40), RSNA patients (20) or VinDr studies (20)")
    parser.add_argument("--image-size", default="256x208", help="'HxW' (rows x columns) or 'full' (3328x2560)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes writing images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        image_size = parse_image_size(args.image_size)
    except ValueError as error:
        parser.error(str(error))
    options = {"image_size": image_size, "seed": args.seed, "workers": args.workers, "progress": not args.no_progress}
    count = {"embed": 40, "rsna": 20, "vindr": 20}[args.format] if args.num_exams is None else args.num_exams
    if args.format == "embed":
        root = generate_embed(args.out, num_exams=count, **options)
    elif args.format == "rsna":
        root = generate_rsna(args.out, num_patients=count, **options)
    else:
        root = generate_vindr(args.out, num_studies=count, **options)
    print(root)
    return 0
