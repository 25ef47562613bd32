"""Mammogram pixels -> model inputs: orientation, breast crop, resize, tiles, training augmentation.

The evaluation pipeline of `MamaImageProcessor` (METHOD.md section 5), per image:

1. intensity to [0, 1] (DICOM: the calibrated pixels of `read_dicom`; arrays and PIL images:
   `to_unit_range`),
2. orient: chest wall on the LEFT of the array (flip by laterality, checked against the pixel mass),
3. crop to the breast: bounding box of the largest Otsu-foreground region,
4. resize (paper: 518x518, aspect not kept), 3 channels, normalise (paper: mean 0.5, std 0.5).

In `tiles` mode the processor also cuts the breast into a fixed grid of full-resolution tiles (at
evaluation every grid tile; in training, `augment=True`, up to `max_tiles` randomly drawn tiles that
hold breast, each flipped and intensity-augmented). Work happens on previews and crops: Otsu runs on
a strided preview (long side about 512), and only the breast box is calibrated and resized, so the
pipeline costs little next to decoding a 3328x2560 DICOM.

>>> import numpy as np
>>> from modeling_mama.image_processing_mama import MamaImageProcessor
>>> mammogram = np.zeros((300, 200), dtype=np.uint16)
>>> mammogram[20:280, 150:] = 40000                          # a breast against the right edge
>>> inputs = MamaImageProcessor(size=56)(mammogram)
>>> tuple(inputs["pixel_values"].shape)
(1, 3, 56, 56)
>>> round(float(inputs["pixel_values"].max()), 3)              # (40000 / 65535 - 0.5) / 0.5
0.221
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from torchvision.transforms import v2
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, validate_preprocess_arguments
from transformers.processing_utils import ImagesKwargs

from .dicom import DicomImage, read_dicom
from .hub import ReleaseGuardMixin, normalize_datasets
from .image_utils_mama import (  # noqa: F401  (re-exported: the processor's public pixel helpers)
    IMAGE_SUFFIXES,
    PIXEL_MASS_MARGIN,
    NonFinitePixelsError,
    _box_from_mask,
    _breast_mask,
    _is_image_file,
    _needs_flip,
    _preview_positions,
    _to_gray_array,
    _unit_scaler,
    breast_bbox,
    crop_to_breast,
    infer_laterality,
    orient_breast,
    otsu_threshold,
    to_unit_range,
)

PAPER_IMAGE_SIZE = 518
PAPER_IMAGE_MEAN = [0.5, 0.5, 0.5]
PAPER_IMAGE_STD = [0.5, 0.5, 0.5]
# METHOD.md section 5: the paper's training augmentation.
PAPER_AUGMENTATION = {
    "crop_scale": [0.1, 1.0],
    "horizontal_flip_p": 0.5,
    "vertical_flip_p": 0.5,
    "color_jitter": [0.8, 0.8, 0.8, 0.2],  # brightness, contrast, saturation, hue
    "color_jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_kernel_size": 7,
    "blur_sigma": [0.1, 2.0],
    "blur_p": 0.4,
}
MODES = ("global", "tiles")
# `resample` values the processor supports and the torch interpolation each one means.
RESAMPLING_MODES = {
    PILImageResampling.NEAREST: "nearest-exact",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}
INPUT_DATA_FORMATS = (None, ChannelDimension.FIRST.value, ChannelDimension.LAST.value)
# Stock image-processor arguments that have no meaning here, and what to use instead.
UNSUPPORTED_STOCK_ARGUMENTS = {
    "do_center_crop": "the processor crops to the breast (do_crop_to_breast)",
    "crop_size": "the processor crops to the breast (do_crop_to_breast)",
    "do_pad": "use keep_aspect_ratio=True to fit the breast into `size` and pad",
    "pad_size": "use keep_aspect_ratio=True to fit the breast into `size` and pad",
    "rescale_factor": "intensities are mapped to [0, 1] by their type (do_rescale)",
    "data_format": "pixel values are always channels first",
}
NO_BREAST_ACTIONS = ("warn", "error", "ignore")
# An image holds no breast when its calibrated values span less than this (blank, constant, 1x1) ...
MIN_BREAST_CONTRAST = 0.02
# ... or when the breast region found covers less than this share of it (e.g. black with a marker).
MIN_BREAST_FRACTION = 0.01


class NoBreastFoundError(ValueError):
    """An image in which no breast was found (blank, constant, all background), with `no_breast="error"`."""


class NoBreastWarning(UserWarning):
    """An image in which no breast was found: its outputs (scores, embeddings) mean nothing."""


def load_mammogram(source) -> tuple[np.ndarray, str | None]:
    """Pixels (float32 [H, W] in [0, 1], original geometry) and laterality of one mammogram.

    `source` is a DICOM path, a `pydicom.Dataset`, a `DicomImage`, an image file path (.png, .jpg,
    .tif...), a numpy array, a torch tensor or a PIL image (16-bit modes I;16 / I included).
    DICOM laterality comes from the tags (or the pixel mass, see `read_dicom`); for the other
    sources it is `infer_laterality` of the pixels.
    """
    if isinstance(source, (str, os.PathLike, Dataset)) and not _is_image_file(source):
        source = read_dicom(source)
    if isinstance(source, DicomImage):
        return source.pixels, source.laterality
    pixels = to_unit_range(_to_gray_array(source))
    return pixels, infer_laterality(pixels)


@dataclass
class _Source:
    """One input image, calibrated lazily: `calibrate` maps any part of `stored` to float32 [0, 1]."""

    stored: np.ndarray
    calibrate: Callable[[np.ndarray], np.ndarray]
    laterality: str | None


def _as_float(part: np.ndarray) -> np.ndarray:
    return part.astype(np.float32)


def _as_source(image, laterality: str | None, do_rescale: bool = True, input_data_format: str | None = None) -> _Source:
    if isinstance(image, (str, os.PathLike, Dataset)) and not _is_image_file(image):
        image = read_dicom(image)
    if isinstance(image, DicomImage):
        if not do_rescale:
            raise ValueError(f"do_rescale=False takes pixel values as they are, but DICOM pixels are always "
                             f"calibrated to [0, 1] by read_dicom ({image.path or 'a pydicom dataset'}); "
                             f"use do_rescale=True for DICOM inputs.")
        # What the file says (tags, descriptions, the name hint); the pixel mass is checked anyway.
        named = image.laterality if image.laterality_source != "pixels" else None
        return _Source(image.stored_pixels, image.calibrate, laterality or named)
    array = _to_gray_array(image, input_data_format, rescale=do_rescale)
    return _Source(array, _unit_scaler(array) if do_rescale else _as_float, laterality)


def _image_name(image, index: int, count: int) -> str:
    """How an error names one input image: its file, else its place in the batch."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, DicomImage) and image.path:
        return image.path
    return f"image {index} of the batch of {count}" if count > 1 else "the image"


