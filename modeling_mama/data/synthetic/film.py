"""Scanned-film mammograms: the synthetic breast as a film scanner digitises it.

A digitised film (CBIS-DDSM) is not a detector image: around the breast it carries what the
scanner saw of the film and beyond it, and that is what breaks a plain Otsu crop (the issue saw
processed images that were only 27-32% breast). `film_mammogram` draws

- the breast (`rendering`), on a film background brighter than a detector's (base + fog, grain);
- bright bands on one to three sides: the unexposed film edge under the cassette frame, each side
  at its own width and level, with a ragged inner edge; sometimes a dark band: the scanner bed
  beyond the film;
- a burned-in label such as "LMLO" in a corner away from the breast (bright strokes);
- scratches (long thin bright lines, across the breast too) and dust (isolated bright and dark pixels).

`film_dataset` stores one as scanned-film DICOM files are stored (CBIS-DDSM): Secondary Capture
with Modality MG, 16 bits, RLE lossless, no window, the side in `(0020,0060) Laterality` and the
view only in `PatientOrientation` (or nowhere), no pixel spacing.

`FilmImage` returns the picture (16-bit by default) with its truth: the breast mask, the label box,
the band widths and the lesion boxes, all in the stored image's pixels (chest wall on the left for
a left breast, on the right for a right one, as films are hung).

>>> import numpy as np
>>> film = film_mammogram(np.random.default_rng(0), height=160, width=128, laterality="L", view="MLO", density=2)
>>> film.pixels.dtype, film.pixels.shape, film.label
(dtype('uint16'), (160, 128), 'LMLO')
>>> bool(0.2 < film.breast.mean() < 0.7)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from .dicom_writer import image_dataset
from .rendering import Lesion, _output_boxes, _plan_image, _render_plan, _stored_flip
from .tables import SECONDARY_CAPTURE

SIDES = ("left", "right", "top", "bottom")

# A 5x7 bitmap font for the characters of view labels ("LMLO", "R CC", "LEFT XCCL", ...).
_GLYPHS = {
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "C": ["01111", "10000", "10000", "10000", "10000", "10000", "01111"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "F": ["11111", "10000", "10000", "11110", "10000", "10000", "10000"],
    "G": ["01111", "10000", "10000", "10111", "10001", "10001", "01111"],
    "H": ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
    "I": ["11111", "00100", "00100", "00100", "00100", "00100", "11111"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "M": ["10001", "11011", "10101", "10101", "10001", "10001", "10001"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "T": ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
    "X": ["10001", "01010", "00100", "00100", "00100", "01010", "10001"],
    " ": ["00000"] * 7,
}


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """A boolean bitmap of `text` (5x7 glyphs, one blank column between them), each pixel `scale` x `scale`.

    >>> text_bitmap("LO").astype(int)[-1].tolist()
    [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
    """
    unknown = sorted({character for character in text.upper() if character not in _GLYPHS})
    if unknown:
        raise ValueError(f"text_bitmap has no glyph for {unknown}; it draws {''.join(sorted(_GLYPHS)).strip()}")
    columns = []
    for index, character in enumerate(text.upper()):
        if index:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(np.array([[bit == "1" for bit in row] for row in _GLYPHS[character]], dtype=bool))
    bitmap = np.concatenate(columns, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


@dataclass(frozen=True)
class FilmLook:
    """What the scan adds around the breast.

    `bright_bands` maps a side ("left", "right", "top", "bottom") to the band's width as a fraction
    of the image's width (left / right) or height (top / bottom); `dark_band` is (side, width) or
    None. `label` is the burned-in text (None: no label), `scratches` the number of scratches and
    `dust` the share of pixels hit by dust. `grain` is the film grain's standard deviation.
    """

    bright_bands: dict = field(default_factory=lambda: {"left": 0.04, "top": 0.03})
    dark_band: tuple[str, float] | None = None
    label: str | None = "LMLO"
    scratches: int = 2
    dust: float = 0.001
    grain: float = 0.012

    def __post_init__(self):
        for side, width in self.bright_bands.items():
            if side not in SIDES or not 0.0 < width < 0.2:
                raise ValueError(f"bright band {side}={width}: the side must be one of {SIDES}, the width in (0, 0.2)")
        if self.dark_band is not None and (self.dark_band[0] not in SIDES or not 0.0 < self.dark_band[1] < 0.2):
            raise ValueError(f"dark_band={self.dark_band}: (side in {SIDES}, width in (0, 0.2))")


def random_film_look(rng: np.random.Generator, *, label: str | None) -> FilmLook:
    """A film look as scans vary: bright edges on 1-3 sides at 1.5-9% each, a dark band one time in four."""
    sides = list(rng.permutation(SIDES)[: int(rng.integers(1, 4))])
    bands = {str(side): float(rng.uniform(0.015, 0.09)) for side in sides}
    dark = None
    free = [side for side in SIDES if side not in bands]
    if free and rng.uniform() < 0.25:
        dark = (str(free[int(rng.integers(len(free)))]), float(rng.uniform(0.01, 0.04)))
    return FilmLook(bright_bands=bands, dark_band=dark, label=label, scratches=int(rng.integers(0, 4)),
                    dust=float(rng.uniform(0.0003, 0.002)))


@dataclass(frozen=True)
class FilmImage:
    """A scanned film and its truth, in the stored image's pixels.

    `pixels` uint16 (dense = bright, < 2**bits_stored); `breast` bool mask of the breast; `label`
    the burned-in text and `label_box` its (x0, y0, x1, y1) box (None without a label); `bands`
    {side: width in pixels} of every band (bright and dark); `lesion_boxes` per finding its
    (x0, y0, x1, y1) box, or None when it falls outside the image.
    """

    pixels: np.ndarray
    breast: np.ndarray
    label: str | None
    label_box: tuple[int, int, int, int] | None
    bands: dict
    lesion_boxes: list


def film_mammogram(
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    laterality: str,
    view: str,
    density: int,
    findings: Sequence[Lesion] = (),
    look: FilmLook | None = None,
    bits_stored: int = 16,
) -> FilmImage:
    """A digitised film mammogram (see the module docstring); `look` None draws `random_film_look`
    with the label "<laterality><view>" (e.g. "LMLO")."""
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored={bits_stored} must be between 8 and 16")
    flip = _stored_flip(laterality, False)
    look_rng, film_rng = (np.random.default_rng(int(seed)) for seed in rng.integers(0, 2**63 - 1, size=2))
    if look is None:
        look = random_film_look(look_rng, label=f"{laterality}{view}")
    widths = {side: 0 for side in SIDES}
    for side, fraction in [*look.bright_bands.items(), *([look.dark_band] if look.dark_band else [])]:
        widths[side] = max(1, round(fraction * (width if side in ("left", "right") else height)))
    top, bottom, left, right = widths["top"], widths["bottom"], widths["left"], widths["right"]
    film_height, film_width = height - top - bottom, width - left - right
    if film_height < 16 or film_width < 16:
        raise ValueError(f"image size {height}x{width} is too small for its film bands {widths}")

    # The breast on the film: the detector picture re-mapped onto film densities, with grain.
    plan = _plan_image(rng, height=film_height, width=film_width, view=view, density=density, findings=findings)
    signal = _render_plan(plan, bits_stored=16, flip=flip).astype(np.float64) / 65535.0
    film = 0.09 + 0.8 * signal ** 0.9 + film_rng.normal(0.0, look.grain, signal.shape)
    picture = np.zeros((height, width))
    picture[top:top + film_height, left:left + film_width] = film
    breast = np.zeros((height, width), dtype=bool)
    breast[top:top + film_height, left:left + film_width] = _breast_region(plan, flip)

    # Bands, with a ragged inner edge (a few pixels) and a level drifting slowly along the side.
    band_mask = np.zeros((height, width), dtype=bool)
    for side, size in widths.items():
        if size == 0:
            continue
        bright = side in look.bright_bands
        level = film_rng.uniform(0.9, 0.97) if bright else film_rng.uniform(0.0, 0.02)
        length = height if side in ("left", "right") else width
        ragged = np.clip(size + np.round(np.cumsum(film_rng.normal(0, 0.4, length))).astype(int) % 3 - 1,
                         1, None)
        drift = level + 0.02 * np.sin(np.linspace(0, math.pi * film_rng.uniform(1, 3), length))
        for position in range(length):
            reach = slice(0, ragged[position]) if side in ("left", "top") else slice(-ragged[position], None)
            values = drift[position] + film_rng.normal(0, 0.004, ragged[position])
            if side in ("left", "right"):
                picture[position, reach], band_mask[position, reach] = values, True
            else:
                picture[reach, position], band_mask[reach, position] = values, True
    breast &= ~band_mask

    # Labels sit in a corner outside the breast's bounding box whenever one is free (as on real films).
    occupied = band_mask.copy()
    if breast.any():
        rows, cols = np.flatnonzero(breast.any(axis=1)), np.flatnonzero(breast.any(axis=0))
        occupied[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    label_box = _burn_label(picture, occupied, look.label, film_rng, (top, bottom, left, right))
    for _ in range(look.scratches):
        _scratch(picture, film_rng)
    hit = film_rng.uniform(size=picture.shape) < look.dust
    picture[hit] = film_rng.choice([0.0, 1.0], size=int(hit.sum()))

    maxval = 2**bits_stored - 1
    pixels = np.rint(np.clip(picture, 0.0, 1.0) * maxval).astype(np.uint16)
    boxes = []
    for box in _output_boxes(plan, flip=flip):
        boxes.append(None if box is None else (box[1] + left, box[0] + top, box[3] + left, box[2] + top))
    return FilmImage(pixels=pixels, breast=breast, label=look.label, label_box=label_box,
                     bands={side: size for side, size in widths.items() if size}, lesion_boxes=boxes)


def _breast_region(plan, flip: bool) -> np.ndarray:
    """The breast's mask in the stored picture of `plan` (the half ellipse inside the skin line)."""
    geometry = plan.geometry
    ys = (np.arange(geometry.height) + 0.5)[:, None]
    xs = (np.arange(geometry.width) + 0.5)[None, :]
    inside = (xs / geometry.depth) ** 2 + ((ys - geometry.center_y) / geometry.half_height) ** 2 < 1.0
    return inside[:, ::-1] if flip else inside


def _burn_label(picture: np.ndarray, occupied: np.ndarray, text: str | None, rng: np.random.Generator,
                margins: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Draw `text` in the first corner (top far side first) clear of `occupied`, else the least
    covered one; its (x0, y0, x1, y1) box."""
    if not text:
        return None
    height, width = picture.shape
    top, bottom, left, right = margins
    scale = max(1, round(0.045 * height / 7))
    bitmap = text_bitmap(text, scale)
    while scale > 1 and bitmap.shape[1] > 0.4 * width:
        scale -= 1
        bitmap = text_bitmap(text, scale)
    rows, cols = bitmap.shape
    pad = max(3, scale, round(0.03 * min(height, width)))  # labels sit clear of the breast and the edges
    corners = [(y, x) for y in (top + pad, height - bottom - pad - rows) for x in (width - right - pad - cols, left + pad)]

    def overlap(corner):
        y, x = corner
        return int(occupied[max(0, y - pad):y + rows + pad, max(0, x - pad):x + cols + pad].sum())

    y, x = min(corners, key=overlap)
    region = picture[y:y + rows, x:x + cols]
    region[bitmap] = rng.uniform(0.88, 0.96)
    return (x, y, x + cols, y + rows)


def _scratch(picture: np.ndarray, rng: np.random.Generator) -> None:
    """A long thin bright line across the film (one pixel wide)."""
    height, width = picture.shape
    angle = rng.uniform(0, math.pi)
    length = rng.uniform(0.4, 1.0) * math.hypot(height, width)
    y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
    steps = np.linspace(-0.5, 0.5, int(length * 2))
    ys = np.clip(np.round(y0 + steps * length * math.sin(angle)).astype(int), 0, height - 1)
    xs = np.clip(np.round(x0 + steps * length * math.cos(angle)).astype(int), 0, width - 1)
    picture[ys, xs] = np.maximum(picture[ys, xs], rng.uniform(0.75, 0.95))


def film_dataset(film: FilmImage, *, laterality: str | None, view: str | None, bits_stored: int = 16,
                 transfer_syntax: str = RLELossless, tags: dict | None = None) -> Dataset:
    """A scanned-film DICOM dataset of `film` (see the module docstring): `laterality` goes to the
    `Laterality` tag and `view` to `PatientOrientation` (None leaves the tag out); `tags` adds or
    overrides keywords (None removes one).

    >>> import numpy as np
    >>> film = film_mammogram(np.random.default_rng(0), height=64, width=52, laterality="R", view="CC", density=1)
    >>> ds = film_dataset(film, laterality="R", view="CC")
    >>> ds.Modality, ds.Laterality, ds.PatientOrientation, "ViewPosition" in ds, ds.BitsStored
    ('MG', 'R', 'CC', False, 16)
    """
    if bits_stored < 16:
        pixels = film.pixels >> (16 - bits_stored)
    else:
        pixels = film.pixels
    own = {"Modality": "MG", "ConversionType": "DF", "BodyPartExamined": "BREAST", "Laterality": laterality,
           "PatientOrientation": view}
    return image_dataset(pixels, bits_stored=bits_stored, sop_class=SECONDARY_CAPTURE,
                         transfer_syntax=transfer_syntax, tags={**own, **(tags or {})})
