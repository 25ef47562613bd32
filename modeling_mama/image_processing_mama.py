"""Mammogram pixels -> model inputs: orientation, breast crop, resize, tiles, training augmentation.

The evaluation pipeline of `MamaImageProcessor` (METHOD.md section 5), per image:

1. intensity to [0, 1] (DICOM: the calibrated pixels of `read_dicom`; arrays and PIL images:
   `to_unit_range`),
2. orient: chest wall on the LEFT of the array (flip by laterality, checked against the pixel mass),
3. crop to the breast: bounding box of the largest Otsu-foreground region,
4. resize (paper: 518x518, aspect not kept), 3 channels, normalise (paper: mean 0.5, std 0.5).

In `tiles` mode the processor also cuts the breast into a fixed grid of full-resolution tiles and
returns where each tile came from. Work happens on previews and crops: Otsu runs on a strided
preview (long side about 512), and only the breast box is calibrated and resized, so the pipeline
costs little next to decoding a 3328x2560 DICOM.

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
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

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

logger = logging.get_logger(__name__)

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


def _as_source(image, laterality: str | None) -> _Source:
    if isinstance(image, (str, os.PathLike, Dataset)) and not _is_image_file(image):
        image = read_dicom(image)
    if isinstance(image, DicomImage):
        tag = image.laterality if image.laterality_source in ("ImageLaterality", "Laterality") else None
        return _Source(image.stored_pixels, image.calibrate, laterality or tag)
    array = _to_gray_array(image)
    return _Source(array, _unit_scaler(array), laterality)


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


def _resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(pixels.shape) == (height, width):
        return pixels
    resized = F.interpolate(pixels[None, None], size=(height, width), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized[0, 0]


def _fit(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize keeping the aspect ratio, then pad right / bottom with 0 (the chest wall stays left)."""
    scale = min(height / pixels.shape[0], width / pixels.shape[1])
    new_height = min(height, max(1, round(pixels.shape[0] * scale)))
    new_width = min(width, max(1, round(pixels.shape[1] * scale)))
    canvas = pixels.new_zeros((height, width))
    canvas[:new_height, :new_width] = _resize(pixels, new_height, new_width)
    return canvas


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