@dataclass
class _Located:
    """Where the breast is: the (maybe flipped) stored view, its crop box in that view, and more."""

    stored: np.ndarray
    flipped: bool
    box: tuple[int, int, int, int]
    threshold: float
    no_breast: str | None = None  # why no breast was found, or None

    def source_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A box of the oriented view in the coordinates of the original image."""
        if not self.flipped:
            return x0, y0, x1, y1
        width = self.stored.shape[1]
        return width - x1, y0, width - x0, y1


def _locate(source: _Source, do_orient: bool, do_crop: bool) -> _Located:
    stored = source.stored
    rows, cols = _preview_positions(stored.shape)
    preview = source.calibrate(stored[np.ix_(rows, cols)])
    mask, threshold = _breast_mask(preview)
    flipped = do_orient and _needs_flip(preview, mask, source.laterality)
    if flipped:  # the sampled columns are mirror-symmetric, so the preview flips with the image
        stored, mask = stored[:, ::-1], mask[:, ::-1]
    box = _box_from_mask(mask, rows, cols, stored.shape) if do_crop else (0, 0, stored.shape[1], stored.shape[0])
    return _Located(stored, flipped, box, threshold, _no_breast_reason(preview, mask))


def _no_breast_reason(preview: np.ndarray, mask: np.ndarray) -> str | None:
    low, high = (float(preview.min()), float(preview.max())) if preview.size else (0.0, 0.0)
    if high - low < MIN_BREAST_CONTRAST:
        return f"its values only span {low:.3f}-{high:.3f} of the intensity range"
    fraction = float(mask.mean())
    if fraction < MIN_BREAST_FRACTION:
        return f"the largest bright region covers only {fraction:.2%} of it"
    return None


def _report_no_breast(name: str, reason: str, action: str) -> None:
    message = (f"{name}: no breast found ({reason}). Is it blank or all background? Its outputs mean nothing. "
               "(no_breast='error' refuses such images, no_breast='ignore' silences this.)")
    if action == "error":
        raise NoBreastFoundError(message)
    warnings.warn(message, NoBreastWarning, stacklevel=4)


def _resize(pixels: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    if tuple(pixels.shape) == (height, width):
        return pixels
    if mode == "nearest-exact":
        resized = F.interpolate(pixels[None, None], size=(height, width), mode=mode)
    else:
        resized = F.interpolate(pixels[None, None], size=(height, width), mode=mode, antialias=True,
                                align_corners=False)
    return resized[0, 0]


def _fit(pixels: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize keeping the aspect ratio, then pad right / bottom with 0 (the chest wall stays left)."""
    scale = min(height / pixels.shape[0], width / pixels.shape[1])
    new_height = min(height, max(1, round(pixels.shape[0] * scale)))
    new_width = min(width, max(1, round(pixels.shape[1] * scale)))
    canvas = pixels.new_zeros((height, width))
    canvas[:new_height, :new_width] = _resize(pixels, new_height, new_width, mode)
    return canvas


def _check_max_tiles(max_tiles) -> int | None:
    if max_tiles is None:
        return None
    if isinstance(max_tiles, bool) or int(max_tiles) != max_tiles or max_tiles < 1:
        raise ValueError(f"max_tiles must be a positive number of tiles or None, got {max_tiles!r}.")
    return int(max_tiles)


def _size_pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"{name} must be an int, [height, width] or {{'height': h, 'width': w}}, got {size!r}.")


