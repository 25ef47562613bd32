"""Breast geometry on grayscale pixels: intensity range, Otsu threshold, orientation, breast box.

These functions take 2D grayscale images (numpy arrays, torch tensors, PIL images, image files; any
dtype) and know nothing about DICOM tags or model inputs, so the DICOM reader (`dicom.py`, for its
laterality fallback), the image processor and the dataset converters all import them and none
imports another. They work on a strided preview (long side about `PREVIEW_SIDE`), so they cost
little next to decoding a full-field mammogram.

>>> import numpy as np
>>> mammogram = np.zeros((300, 200), dtype=np.uint16)
>>> mammogram[20:280, 150:] = 40000                          # a breast against the right edge
>>> infer_laterality(mammogram), breast_bbox(mammogram)
('R', (150, 20, 200, 280))
>>> breast_bbox(orient_breast(mammogram, "R"))               # chest wall moved to the left
(0, 20, 50, 280)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

# Previews sample every k-th row and column so that the long side is about this.
PREVIEW_SIDE = 512

# The pixel mass overrides the laterality tag when one half of the breast mask holds this much more
# of the total intensity than the other (real mammograms: the chest-wall half holds 60-80%).
PIXEL_MASS_MARGIN = 0.1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Bit depths a 16-bit container may really hold (mammography units store 10-14 bits; 8-bit data is
# sometimes widened): a uint16 image whose values all fit in one of these is scaled by its maximum.
# 14 bits is left out: a dark but genuine 16-bit image (e.g. a converted one) can stay below 2**14.
LOW_BIT_DEPTHS = (8, 10, 12)


class NonFinitePixelsError(ValueError):
    """The image holds NaN or infinite values, which have no intensity (the message says how many)."""


class LowBitDepthWarning(UserWarning):
    """A 16-bit image used only 8-12 bits: it was scaled by that depth's maximum, not by 65535."""

# Frame bands of scanned films (`_frame_bands`): a band is at most this share of the image's height
# or width, its lines are within BAND_TOLERANCE of one level for BAND_FILL of their pixels, and
# that level is brighter than the 99th percentile (darker than the 1st) of the image's middle by
# BAND_MARGIN. All in the [0, 1] intensities of the preview.
BAND_MAX_FRACTION = 0.2
BAND_TOLERANCE = 0.08
BAND_FILL = 0.9
BAND_MARGIN = 0.02
# Thin foreground (noise, scratches, text strokes) counts for the breast only this many preview
# pixels from a thick part of it (`_breast_mask`): enough to keep the ragged skin line and thin
# necks of tissue of digital mammograms exactly as a plain largest-region crop does.
JOIN_REACH = 8