def _cut_tiles(crop: torch.Tensor, located: _Located, tile_height: int, tile_width: int, rows: int, cols: int,
               min_foreground: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution tiles of the oriented breast crop: pixels [T, h, w] in [0, 1], which grid cells
    the breast reaches [T], which hold enough breast (the mask) [T], and source boxes [T, 4]."""
    crop_height, crop_width = crop.shape
    scale = min(1.0, rows * tile_height / crop_height, cols * tile_width / crop_width)
    if scale < 1.0:
        crop = _resize(crop, min(rows * tile_height, max(1, round(crop_height * scale))),
                       min(cols * tile_width, max(1, round(crop_width * scale))))
    region = crop.numpy()
    region_height, region_width = region.shape
    # Region pixel -> crop pixel, per axis (exact even after rounding the scaled size).
    step_y, step_x = crop_height / region_height, crop_width / region_width
    tiles = np.zeros((rows * cols, tile_height, tile_width), dtype=np.float32)
    present = np.zeros(rows * cols, dtype=bool)
    mask = np.zeros(rows * cols, dtype=bool)
    boxes = np.zeros((rows * cols, 4), dtype=np.float32)
    box_x0, box_y0 = located.box[0], located.box[1]
    for i in range(math.ceil(region_height / tile_height)):
        # The last row / column is shifted back to end at the region's edge (overlap, not padding).
        top = min(i * tile_height, max(region_height - tile_height, 0))
        for j in range(math.ceil(region_width / tile_width)):
            left = min(j * tile_width, max(region_width - tile_width, 0))
            patch = region[top:top + tile_height, left:left + tile_width]
            index = i * cols + j
            tiles[index, :patch.shape[0], :patch.shape[1]] = patch
            present[index] = True
            mask[index] = np.count_nonzero(patch >= located.threshold) / (tile_height * tile_width) >= min_foreground
            boxes[index] = located.source_box(
                box_x0 + left * step_x, box_y0 + top * step_y,
                box_x0 + (left + patch.shape[1]) * step_x, box_y0 + (top + patch.shape[0]) * step_y)
    return tiles, present, mask, boxes


# ----------------------------------------------------------------------------------------------
# Training augmentation.


class MamaTrainTransform:
    """The paper's training augmentation (METHOD.md section 5), built from torchvision transforms v2.

    Random resized crop (scale 0.1-1.0) to the output size, horizontal and vertical flips (p=0.5),
    colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2, Gaussian blur (kernel 7,
    sigma 0.1-2.0) p=0.4, then normalisation. Input: an already oriented and cropped image (a
    16-bit PNG of the converted datasets as a PIL image, a numpy array or a tensor); output: float
    [3, H, W]. `seed` makes one call reproducible without touching the global RNG; without it the
    torch RNG is used (seeded per worker by the DataLoader).

    >>> transform = MamaTrainTransform(size=(32, 32))
    >>> image = np.random.default_rng(0).integers(0, 65535, (80, 50)).astype(np.uint16)
    >>> torch.equal(transform(image, seed=1), transform(image, seed=1))
    True
    """

    def __init__(self, size=PAPER_IMAGE_SIZE, image_mean=PAPER_IMAGE_MEAN, image_std=PAPER_IMAGE_STD,
                 augmentation: dict | None = None, do_normalize: bool = True):
        unknown = set(augmentation or {}) - set(PAPER_AUGMENTATION)
        if unknown:
            raise ValueError(
                f"Unknown augmentation keys {sorted(unknown)}; expected some of {sorted(PAPER_AUGMENTATION)}.")
        params = {**PAPER_AUGMENTATION, **(augmentation or {})}
        self.size = _size_pair(size, "size")
        self.params = params
        steps = [
            v2.RandomResizedCrop(self.size, scale=tuple(params["crop_scale"]), antialias=True),
            v2.RandomHorizontalFlip(params["horizontal_flip_p"]),
            v2.RandomVerticalFlip(params["vertical_flip_p"]),
            v2.RandomApply([v2.ColorJitter(*params["color_jitter"])], p=params["color_jitter_p"]),
            v2.RandomGrayscale(p=params["grayscale_p"]),
            v2.RandomApply([v2.GaussianBlur(params["blur_kernel_size"], sigma=tuple(params["blur_sigma"]))],
                           p=params["blur_p"]),
        ]
        if do_normalize:
            steps.append(v2.Normalize(list(image_mean), list(image_std)))
        self.transform = v2.Compose(steps)

    def __call__(self, image, *, seed: int | None = None) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.float32:
            image = torch.from_numpy(np.ascontiguousarray(to_unit_range(_to_gray_array(image))))
        return self.augment(image, seed=seed)

    def augment(self, pixels: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Augment float [H, W] (or [1, H, W] / [3, H, W]) pixels in [0, 1]."""
        if pixels.ndim == 2:
            pixels = pixels[None]
        if seed is None:
            return self._augment(pixels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._augment(pixels)

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        # Crop and resize one channel, then replicate: colour jitter needs three.
        first, *rest = self.transform.transforms
        cropped = first(pixels[:1] if pixels.shape[0] == 3 else pixels)
        return v2.Compose(rest)(cropped.repeat(3, 1, 1))


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
    augmentation: dict
    augment: bool
    seed: int
    laterality: Any
    return_geometry: bool


class MamaImageProcessor(ReleaseGuardMixin, BaseImageProcessor):
    r"""
    Turns mammograms (DICOM files, pydicom datasets, numpy arrays, torch tensors, PIL images in any
    mode including 16-bit I;16 / I; one image or a list) into MaMA model inputs.

    Args:
        mode: `"global"` (paper) returns `pixel_values` [B, 3, H, W]; `"tiles"` also returns
            `tile_pixel_values` [B, T, 3, h, w], `tile_mask` bool [B, T] and `tile_boxes` float [B, T, 4].
        size: output size of the global view (paper: 518x518).
        keep_aspect_ratio: fit the breast into `size` keeping its aspect ratio and pad right / bottom
            with black, instead of stretching it (paper: stretch).
        do_orient: flip so the chest wall is on the left (by laterality, checked against the pixel mass).
        do_crop_to_breast: crop to the Otsu-foreground bounding box before resizing (paper: on).
        do_normalize, image_mean, image_std: normalisation of the 3 channels (paper: 0.5, 0.5).
        tile_size: size of one tile (`None`: the same as `size`).
        tile_grid: `[rows, cols]`, the fixed tile grid, so T = rows * cols is the same for every image.
            Tiles are cut from the breast box at full resolution; a breast larger than the grid
            covers is scaled down (aspect kept) until it fits. Tile (i, j) is at index i * cols + j.
        min_tile_foreground: a tile whose share of Otsu-foreground pixels is below this is masked out.
        augmentation: overrides of `PAPER_AUGMENTATION` for `preprocess(..., augment=True)`.
        training_datasets: the data of the model this processor ships with (saved in its config);
            `push_to_hub` checks its licences (`hub.ReleaseGuardMixin`).
        no_breast: what to do with an image in which no breast is found (blank, constant or all
            background: its calibrated values span less than `MIN_BREAST_CONTRAST`, or the breast region
            covers less than `MIN_BREAST_FRACTION` of it): "warn" (`NoBreastWarning`, default),
            "error" (`NoBreastFoundError`) or "ignore".

    Tile outputs: `tile_boxes` are `(x0, y0, x1, y1)` in the pixel coordinates of the original
    image (before orientation and cropping). Grid cells the breast does not reach have
    `tile_mask=False` and zero pixels and boxes; cells it reaches keep their pixels and box, with
    `tile_mask` telling whether they hold enough breast.

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
        do_orient: bool = True,
        do_crop_to_breast: bool = True,
        do_normalize: bool = True,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        tile_size: int | list | dict | None = None,
        tile_grid: list[int] | None = None,
        min_tile_foreground: float = 0.05,
        augmentation: dict | None = None,
        training_datasets=None,
        no_breast: str = "warn",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.training_datasets = normalize_datasets(training_datasets)
        if no_breast not in NO_BREAST_ACTIONS:
            raise ValueError(f"no_breast={no_breast!r} is not one of {NO_BREAST_ACTIONS}.")
        self.no_breast = no_breast
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}.")
        height, width = _size_pair(PAPER_IMAGE_SIZE if size is None else size, "size")
        self.mode = mode
        self.size = {"height": height, "width": width}
        self.keep_aspect_ratio = bool(keep_aspect_ratio)
        self.do_orient = bool(do_orient)
        self.do_crop_to_breast = bool(do_crop_to_breast)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in (PAPER_IMAGE_MEAN if image_mean is None else image_mean)]
        self.image_std = [float(v) for v in (PAPER_IMAGE_STD if image_std is None else image_std)]
        if tile_size is None:
            self.tile_size = None
        else:
            tile_height, tile_width = _size_pair(tile_size, "tile_size")
            self.tile_size = {"height": tile_height, "width": tile_width}
        self.tile_grid = [int(v) for v in (tile_grid if tile_grid is not None else [6, 3])]
        if len(self.tile_grid) != 2 or min(self.tile_grid) < 1:
            raise ValueError(f"tile_grid must be [rows, cols] of positive ints, got {tile_grid!r}.")
        self.min_tile_foreground = float(min_tile_foreground)
        self.augmentation = dict(augmentation) if augmentation else None
        MamaTrainTransform(self.size, self.image_mean, self.image_std, self.augmentation)  # validates keys

    def train_transform(self) -> MamaTrainTransform:
        """The training augmentation for images that are already oriented and cropped (e.g. the
        converted datasets' 16-bit PNGs); use it in a torch Dataset's `__getitem__`."""
        return MamaTrainTransform(self.size, self.image_mean, self.image_std, self.augmentation, self.do_normalize)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images,
        *,
        mode: str | None = None,
        size=None,
        keep_aspect_ratio: bool | None = None,
        do_orient: bool | None = None,
        do_crop_to_breast: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        tile_size=None,
        tile_grid: list[int] | None = None,
        min_tile_foreground: float | None = None,
        laterality: str | list[str | None] | None = None,
        augment: bool = False,
        seed: int | None = None,
        return_geometry: bool = False,
        no_breast: str | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process one image or a list of images.

        Args (besides the constructor's, which override it for this call):
            laterality: "L" / "R" per image (or one value for all), e.g. from a dataset table; it
                takes precedence over DICOM tags and is still checked against the pixel mass.
            augment: apply the training augmentation (`train_transform`) to the breast crop instead
                of the evaluation resize. Training only; global mode only.
            seed: makes an augmented call reproducible.
            return_geometry: also return `crop_boxes` float [B, 4] (the breast box in original
                coordinates) and `flipped` bool [B], to map outputs back onto the source image.
            no_breast: "warn", "error" or "ignore" for an image in which no breast is found.
        """
        if kwargs:
            logger.warning_once(f"MamaImageProcessor ignores the arguments {sorted(kwargs)}.")
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}.")
        if augment and mode != "global":
            raise ValueError("augment=True is the paper's global-view augmentation; use mode='global'.")
        height, width = _size_pair(self.size if size is None else size, "size")
        keep_aspect_ratio = self.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
        do_orient = self.do_orient if do_orient is None else do_orient
        do_crop = self.do_crop_to_breast if do_crop_to_breast is None else do_crop_to_breast
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = self.image_mean if image_mean is None else list(image_mean)
        std = self.image_std if image_std is None else list(image_std)
        tile_size = tile_size if tile_size is not None else (self.tile_size or {"height": height, "width": width})
        tile_height, tile_width = _size_pair(tile_size, "tile_size")
        rows, cols = tile_grid if tile_grid is not None else self.tile_grid
        min_foreground = self.min_tile_foreground if min_tile_foreground is None else min_tile_foreground
        no_breast = getattr(self, "no_breast", "warn") if no_breast is None else no_breast
        if no_breast not in NO_BREAST_ACTIONS:
            raise ValueError(f"no_breast={no_breast!r} is not one of {NO_BREAST_ACTIONS}.")

        images = self._as_list(images)
        lateralities = laterality if isinstance(laterality, (list, tuple)) else [laterality] * len(images)
        if len(lateralities) != len(images):
            raise ValueError(f"Got {len(lateralities)} lateralities for {len(images)} images.")
        transform = MamaTrainTransform((height, width), mean, std, self.augmentation, do_normalize) if augment else None

        # Outputs are filled in place with numpy: one small torch op per image (the resize), since
        # multi-threaded torch calls on small tensors cost more than the arithmetic on a busy machine.
        count, tile_count = len(images), rows * cols
        pixel_values = np.zeros((count, 3, height, width), dtype=np.float32)
        augmented = []
        if mode == "tiles":
            tile_values = np.zeros((count, tile_count, 3, tile_height, tile_width), dtype=np.float32)
            tile_mask = np.zeros((count, tile_count), dtype=bool)
            tile_boxes = np.zeros((count, tile_count, 4), dtype=np.float32)
        crop_boxes, flipped = np.zeros((count, 4), dtype=np.float32), np.zeros(count, dtype=bool)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for index, (image, image_laterality) in enumerate(zip(images, lateralities)):
                try:
                    source = _as_source(image, image_laterality)
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
                    view = _fit(crop, height, width) if keep_aspect_ratio else _resize(crop, height, width)
                    _write_channels(pixel_values[index], view.numpy(), do_normalize, mean, std)
                if mode == "tiles":
                    tiles, present, tile_mask[index], tile_boxes[index] = _cut_tiles(
                        crop, located, tile_height, tile_width, rows, cols, min_foreground)
                    for tile in np.flatnonzero(present):
                        _write_channels(tile_values[index, tile], tiles[tile], do_normalize, mean, std)
                crop_boxes[index], flipped[index] = located.source_box(*located.box), located.flipped
        data = {"pixel_values": torch.stack(augmented) if augment else torch.from_numpy(pixel_values)}
        if mode == "tiles":
            data.update(tile_pixel_values=torch.from_numpy(tile_values), tile_mask=torch.from_numpy(tile_mask),
                        tile_boxes=torch.from_numpy(tile_boxes))
        if return_geometry:
            data.update(crop_boxes=torch.from_numpy(crop_boxes), flipped=torch.from_numpy(flipped))
        if return_tensors in (None, "pt"):
            return BatchFeature(data=data)
        return BatchFeature(data={key: value.numpy() for key, value in data.items()}, tensor_type=return_tensors)

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
    "PIXEL_MASS_MARGIN", "MamaImageProcessor", "NoBreastFoundError", "NoBreastWarning", "MamaTrainTransform", "breast_bbox", "crop_to_breast", "infer_laterality",
    "load_mammogram", "orient_breast", "otsu_threshold", "to_unit_range",
]