def _write_channels(out: np.ndarray, pixels: np.ndarray, do_normalize: bool, mean, std) -> None:
    """Write [H, W] pixels in [0, 1] into the 3 channels of `out` ([3, H, W]), normalised per channel."""
    for channel, (channel_mean, channel_std) in enumerate(zip(mean, std)):
        if do_normalize:
            np.subtract(pixels, np.float32(channel_mean), out=out[channel])
            out[channel] /= np.float32(channel_std)
        else:
            out[channel] = pixels


def _channel_values(values, channels: int, name: str) -> list[float]:
    """`image_mean` / `image_std` as one float per output channel (a single number is broadcast)."""
    if isinstance(values, (int, float, np.number)):
        return [float(values)] * channels
    values = [float(value) for value in values]
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values but the processor outputs {channels} channel(s) "
            f"(do_convert_rgb={channels == 3}); give one value per channel, or a single number.")
    return values


def _fit_region(crop: torch.Tensor, tile_height: int, tile_width: int, rows: int, cols: int,
                mode: str = "bilinear") -> torch.Tensor:
    """The breast crop at full resolution, or scaled down (aspect kept) until the tile grid covers it."""
    crop_height, crop_width = crop.shape
    scale = min(1.0, rows * tile_height / crop_height, cols * tile_width / crop_width)
    if scale >= 1.0:
        return crop
    return _resize(crop, min(rows * tile_height, max(1, round(crop_height * scale))),
                   min(cols * tile_width, max(1, round(crop_width * scale))), mode)


def _grid_positions(region_height: int, region_width: int, tile_height: int, tile_width: int,
                    cols: int) -> list[tuple[int, int, int]]:
    """(grid index, top, left) of every grid tile the region reaches. The last row / column is shifted
    back to end at the region's edge (overlap, not padding)."""
    positions = []
    for i in range(math.ceil(region_height / tile_height)):
        top = min(i * tile_height, max(region_height - tile_height, 0))
        for j in range(math.ceil(region_width / tile_width)):
            left = min(j * tile_width, max(region_width - tile_width, 0))
            positions.append((i * cols + j, top, left))
    return positions