def to_unit_range(array) -> np.ndarray:
    """Intensities as float32 in [0, 1].

    uint8 / uint16 (and bool) are divided by their type's maximum, so a 16-bit PNG written from
    [0, 1] pixels reads back unchanged; floats already in [0, 1] are kept; anything else (other
    integer types, floats outside [0, 1]) is min-max scaled. A constant image becomes zeros.
    A uint16 image whose values all fit in 8, 10 or 12 bits (12-bit data stored in a 16-bit PNG)
    is divided by that depth's maximum instead, with a `LowBitDepthWarning`, so it is not near-black.
    NaN or infinite values raise `NonFinitePixelsError`.

    >>> to_unit_range(np.array([0, 255], dtype=np.uint8)).tolist()
    [0.0, 1.0]
    >>> to_unit_range(np.array([-10.0, 0.0, 30.0])).tolist()
    [0.0, 0.25, 1.0]
    """
    array = np.asarray(array)
    return _unit_scaler(array)(array)


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold over a `bins`-bin histogram; the foreground is `values >= threshold`.

    The threshold is a histogram bin edge: the one that maximises the between-class variance
    w0 * w1 * (mean0 - mean1)**2 of the two classes it separates. Constant input returns its value.
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise NonFinitePixelsError("otsu_threshold got NaN or infinite values; replace them first.")
    if high <= low:
        return low
    # np.histogram's bins (the last one closed), counted with bincount, which is several times faster.
    width = (high - low) / bins
    index = np.minimum(((values - low) / np.float32(width)).astype(np.intp), bins - 1)
    counts = np.bincount(index, minlength=bins)
    edges = low + width * np.arange(bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)
    weight_high = counts.sum() - weight_low
    sum_low = np.cumsum(counts * centers)[:-1]
    sum_total = float((counts * centers).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_total - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def infer_laterality(pixels) -> str | None:
    """The laterality a standard-presented mammogram with these pixels has, from the pixel mass.

    The chest wall is on the side holding more of the breast's intensity: "L" when that is the
    left half of the array (a left breast is displayed chest wall left), "R" for the right half,
    None when the halves are equal (e.g. an empty image).
    """
    preview, _, _ = _unit_preview(pixels)
    left, right = _half_masses(preview, _breast_mask(preview)[0])
    if left == right:
        return None
    return "L" if left > right else "R"


def orient_breast(pixels, laterality: str | None = None) -> np.ndarray:
    """Flip the image so the chest wall is on the LEFT of the array (possibly a view of `pixels`).

    A right breast ("R") is flipped left-right. The decision is checked against the pixel mass:
    when one half of the breast clearly holds more intensity (`PIXEL_MASS_MARGIN`), the chest wall
    is taken to be there, whatever the tag says; the tag decides only when the pixels are
    ambiguous, and the (slightly) heavier half decides when there is no tag.
    """
    pixels = _to_gray_array(pixels)
    return pixels[:, ::-1] if needs_flip(pixels, laterality) else pixels


def needs_flip(pixels, laterality: str | None = None) -> bool:
    """Whether `orient_breast(pixels, laterality)` flips the image left-right (see there).

    >>> image = np.zeros((40, 30)); image[5:35, 20:] = 1.0      # chest wall on the right
    >>> needs_flip(image), needs_flip(image[:, ::-1])
    (True, False)
    """
    preview, _, _ = _unit_preview(pixels)
    return _needs_flip(preview, _breast_mask(preview)[0], laterality)


def breast_bbox(pixels) -> tuple[int, int, int, int]:
    """The breast's bounding box `(x0, y0, x1, y1)` (end-exclusive; crop with `pixels[y0:y1, x0:x1]`).

    On a preview (every k-th row and column, long side about 512 pixels): frame bands along the
    border (the bright edge of a scanned film, the dark scanner bed) are set aside, Otsu's threshold
    splits the rest, and the largest region left after cutting thin things (noise, scratches,
    burned-in text) is the breast, so labels, markers and film edges are left out. The box reaches
    up to the neighbouring background samples, so it always holds that region (and is exact when
    the image is small enough to need no preview). An image with no foreground gives the whole image.
    """
    pixels = _to_gray_array(pixels)
    preview, rows, cols = _unit_preview(pixels)
    mask, _ = _breast_mask(preview)
    return _box_from_mask(mask, rows, cols, pixels.shape)


def crop_to_breast(pixels) -> np.ndarray:
    """The breast's bounding box of `pixels` (see `breast_bbox`)."""
    pixels = _to_gray_array(pixels)
    x0, y0, x1, y1 = breast_bbox(pixels)
    return pixels[y0:y1, x0:x1]


def boxes_to_view(boxes, crop_box, flipped: bool, view_size, *, keep_aspect_ratio: bool = False) -> np.ndarray:
    """Boxes drawn on a source image -> the same boxes on its processed view (oriented, cropped, resized).

    Args:
        boxes: `(x0, y0, x1, y1)` boxes in the source image's pixels ([K, 4] or one box), e.g. a
            dataset's lesion ROIs (EMBED's `ROI_coords` are `(ymin, xmin, ymax, xmax)`: reorder them).
        crop_box, flipped: where the breast crop lies in the source image and whether the image was
            mirrored to put the chest wall on the left, as `MamaImageProcessor(...,
            return_geometry=True)` returns them (`crop_boxes[i]`, `flipped[i]`).
        view_size: (height, width) of the processed view (the processor's `size`).
        keep_aspect_ratio: the view was made with `keep_aspect_ratio=True` (fitted and padded) rather
            than stretched.

    Returns float [K, 4] `(x0, y0, x1, y1)` in view pixels, clipped to the view (a box outside the
    crop comes back with zero width or height).

    >>> boxes_to_view([(150, 30, 170, 60)], crop_box=(100, 20, 200, 120), flipped=True, view_size=(50, 50)).tolist()
    [[15.0, 5.0, 25.0, 20.0]]
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    crop_x0, crop_y0, crop_x1, crop_y1 = (float(value) for value in np.asarray(crop_box, dtype=np.float64))
    height, width = (int(value) for value in view_size)
    crop_width, crop_height = crop_x1 - crop_x0, crop_y1 - crop_y0
    if crop_width <= 0 or crop_height <= 0:
        raise ValueError(f"crop_box {tuple(crop_box)} must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1.")
    if keep_aspect_ratio:  # as the processor fits it: scaled by the tighter side, placed top-left
        scale = min(height / crop_height, width / crop_width)
        scale_y = min(height, max(1, round(crop_height * scale))) / crop_height
        scale_x = min(width, max(1, round(crop_width * scale))) / crop_width
    else:
        scale_y, scale_x = height / crop_height, width / crop_width
    if flipped:  # x is measured from the crop's right edge, which the mirror put on the left
        x0, x1 = (crop_x1 - boxes[:, 2]) * scale_x, (crop_x1 - boxes[:, 0]) * scale_x
    else:
        x0, x1 = (boxes[:, 0] - crop_x0) * scale_x, (boxes[:, 2] - crop_x0) * scale_x
    y0, y1 = (boxes[:, 1] - crop_y0) * scale_y, (boxes[:, 3] - crop_y0) * scale_y
    view = np.stack([x0, y0, x1, y1], axis=1)
    return np.clip(view, 0.0, [width, height, width, height])




# ----------------------------------------------------------------------------------------------
# Internals shared by the helpers, the DICOM reader and the image processor.


def _unit_scaler(array: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A pointwise map to [0, 1] fitted on `array` (so it can be applied to crops of it)."""
    if array.dtype == np.bool_:
        return lambda part: part.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        maximum = np.iinfo(array.dtype).max
        if array.dtype == np.uint16 and array.size:
            maximum = _container_maximum(int(array.max()))
        scale = np.float32(1.0 / maximum)
        return lambda part: part.astype(np.float32) * scale
    if array.dtype.kind == "f" and array.size:
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise NonFinitePixelsError(
                f"the image has {bad} NaN or infinite pixel value(s) out of {array.size}: they have no intensity. "
                "Replace them (e.g. numpy.nan_to_num(pixels, nan=0.0)) or check how the image was read.")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return lambda part: part.astype(np.float32)
    if high <= low:
        return lambda part: np.zeros(part.shape, dtype=np.float32)
    return lambda part: ((part.astype(np.float64) - low) / (high - low)).astype(np.float32)


def _container_maximum(largest: int) -> int:
    """The maximum of the bit depth a uint16 image really uses (65535 unless all values fit in
    `LOW_BIT_DEPTHS`); warns when it is not 65535. An all-zero image keeps 65535."""
    for bits in LOW_BIT_DEPTHS:
        if 0 < largest < 2**bits:
            warnings.warn(
                f"A 16-bit image uses only {bits} bits (all values below {2**bits}): scaled by {2**bits - 1}, not "
                "65535, so it is not near-black. Pass float pixels in [0, 1] to choose the scale yourself.",
                LowBitDepthWarning, stacklevel=4)
            return 2**bits - 1
    return 65535


def _preview_positions(shape) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns a preview samples: every k-th (long side about 512). Columns are
    mirror-symmetric (x is sampled when width - 1 - x is), so the preview of a left-right flipped
    image is exactly the flipped preview, and a breast and its mirror get mirrored boxes."""
    height, width = shape[:2]
    stride = max(1, max(height, width) // PREVIEW_SIDE)
    left = np.arange(0, width // 2, stride)
    middle = [width // 2] if width % 2 else []
    return np.arange(0, height, stride), np.concatenate([left, middle, width - 1 - left[::-1]]).astype(np.intp)


def _unit_preview(pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A preview in [0, 1] and the rows and columns it samples."""
    array = _to_gray_array(pixels)
    rows, cols = _preview_positions(array.shape)
    return _unit_scaler(array)(array[np.ix_(rows, cols)]), rows, cols


def _breast_mask(preview: np.ndarray) -> tuple[np.ndarray, float]:
    """The breast's region of a preview in [0, 1], and the threshold it was cut at.

    1. Frame bands (`_frame_bands`: the bright unexposed edge of a scanned film, the dark scanner bed
       beyond it) are left out of everything that follows.
    2. Otsu's threshold over the remaining pixels gives the foreground.
    3. An opening with a 3x3 square finds the thick parts of the foreground; thin things (scanner
       noise, scratches, the strokes of small burned-in text) are kept only within `JOIN_REACH`
       pixels of a thick part, so they still join thick parts (a narrow neck of tissue, the skin
       line) but no longer bridge the breast to a label across the background.
    4. The breast is the 8-connected region of what is kept that holds the largest thick part.
    """
    bands = _frame_bands(preview)
    inside = preview[~bands] if bands.any() else preview
    threshold = otsu_threshold(inside) if inside.size else otsu_threshold(preview)
    foreground = (preview >= threshold) & ~bands
    square = np.ones((3, 3), dtype=bool)
    core = ndimage.binary_opening(foreground, structure=square)
    if not core.any():
        return _largest_region(foreground), threshold
    # Within JOIN_REACH of a thick part: a (2 * JOIN_REACH + 1)-wide maximum filter is that many 3x3 dilations.
    joinable = core | (foreground & ndimage.maximum_filter(core, size=2 * JOIN_REACH + 1))
    regions, _ = ndimage.label(joinable, structure=square)
    seed = _largest_region(core)  # 8-connected and inside `joinable`: one region holds all of it
    return regions == regions[seed][0], threshold


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean mask (the mask itself when it has one or none)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _frame_bands(preview: np.ndarray) -> np.ndarray:
    """Pixels of the straight bands along the image border that a scanned film carries (True).

    Per side, from the border inward: the lines whose pixels are, for `BAND_FILL` of them, within
    `BAND_TOLERANCE` of the first line's median, when that median is brighter than nearly all of
    the image's middle (the unexposed film edge) or darker than nearly all of it (the scanner bed
    beyond the film); "nearly all" is the 99th (1st) percentile of the middle once things at most
    two pixels thin (scratches, text strokes, dust) are opened (closed) away. A run reaching `BAND_MAX_FRACTION` of the image is no frame (it is a breast
    filling the image, or the background), so it is kept. Pixels of the same level connected to a
    band (a ragged or slightly tilted inner edge) belong to it. Every side is looked at twice, the
    second time without the pixels of the other sides' bands (a line along one side crosses the
    bands of its two neighbours).
    """
    height, width = preview.shape
    bands = np.zeros(preview.shape, dtype=bool)
    limit_rows, limit_cols = int(BAND_MAX_FRACTION * height), int(BAND_MAX_FRACTION * width)
    if min(limit_rows, limit_cols) < 2:
        return bands
    middle = preview[limit_rows:height - limit_rows, limit_cols:width - limit_cols]
    middle = middle if middle.size else preview
    # Levels of the image's middle without its thin things: a scratch or a label's strokes are as
    # bright as a film edge and, on a small image, more than 1% of the pixels.
    low = np.percentile(ndimage.grey_closing(middle, size=(3, 3)), 1.0)
    high = np.percentile(ndimage.grey_opening(middle, size=(3, 3)), 99.0)
    for _ in range(2):
        # Each side as a view whose first axis runs from that border inward (writes reach `bands`).
        for lines, known in ((preview, bands), (preview[::-1], bands[::-1]),
                             (preview.T, bands.T), (preview.T[::-1], bands.T[::-1])):
            limit = limit_rows if lines.shape[0] == height else limit_cols
            _mark_band(lines[:limit], known[:limit], low, high)
    return bands


def _mark_band(lines: np.ndarray, known: np.ndarray, low: float, high: float) -> None:
    """Mark (in `known`) the band that starts at line 0 of `lines`, if there is one; see `_frame_bands`."""
    values = np.where(known, np.nan, lines.astype(np.float32))
    valid = ~known
    if not valid[0].any():
        return
    level = float(np.median(values[0][valid[0]]))
    if low - BAND_MARGIN <= level <= high + BAND_MARGIN:
        return
    close = np.abs(values - level) <= BAND_TOLERANCE
    counts = valid.sum(axis=1)
    fill = np.where(counts > 0, close.sum(axis=1) / np.maximum(counts, 1), 1.0)
    run = int(np.argmin(fill >= BAND_FILL)) if not np.all(fill >= BAND_FILL) else len(fill)
    if run == 0 or run == len(fill):
        return
    like = (values >= level - BAND_TOLERANCE) if level > high else (values <= level + BAND_TOLERANCE)
    like[:run] = True
    # The band: its full lines and the pixels of its level connected to them (a ragged inner edge).
    regions, _ = ndimage.label(like & (valid | (np.arange(len(like)) < run)[:, None]))
    attached = np.unique(regions[:run])
    known |= np.isin(regions, attached[attached > 0])


def _box_from_mask(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape) -> tuple[int, int, int, int]:
    """Full-resolution box of a preview mask, given the rows and columns the preview sampled."""
    height, width = shape[:2]
    mask_rows, mask_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if mask_rows.size == 0:
        return 0, 0, width, height

    def span(hits: np.ndarray, positions: np.ndarray, size: int) -> tuple[int, int]:
        # The neighbouring samples are background, so the breast lies strictly between them.
        start = 0 if hits[0] == 0 else int(positions[hits[0] - 1]) + 1
        end = size if hits[-1] == len(positions) - 1 else int(positions[hits[-1] + 1])
        return start, end

    (x0, x1), (y0, y1) = span(mask_cols, cols, width), span(mask_rows, rows, height)
    return x0, y0, x1, y1


def _half_masses(preview: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Intensity of the masked breast in the left and right halves (the middle column of an odd
    width counts for neither, so a mirrored image gives exactly swapped masses)."""
    mass = np.where(mask, preview, 0.0).sum(axis=0, dtype=np.float64)
    half = mass.shape[0] // 2
    return float(mass[:half].sum()), float(mass[mass.shape[0] - half:].sum())


def _needs_flip(preview: np.ndarray, mask: np.ndarray, laterality: str | None) -> bool:
    left, right = _half_masses(preview, mask)
    total = left + right
    if total > 0 and abs(left - right) >= PIXEL_MASS_MARGIN * total:
        return right > left
    if laterality in ("L", "R"):
        return laterality == "R"
    return right > left


def _is_image_file(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in IMAGE_SUFFIXES


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":  # 16-bit PNGs open as "I" in some Pillow versions
        array = np.asarray(image)
        return array.astype(np.uint16) if array.size and array.min() >= 0 and array.max() <= 65535 else array
    if image.mode in ("L", "F"):
        return np.asarray(image)
    if image.mode == "1":
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def _to_gray_array(image, input_data_format: str | None = None, rescale: bool = True) -> np.ndarray:
    """A 2D array from a numpy array / torch tensor / PIL image / image file (channels averaged).

    `input_data_format` ("channels_first" / "channels_last") says where the channels of a 3D array
    are; `None` infers it. Channels that differ are averaged after `to_unit_range` (`rescale=False`:
    as float32 values).
    """
    if _is_image_file(image):
        with Image.open(image) as opened:
            image = _pil_to_array(opened)
    elif isinstance(image, Image.Image):
        image = _pil_to_array(image)
    elif isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        if input_data_format == "channels_first" or (
                input_data_format is None and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4)):
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] in (1, 3, 4):
            channels = array[..., :3] if array.shape[-1] == 4 else array
            if all(np.array_equal(channels[..., 0], channels[..., k]) for k in range(1, channels.shape[-1])):
                return channels[..., 0]
            return (to_unit_range(channels) if rescale else channels.astype(np.float32)).mean(axis=-1)
    layout = f" ({input_data_format})" if input_data_format else ""
    raise ValueError(
        f"Expected a 2D grayscale image (or one with 1 / 3 / 4 channels), got an array of shape {array.shape}"
        f"{layout}; pass a list for a batch.")


__all__ = [
    "BAND_FILL", "BAND_MARGIN", "BAND_MAX_FRACTION", "BAND_TOLERANCE", "IMAGE_SUFFIXES", "JOIN_REACH",
    "LOW_BIT_DEPTHS", "PIXEL_MASS_MARGIN", "PREVIEW_SIDE", "LowBitDepthWarning", "NonFinitePixelsError",
    "boxes_to_view", "breast_bbox", "crop_to_breast", "infer_laterality", "needs_flip", "orient_breast",
    "otsu_threshold", "to_unit_range",
]