class _Tiles:
    """Tiles of one oriented breast crop: pixels [T, h, w] in [0, 1], which slots hold a tile
    (`present`), which hold enough breast (`mask`), and source boxes [T, 4]."""

    def __init__(self, crop: torch.Tensor, located: _Located, tile_height: int, tile_width: int, rows: int,
                 cols: int, min_foreground: float, mode: str = "bilinear"):
        self.region = _fit_region(crop, tile_height, tile_width, rows, cols, mode).numpy()
        self.located, self.tile_height, self.tile_width = located, tile_height, tile_width
        self.min_foreground = min_foreground
        # Region pixel -> crop pixel, per axis (exact even after rounding the scaled size).
        self.step_y, self.step_x = crop.shape[0] / self.region.shape[0], crop.shape[1] / self.region.shape[1]
        self.grid = _grid_positions(*self.region.shape, tile_height, tile_width, cols)

    def foreground(self, top: int, left: int) -> float:
        patch = self.region[top:top + self.tile_height, left:left + self.tile_width]
        return np.count_nonzero(patch >= self.located.threshold) / (self.tile_height * self.tile_width)

    def cut(self, positions: list[tuple[int, int, int]], slots: int, real: np.ndarray | None = None):
        """Pixels, present, mask and boxes of the tiles at `positions` ((slot, top, left) each).
        `real` overrides the foreground rule for the mask (one entry per position)."""
        tiles = np.zeros((slots, self.tile_height, self.tile_width), dtype=np.float32)
        present = np.zeros(slots, dtype=bool)
        mask = np.zeros(slots, dtype=bool)
        boxes = np.zeros((slots, 4), dtype=np.float32)
        box_x0, box_y0 = self.located.box[0], self.located.box[1]
        for number, (slot, top, left) in enumerate(positions):
            patch = self.region[top:top + self.tile_height, left:left + self.tile_width]
            tiles[slot, :patch.shape[0], :patch.shape[1]] = patch
            present[slot] = True
            mask[slot] = self.foreground(top, left) >= self.min_foreground if real is None else real[number]
            boxes[slot] = self.located.source_box(
                box_x0 + left * self.step_x, box_y0 + top * self.step_y,
                box_x0 + (left + patch.shape[1]) * self.step_x, box_y0 + (top + patch.shape[0]) * self.step_y)
        return tiles, present, mask, boxes

    def sample(self, count: int) -> list[tuple[int, int, int]]:
        """Training tiles: up to `count` distinct grid tiles holding enough breast, drawn at random
        (torch RNG), each shifted by up to half a tile when the shifted tile still holds as much breast
        as asked. A breast too small (or faint) for any such tile gives its most-breast tile, so every
        item has at least one tile for the local alignment."""
        fractions = [self.foreground(top, left) for _, top, left in self.grid]
        candidates = [position for position, fraction in zip(self.grid, fractions) if fraction >= self.min_foreground]
        if not candidates:
            candidates = [self.grid[int(np.argmax(fractions))]]
        order = torch.randperm(len(candidates))[:count].tolist()
        max_top = max(self.region.shape[0] - self.tile_height, 0)
        max_left = max(self.region.shape[1] - self.tile_width, 0)
        chosen = []
        for slot, pick in enumerate(order):
            _, top, left = candidates[pick]
            shift = torch.randint(-(self.tile_height // 2), self.tile_height // 2 + 1, (2,)).tolist()
            shifted_top = min(max(top + shift[0], 0), max_top)
            shifted_left = min(max(left + round(shift[1] * self.tile_width / self.tile_height), 0), max_left)
            if self.foreground(shifted_top, shifted_left) >= min(self.min_foreground, self.foreground(top, left)):
                top, left = shifted_top, shifted_left
            chosen.append((slot, top, left))
        return chosen


# ----------------------------------------------------------------------------------------------
# Training augmentation.


class MamaTrainTransform:
    """The paper's training augmentation (METHOD.md section 5), built from torchvision transforms v2.

    Random resized crop (scale 0.1-1.0) to the output size, horizontal and vertical flips (p=0.5),
    colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2, Gaussian blur (kernel 7,
    sigma 0.1-2.0) p=0.4, then normalisation. Input: an already oriented and cropped image (a
    16-bit PNG of the converted datasets as a PIL image, a numpy array or a tensor); output: float
    [num_channels, H, W] (the augmentation works on 3 channels for the colour jitter; they stay grey, so
    one channel is exactly the first of them). `seed` makes one call reproducible without touching the
    global RNG; without it the torch RNG is used (seeded per worker by the DataLoader).

    `augment_tile` applies everything but the crop to a full-resolution tile: flips and intensity
    changes keep a tile a piece of breast at its stored scale, while a random resized crop would
    zoom it by up to 3x.

    The transforms are built once, here; `MamaImageProcessor` keeps one instance per setting and
    process (`cached_train_transform`), so a DataLoader worker builds its pipeline once, not per item.

    >>> transform = MamaTrainTransform(size=(32, 32))
    >>> image = np.random.default_rng(0).integers(0, 65535, (80, 50)).astype(np.uint16)
    >>> torch.equal(transform(image, seed=1), transform(image, seed=1))
    True
    """

    def __init__(self, size=PAPER_IMAGE_SIZE, image_mean=PAPER_IMAGE_MEAN, image_std=PAPER_IMAGE_STD,
                 augmentation: dict | None = None, do_normalize: bool = True, num_channels: int = 3):
        unknown = set(augmentation or {}) - set(PAPER_AUGMENTATION)
        if unknown:
            raise ValueError(
                f"Unknown augmentation keys {sorted(unknown)}; expected some of {sorted(PAPER_AUGMENTATION)}.")
        params = {**PAPER_AUGMENTATION, **(augmentation or {})}
        self.size = _size_pair(size, "size")
        self.params = params
        self.num_channels = int(num_channels)
        steps = [
            v2.RandomResizedCrop(self.size, scale=tuple(params["crop_scale"]), antialias=True),
            v2.RandomHorizontalFlip(params["horizontal_flip_p"]),
            v2.RandomVerticalFlip(params["vertical_flip_p"]),
            v2.RandomApply([v2.ColorJitter(*params["color_jitter"])], p=params["color_jitter_p"]),
            v2.RandomGrayscale(p=params["grayscale_p"]),
            v2.RandomApply([v2.GaussianBlur(params["blur_kernel_size"], sigma=tuple(params["blur_sigma"]))],
                           p=params["blur_p"]),
        ]
        normalize = v2.Normalize(list(image_mean), list(image_std)) if do_normalize else None
        self.transform = v2.Compose(steps + ([normalize] if normalize else []))
        # A mammogram's three channels are equal, so everything before the normalisation runs on one
        # channel: torchvision leaves saturation, hue and grayscale unchanged on a one-channel image
        # (they are no-ops on equal channels too, up to rounding), draws the same random numbers, and
        # the costly steps (hue, blur) run once instead of three times.
        self._crop, self._one_channel, self._normalize = steps[0], v2.Compose(steps[1:]), normalize

    def __call__(self, image, *, seed: int | None = None) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.float32:
            image = torch.from_numpy(np.ascontiguousarray(to_unit_range(_to_gray_array(image))))
        return self.augment(image, seed=seed)

    def augment(self, pixels: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Augment float [H, W] (or [1, H, W] / [3, H, W]) pixels in [0, 1]."""
        return self._seeded(self._augment, pixels, seed)

    def augment_tile(self, pixels: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Flips and intensity augmentation of a tile, float [h, w] in [0, 1] -> [3, h, w] (no crop, no resize)."""
        return self._seeded(self._after_crop, pixels, seed)

    @staticmethod
    def _seeded(function, pixels: torch.Tensor, seed: int | None) -> torch.Tensor:
        if pixels.ndim == 2:
            pixels = pixels[None]
        pixels = pixels[:1]  # one channel: the channels of a grayscale mammogram are equal
        if seed is None:
            return function(pixels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return function(pixels)

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._after_crop(self._crop(pixels))

    def _after_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        channels = self._one_channel(pixels).repeat(self.num_channels, 1, 1)
        return self._normalize(channels) if self._normalize is not None else channels


def _hashable(value):
    return tuple(_hashable(item) for item in value) if isinstance(value, (list, tuple)) else value


@functools.lru_cache(maxsize=16)
def _cached_transform(size, mean, std, augmentation, do_normalize, num_channels) -> MamaTrainTransform:
    augmentation = {key: list(value) if isinstance(value, tuple) else value for key, value in augmentation}
    return MamaTrainTransform(size, list(mean), list(std), augmentation, do_normalize, num_channels)


def cached_train_transform(size, image_mean, image_std, augmentation: dict | None,
                           do_normalize: bool = True, num_channels: int = 3) -> MamaTrainTransform:
    """The `MamaTrainTransform` for these settings, built once per process and reused (a DataLoader
    worker is a process: it builds its augmentation once, not once per item)."""
    items = tuple(sorted((key, _hashable(value)) for key, value in (augmentation or {}).items()))
    return _cached_transform(_size_pair(size, "size"), _hashable(image_mean), _hashable(image_std), items,
                             bool(do_normalize), int(num_channels))


# ----------------------------------------------------------------------------------------------
# The image processor.


class MamaImageProcessorKwargs(ImagesKwargs, total=False):
    mode: str
    keep_aspect_ratio: bool
    do_orient: bool
    do_crop_to_breast: bool
    tile_size: Any
    tile_grid: Any
    min_tile_foreground: float
    max_tiles: int
    augmentation: dict
    augment: bool
    sample_tiles: bool
    seed: int
    laterality: Any
    return_geometry: bool
    no_breast: str


class MamaImageProcessor(ReleaseGuardMixin, BaseImageProcessor):
    r"""
    Turns mammograms (DICOM files, pydicom datasets, numpy arrays, torch tensors, PIL images in any
    mode including 16-bit I;16 / I; one image or a list) into MaMA model inputs.

    Args:
        mode: `"global"` (paper) returns `pixel_values` [B, C, H, W]; `"tiles"` also returns
            `tile_pixel_values` [B, T, C, h, w] and `tile_mask` bool [B, T] (and, with
            `return_geometry=True`, `tile_boxes` float [B, T, 4]).
        do_rescale: map intensities to [0, 1] (uint8 / uint16 by their maximum, floats outside [0, 1]
            min-max; DICOM pixels are always calibrated by `read_dicom`). `False` takes array / image
            values as they are (already in [0, 1]).
        do_orient: flip so the chest wall is on the left (by laterality, checked against the pixel mass).
        do_crop_to_breast: crop to the Otsu-foreground bounding box before resizing (paper: on).
        do_resize, size, resample: resize the breast crop to `size` (paper: 518x518) with `resample`
            (`PILImageResampling.BILINEAR` (default, antialiased), `BICUBIC` or `NEAREST`). Without
            resizing, the global view keeps the crop's size (then a batch needs crops of one size).
        keep_aspect_ratio: fit the breast into `size` keeping its aspect ratio and pad right / bottom
            with black, instead of stretching it (paper: stretch).
        do_convert_rgb: repeat the grayscale image into the 3 channels RGB towers expect (C = 3);
            `False` returns one channel (C = 1).
        do_normalize, image_mean, image_std: normalisation of each channel (paper: 0.5, 0.5); one value
            per channel, or one number for all.
        tile_size: size of one tile (`None`: the same as `size`).
        tile_grid: `[rows, cols]`, the fixed tile grid, so T = rows * cols is the same for every image.
            Tiles are cut from the breast box at full resolution; a breast larger than the grid
            covers is scaled down (aspect kept) until it fits. Tile (i, j) is at index i * cols + j.
        min_tile_foreground: a tile whose share of Otsu-foreground pixels is below this is masked out.
        max_tiles: training tiles per image (`sample_tiles`, on with `augment=True`): up to this many
            grid tiles holding breast, drawn at random, each shifted by up to half a tile (T =
            max_tiles, padded slots masked; with `augment` each tile is also flipped and
            intensity-augmented). `None`: T = rows * cols. Evaluation returns every grid tile.
        augmentation: overrides of `PAPER_AUGMENTATION` for `preprocess(..., augment=True)`.
        training_datasets: the data of the model this processor ships with (saved in its config);
            `push_to_hub` checks its licences (`hub.ReleaseGuardMixin`).
        no_breast: what to do with an image in which no breast is found (blank, constant or all
            background: its calibrated values span less than `MIN_BREAST_CONTRAST`, or the breast region
            covers less than `MIN_BREAST_FRACTION` of it): "warn" (`NoBreastWarning`, default),
            "error" (`NoBreastFoundError`) or "ignore".

    Arguments are checked when the processor is built and at every call: a value the pipeline cannot
    use (an `image_mean` of the wrong length, an unknown `resample`...) raises `ValueError`, an
    unknown argument `TypeError` (as transformers' own processors do).

    Geometry (`return_geometry=True`): `crop_boxes` float [B, 4] (the breast box), `flipped` bool [B]
    and, in tiles mode, `tile_boxes` float [B, T, 4], all `(x0, y0, x1, y1)` in the pixel coordinates
    of the original image (before orientation and cropping). At evaluation, grid cells the breast does
    not reach have `tile_mask=False` and zero pixels and boxes; cells it reaches keep their pixels and
    box, with `tile_mask` telling whether they hold enough breast. Tiles are never upsampled: with stored images
    of long side L (the converters' `--image-size`) a grid of `ceil(L / tile)` rows and columns keeps
    every tile at the stored resolution.

    >>> processor = MamaImageProcessor(mode="tiles", size=28, tile_grid=[2, 2])
    >>> image = np.zeros((100, 60), dtype=np.uint8)
    >>> image[10:90, :40] = 200
    >>> out = processor([image, image[:50]])  # 80x40 and 40x40 breasts
    >>> tuple(out["tile_pixel_values"].shape), out["tile_mask"].tolist()
    ((2, 4, 3, 28, 28), [[True, False, True, False], [True, True, True, True]])
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MamaImageProcessorKwargs

    def __init__(
        self,
        mode: str = "global",
        size: int | list | dict | None = None,
        keep_aspect_ratio: bool = False,
        do_rescale: bool = True,
        do_orient: bool = True,
        do_crop_to_breast: bool = True,
        do_resize: bool = True,
        resample: PILImageResampling | int = PILImageResampling.BILINEAR,
        do_convert_rgb: bool = True,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        tile_size: int | list | dict | None = None,
        tile_grid: list[int] | None = None,
        min_tile_foreground: float = 0.05,
        max_tiles: int | None = None,
        augmentation: dict | None = None,
        training_datasets=None,
        no_breast: str = "warn",
        **kwargs,
    ):
        # Unknown keys are kept as attributes, as every transformers processor does: a saved folder
        # written by another version must still load.
        super().__init__(**kwargs)
        self.training_datasets = normalize_datasets(training_datasets)
        if no_breast not in NO_BREAST_ACTIONS:
            raise ValueError(f"no_breast={no_breast!r} is not one of {NO_BREAST_ACTIONS}.")
        self.no_breast = no_breast
        height, width = _size_pair(PAPER_IMAGE_SIZE if size is None else size, "size")
        channels = 3 if do_convert_rgb else 1
        self.mode = mode
        self.size = {"height": height, "width": width}
        self.keep_aspect_ratio = bool(keep_aspect_ratio)
        self.do_rescale = bool(do_rescale)
        self.do_orient = bool(do_orient)
        self.do_crop_to_breast = bool(do_crop_to_breast)
        self.do_resize = bool(do_resize)
        self.resample = int(resample)
        self.do_convert_rgb = bool(do_convert_rgb)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _channel_values(PAPER_IMAGE_MEAN[:channels] if image_mean is None else image_mean,
                                          channels, "image_mean")
        self.image_std = _channel_values(PAPER_IMAGE_STD[:channels] if image_std is None else image_std,
                                         channels, "image_std")
        if tile_size is None:
            self.tile_size = None
        else:
            tile_height, tile_width = _size_pair(tile_size, "tile_size")
            self.tile_size = {"height": tile_height, "width": tile_width}
        self.tile_grid = [int(v) for v in (tile_grid if tile_grid is not None else [6, 3])]
        self.min_tile_foreground = float(min_tile_foreground)
        self.max_tiles = _check_max_tiles(max_tiles)
        self.augmentation = dict(augmentation) if augmentation else None
        self._validate_preprocess_kwargs(
            mode=self.mode, size=self.size, do_resize=self.do_resize, resample=self.resample,
            do_convert_rgb=self.do_convert_rgb, do_normalize=self.do_normalize, image_mean=self.image_mean,
            image_std=self.image_std, tile_grid=self.tile_grid, min_tile_foreground=self.min_tile_foreground)
        self.train_transform()  # validates the augmentation keys

    def _validate_preprocess_kwargs(self, *, mode, size, do_resize, resample, do_convert_rgb, do_normalize,
                                    image_mean, image_std, tile_grid, min_tile_foreground,
                                    input_data_format=None, augment=False) -> None:
        """Raise `ValueError` for values the pipeline cannot use (at construction and at every call)."""
        validate_preprocess_arguments(do_normalize=do_normalize, image_mean=image_mean, image_std=image_std,
                                      do_resize=do_resize, size=size, resample=resample)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}.")
        if augment and not do_resize:
            raise ValueError("augment=True crops and resizes at random to `size`; it needs do_resize=True.")
        if resample not in RESAMPLING_MODES:
            raise ValueError(f"resample={resample!r} is not supported; use one of "
                             f"{[PILImageResampling(value).name for value in RESAMPLING_MODES]}.")
        if input_data_format not in INPUT_DATA_FORMATS:
            raise ValueError(f"input_data_format={input_data_format!r} is not one of {INPUT_DATA_FORMATS}.")
        channels = 3 if do_convert_rgb else 1
        _channel_values(image_mean, channels, "image_mean")
        std = _channel_values(image_std, channels, "image_std")
        if do_normalize and not all(value > 0 for value in std):
            raise ValueError(f"image_std must be positive, got {std}.")
        if len(tile_grid) != 2 or min(tile_grid) < 1:
            raise ValueError(f"tile_grid must be [rows, cols] of positive ints, got {tile_grid!r}.")
        if not 0.0 <= min_tile_foreground <= 1.0:
            raise ValueError(f"min_tile_foreground is a share of the tile, in [0, 1]; got {min_tile_foreground}.")

    def train_transform(self) -> MamaTrainTransform:
        """The training augmentation for images that are already oriented and cropped (e.g. the
        converted datasets' 16-bit PNGs), built once per process (`cached_train_transform`)."""
        channels = 3 if self.do_convert_rgb else 1
        return cached_train_transform(self.size, _channel_values(self.image_mean, channels, "image_mean"),
                                      _channel_values(self.image_std, channels, "image_std"), self.augmentation,
                                      self.do_normalize, channels)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images,
        *,
        mode: str | None = None,
        size=None,
        keep_aspect_ratio: bool | None = None,
        do_rescale: bool | None = None,
        do_orient: bool | None = None,
        do_crop_to_breast: bool | None = None,
        do_resize: bool | None = None,
        resample: PILImageResampling | int | None = None,
        do_convert_rgb: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        tile_size=None,
        tile_grid: list[int] | None = None,
        min_tile_foreground: float | None = None,
        max_tiles: int | None = None,
        laterality: str | list[str | None] | None = None,
        augment: bool = False,
        sample_tiles: bool | None = None,
        seed: int | None = None,
        return_geometry: bool = False,
        no_breast: str | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process one image or a list of images.

        Args (besides the constructor's, which override it for this call):
            laterality: "L" / "R" per image (or one value for all), e.g. from a dataset table; it
                takes precedence over DICOM tags and is still checked against the pixel mass.
            augment: apply the training augmentation (`train_transform`) to the breast crop instead
                of the evaluation resize; in tiles mode, also flip and intensity-augment each tile.
                Training only.
            sample_tiles: tiles mode: draw up to `max_tiles` random tiles holding breast (training)
                instead of returning every grid tile (evaluation). Default: the same as `augment`.
            seed: makes an augmented call reproducible.
            return_geometry: also return `crop_boxes`, `flipped` and (tiles mode) `tile_boxes`, to map
                outputs back onto the source image (see the class docstring).
            input_data_format: "channels_first" / "channels_last" for 3D array inputs (default: inferred).
            no_breast: "warn", "error" or "ignore" for an image in which no breast is found.
            return_tensors: "pt" (default) or "np".

        Images the converters wrote are already oriented and cropped: pass `do_orient=False,
        do_crop_to_breast=False` for them (`modeling_mama.training.converted.stored_image_options`
        reads that from the dataset), so the pixel-mass rule cannot flip a stored image.
        """
        if kwargs:
            self._reject_arguments(kwargs)
        mode = self.mode if mode is None else mode
        height, width = _size_pair(self.size if size is None else size, "size")
        keep_aspect_ratio = self.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        do_orient = self.do_orient if do_orient is None else do_orient
        do_crop = self.do_crop_to_breast if do_crop_to_breast is None else do_crop_to_breast
        do_resize = self.do_resize if do_resize is None else do_resize
        resample = self.resample if resample is None else int(resample)
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        image_mean = self.image_mean if image_mean is None else image_mean
        image_std = self.image_std if image_std is None else image_std
        tile_size = tile_size if tile_size is not None else (self.tile_size or {"height": height, "width": width})
        tile_height, tile_width = _size_pair(tile_size, "tile_size")
        tile_grid = self.tile_grid if tile_grid is None else [int(v) for v in tile_grid]
        min_foreground = self.min_tile_foreground if min_tile_foreground is None else float(min_tile_foreground)
        max_tiles = self.max_tiles if max_tiles is None else _check_max_tiles(max_tiles)
        sample_tiles = augment if sample_tiles is None else bool(sample_tiles)
        if isinstance(input_data_format, ChannelDimension):
            input_data_format = input_data_format.value
        self._validate_preprocess_kwargs(
            mode=mode, size={"height": height, "width": width}, do_resize=do_resize, resample=resample,
            do_convert_rgb=do_convert_rgb, do_normalize=do_normalize, image_mean=image_mean, image_std=image_std,
            tile_grid=tile_grid, min_tile_foreground=min_foreground, input_data_format=input_data_format,
            augment=augment)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        channels = 3 if do_convert_rgb else 1
        mean = _channel_values(image_mean, channels, "image_mean")
        std = _channel_values(image_std, channels, "image_std")
        interpolation = RESAMPLING_MODES[resample]
        rows, cols = tile_grid
        no_breast = getattr(self, "no_breast", "warn") if no_breast is None else no_breast
        if no_breast not in NO_BREAST_ACTIONS:
            raise ValueError(f"no_breast={no_breast!r} is not one of {NO_BREAST_ACTIONS}.")

        images = self._as_list(images)
        lateralities = laterality if isinstance(laterality, (list, tuple)) else [laterality] * len(images)
        if len(lateralities) != len(images):
            raise ValueError(f"Got {len(lateralities)} lateralities for {len(images)} images.")
        transform = (cached_train_transform((height, width), mean, std, self.augmentation, do_normalize, channels)
                     if augment else None)

        # Outputs are filled in place with numpy: one small torch op per image (the resize), since
        # multi-threaded torch calls on small tensors cost more than the arithmetic on a busy machine.
        count = len(images)
        tile_count = (max_tiles or rows * cols) if sample_tiles else rows * cols
        pixel_values = None  # allocated at the first view's size (fixed unless do_resize=False)
        augmented = []
        if mode == "tiles":
            tile_values = np.zeros((count, tile_count, channels, tile_height, tile_width), dtype=np.float32)
            tile_mask = np.zeros((count, tile_count), dtype=bool)
            tile_boxes = np.zeros((count, tile_count, 4), dtype=np.float32)
        crop_boxes, flipped = np.zeros((count, 4), dtype=np.float32), np.zeros(count, dtype=bool)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for index, (image, image_laterality) in enumerate(zip(images, lateralities)):
                try:
                    source = _as_source(image, image_laterality, do_rescale, input_data_format)
                except NonFinitePixelsError as error:
                    raise NonFinitePixelsError(f"{_image_name(image, index, count)}: {error}") from None
                located = _locate(source, do_orient, do_crop)
                if located.no_breast is not None and no_breast != "ignore":
                    _report_no_breast(_image_name(image, index, count), located.no_breast, no_breast)
                x0, y0, x1, y1 = located.box
                crop = torch.from_numpy(np.ascontiguousarray(source.calibrate(located.stored[y0:y1, x0:x1])))
                if transform is not None:
                    augmented.append(transform.augment(crop))
                else:
                    if not do_resize:
                        view = crop
                    elif keep_aspect_ratio:
                        view = _fit(crop, height, width, interpolation)
                    else:
                        view = _resize(crop, height, width, interpolation)
                    if pixel_values is None:
                        pixel_values = np.zeros((count, channels, *view.shape), dtype=np.float32)
                    elif tuple(view.shape) != pixel_values.shape[2:]:
                        raise ValueError(
                            f"With do_resize=False the global view keeps the breast crop's size, and image "
                            f"{index} gives {tuple(view.shape)} where image 0 gave {pixel_values.shape[2:]}; "
                            f"resize (do_resize=True) or process the images one at a time.")
                    _write_channels(pixel_values[index], view.numpy(), do_normalize, mean, std)
                if mode == "tiles":
                    cutter = _Tiles(crop, located, tile_height, tile_width, rows, cols, min_foreground,
                                    interpolation)
                    if sample_tiles:
                        sampled = cutter.sample(tile_count)
                        tiles, present, tile_mask[index], tile_boxes[index] = cutter.cut(
                            sampled, tile_count, real=np.ones(len(sampled), dtype=bool))
                    else:
                        tiles, present, tile_mask[index], tile_boxes[index] = cutter.cut(cutter.grid, tile_count)
                    for tile in np.flatnonzero(present):
                        if transform is not None:
                            tile_values[index, tile] = transform.augment_tile(torch.from_numpy(tiles[tile])).numpy()
                        else:
                            _write_channels(tile_values[index, tile], tiles[tile], do_normalize, mean, std)
                crop_boxes[index], flipped[index] = located.source_box(*located.box), located.flipped
        data = {"pixel_values": torch.stack(augmented) if augment else torch.from_numpy(pixel_values)}
        if mode == "tiles":
            data.update(tile_pixel_values=torch.from_numpy(tile_values), tile_mask=torch.from_numpy(tile_mask))
        if return_geometry:
            data.update(crop_boxes=torch.from_numpy(crop_boxes), flipped=torch.from_numpy(flipped))
            if mode == "tiles":
                data.update(tile_boxes=torch.from_numpy(tile_boxes))
        if return_tensors in (None, "pt"):
            return BatchFeature(data=data)
        return BatchFeature(data={key: value.numpy() for key, value in data.items()}, tensor_type=return_tensors)

    def _reject_arguments(self, kwargs: dict[str, Any]) -> None:
        """`TypeError` for arguments `preprocess` does not take, as transformers' processors raise it."""
        name = min(kwargs)
        reason = UNSUPPORTED_STOCK_ARGUMENTS.get(name)
        if reason is None:
            hint = difflib.get_close_matches(name, inspect.signature(self.preprocess).parameters, n=1)
            reason = f"did you mean {hint[0]!r}?" if hint else "it is not an argument of MamaImageProcessor."
        else:
            reason += "."
        raise TypeError(f"MamaImageProcessor.preprocess() got an unexpected keyword argument {name!r}: {reason}")

    @staticmethod
    def _as_list(images) -> list:
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("MamaImageProcessor got an empty list of images.")
            return list(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            return list(images)
        return [images]


__all__ = [
    "MODES", "NO_BREAST_ACTIONS", "PAPER_AUGMENTATION", "PAPER_IMAGE_MEAN", "PAPER_IMAGE_SIZE", "PAPER_IMAGE_STD",
    "PIXEL_MASS_MARGIN", "MamaImageProcessor", "MamaTrainTransform", "NoBreastFoundError", "NoBreastWarning",
    "breast_bbox", "cached_train_transform", "crop_to_breast", "infer_laterality", "load_mammogram",
    "orient_breast", "otsu_threshold", "to_unit_range",
]
