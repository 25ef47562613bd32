"""Zero-shot class scores of mammograms: the one scorer behind the pipeline and the dataset evaluation.

The paper's protocol (METHOD.md section 7): for each image and class, the prompt is the image's own
metadata sections (procedure, reason, patient info, image info; from `fields`) followed by the
class's sentences; the class logit is `s * image_embed . prompt_embed` (s the model's clamped
`logit_scale`), the prediction its argmax. Without per-image fields (or with `use_metadata=False`)
every image shares one class-only prompt per class. Extra phrasings per class (`prompt_variants`,
prompt ensembling, 0 in the paper) are averaged in embedding space.

Inputs come from the processor in one call, `processor(images=..., text=prompts)`: texts are
independent of the images (CLIP-style), so N images and C classes need C prompts (class-only) or
N * C (with each image's metadata).

**Tiles** (the multi-scale extension; `tiles=True`): the processor also cuts each image's breast into
full-resolution tiles, every tile holding breast is scored against the class prompts like a global
view, and the image's class probabilities aggregate its tiles' (`TILE_AGGREGATION`, or
`tile_aggregation=`):

- `"max"` for finding-present tasks (cancer): an image is as suspicious as its most suspicious tile,
  P(positive) = max over its tiles, P(negative) = 1 - that; a finding too small for the 518 view
  can drive the image score. Defined for binary tasks.
- `"mean"` otherwise (BI-RADS, density: properties of the whole breast): the mean of the tiles'
  class probabilities.

Tiled logits are the log of the aggregated probabilities (a softmax gives them back). An image with no
tile holding breast keeps its global-view logits.

>>> TILE_AGGREGATION["cancer"], TILE_AGGREGATION["density"]
('max', 'mean')
>>> ids, breast_scores = aggregate_scores([0.2, 0.6, 0.9], ["p1_L", "p1_L", "p1_R"], how="max")
>>> ids.tolist(), breast_scores.tolist()
(['p1_L', 'p1_R'], [0.6, 0.9])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature

from .reports import DATASET_COLUMNS, ZERO_SHOT_TASKS, ReportFields, zero_shot_prompt_variants, zero_shot_prompts

AGGREGATIONS = ("mean", "max")
# How an image's tile scores become its score, per task (module docstring).
TILE_AGGREGATION = {"birads": "mean", "density": "mean", "cancer": "max"}


def aggregate_scores(scores: Any, group_ids: Any, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Scores of parts -> one score per group (tiles -> image, images -> breast or exam), groups in order
    of first appearance.

    `scores` is [N] (a positive-class score) or [N, C] (class scores). `how="mean"` averages each
    class column. `how="max"` takes the highest positive score: for [N] scores the maximum; for binary
    [N, 2] scores the maximum of column 1, with column 0 set to 1 minus it (a breast is as suspicious
    as its most suspicious image). "max" is not defined for more than two classes.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}.")
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    group_ids = np.asarray(list(group_ids), dtype=object)
    if scores.ndim not in (1, 2) or group_ids.ndim != 1 or len(scores) != len(group_ids):
        raise ValueError(f"scores ({scores.shape}) must be [N] or [N, C] with one group id per row "
                         f"(got {group_ids.shape[0] if group_ids.ndim else 0} ids).")
    if how == "max" and scores.ndim == 2 and scores.shape[1] != 2:
        raise ValueError(f"how='max' needs positive-class scores ([N] or binary [N, 2]), got {scores.shape[1]} "
                         "classes; use how='mean' for multiclass scores.")
    unique_ids, codes = _factorize(group_ids)
    num_groups = len(unique_ids)
    if how == "mean":
        sums = np.zeros((num_groups,) + scores.shape[1:])
        np.add.at(sums, codes, scores)
        counts = np.bincount(codes, minlength=num_groups).astype(np.float64)
        aggregated = sums / (counts[:, None] if scores.ndim == 2 else counts)
    else:
        positive = scores[:, 1] if scores.ndim == 2 else scores
        highest = np.full(num_groups, -np.inf)
        np.maximum.at(highest, codes, positive)
        aggregated = np.stack([1.0 - highest, highest], axis=1) if scores.ndim == 2 else highest
    return np.asarray(unique_ids, dtype=object), aggregated


def _factorize(values: np.ndarray) -> tuple[list, np.ndarray]:
    """Unique values in order of first appearance, and each value's index among them."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(value, len(index)) for value in values), dtype=np.intp, count=len(values))
    return list(index), codes


@dataclass
class ZeroShotBatch:
    """Processor outputs for zero-shot scoring, and how the prompts are laid out.

    `inputs` holds `pixel_values` (and `tile_pixel_values` / `tile_mask` when tiled) for the N images,
    and `input_ids` / `attention_mask` for the prompts, ordered [phrasing][image or 1][class].
    """

    inputs: BatchFeature
    task: str
    num_images: int
    num_classes: int
    num_phrasings: int
    per_image_prompts: bool
    tiles: bool


def _as_fields(value, index: int | None = None) -> ReportFields | None:
    if value is None or isinstance(value, ReportFields):
        return value
    if isinstance(value, Mapping):
        return ReportFields.from_mapping(value, DATASET_COLUMNS)
    where = "fields" if index is None else f"fields[{index}]"
    raise TypeError(f"{where} must be ReportFields, a mapping of report fields or None, got {type(value).__name__}.")


def zero_shot_batch(processor, images, task: str, *, fields=None, use_metadata: bool = True,
                    prompt_variants: int = 0, tiles: bool = False, max_length: int | None = None,
                    truncation: str = "error", **image_kwargs) -> ZeroShotBatch:
    """The processor call for scoring `images` (one or a list) on `task`.

    Args:
        processor: a `MamaProcessor`.
        fields: report fields for the prompts' metadata prefix: one `ReportFields` / mapping shared by
            every image, or one per image (None entries: no prefix for that image).
        use_metadata: prefix the prompts with the metadata (paper); False: class-only prompts.
        prompt_variants: extra phrasings per class, averaged in embedding space.
        tiles: also cut each image into tiles (`MamaImageProcessor` tiles mode) for tiled scoring.
        max_length: the prompts' token budget (default: the processor's saved `max_length`).
        truncation: "error" (default) or "warn" (see `MamaProcessor`).
        image_kwargs: image processor options (`laterality=`, `do_orient=`, `do_crop_to_breast=`, ...).
    """
    if task not in ZERO_SHOT_TASKS:
        raise ValueError(f"task must be one of {ZERO_SHOT_TASKS}, got {task!r}.")
    if "mode" in image_kwargs:
        raise TypeError("zero_shot_batch chooses the image mode from tiles=; do not pass mode=.")
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ValueError("zero_shot_batch got no images.")
    if isinstance(fields, (list, tuple)):
        if len(fields) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(fields)} fields; give one per image, or one shared.")
        per_image = [_as_fields(value, index) for index, value in enumerate(fields)]
    else:
        per_image = None
        shared = _as_fields(fields)
    if not use_metadata:
        per_image, shared = None, None
    prompt_sources = per_image if per_image is not None else [shared]
    phrasings = [[zero_shot_prompts(task, image_fields) for image_fields in prompt_sources]]
    if prompt_variants > 0:
        variants = [zero_shot_prompt_variants(task, image_fields, prompt_variants) for image_fields in prompt_sources]
        phrasings += [[image_variants[k] for image_variants in variants] for k in range(prompt_variants)]
    prompts = [prompt for phrasing in phrasings for image_prompts in phrasing for prompt in image_prompts]
    inputs = processor(images=images, text=prompts, mode="tiles" if tiles else "global",
                       max_length=max_length, truncation=truncation, **image_kwargs)
    return ZeroShotBatch(inputs=inputs, task=task, num_images=len(images), num_classes=len(phrasings[0][0]),
                         num_phrasings=len(phrasings), per_image_prompts=per_image is not None, tiles=tiles)


@torch.no_grad()
def zero_shot_logits(model, batch: ZeroShotBatch, *, tile_aggregation: str | None = None,
                     chunk_size: int = 64) -> torch.Tensor:
    """Class logits [N, C] (float32, CPU) of a `ZeroShotBatch`; see the module docstring.

    `tile_aggregation` ("mean" or "max"; default `TILE_AGGREGATION[task]`) applies to tiled batches.
    Prompts and tiles are encoded `chunk_size` at a time.
    """
    how = TILE_AGGREGATION[batch.task] if tile_aggregation is None else tile_aggregation
    if how not in AGGREGATIONS:
        raise ValueError(f"tile_aggregation must be one of {AGGREGATIONS}, got {tile_aggregation!r}.")
    if how == "max" and batch.num_classes != 2:
        raise ValueError(f"tile_aggregation='max' is for finding-present (binary) tasks; the {batch.task} task has "
                         f"{batch.num_classes} classes: use 'mean'.")
    model.eval()
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    inputs = batch.inputs

    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    text_embeds = torch.cat([
        F.normalize(model.get_text_features(input_ids[start:start + chunk_size].to(device),
                                            attention_mask[start:start + chunk_size].to(device)).pooler_output.float(),
                    dim=-1)
        for start in range(0, len(input_ids), chunk_size)
    ])
    prompt_images = batch.num_images if batch.per_image_prompts else 1
    class_embeds = text_embeds.reshape(batch.num_phrasings, prompt_images, batch.num_classes, -1)
    class_embeds = F.normalize(class_embeds.mean(dim=0), dim=-1).expand(batch.num_images, -1, -1)

    scale = model.clamped_scales()[0].exp().float()
    image_embeds = _image_embeds(model, inputs["pixel_values"], device, dtype, chunk_size)
    logits = scale * torch.einsum("nd,ncd->nc", image_embeds, class_embeds)
    if batch.tiles:
        tile_mask = inputs["tile_mask"].bool()
        owners = tile_mask.nonzero()[:, 0].to(device)
        if len(owners):
            tile_embeds = _image_embeds(model, inputs["tile_pixel_values"][tile_mask], device, dtype, chunk_size)
            tile_probabilities = (scale * torch.einsum("td,tcd->tc", tile_embeds, class_embeds[owners])).softmax(-1)
            images, aggregated = aggregate_scores(tile_probabilities, owners.tolist(), how=how)
            aggregated = torch.as_tensor(aggregated, dtype=torch.float32, device=device)
            logits[torch.as_tensor(images.astype(np.int64), device=device)] = aggregated.clamp_min(1e-12).log()
    return logits.cpu()


def _image_embeds(model, pixel_values: torch.Tensor, device, dtype, chunk_size: int) -> torch.Tensor:
    return torch.cat([
        F.normalize(model.get_image_features(pixel_values[start:start + chunk_size].to(device, dtype)).pooler_output
                    .float(), dim=-1)
        for start in range(0, len(pixel_values), chunk_size)
    ])


def zero_shot_classify(model, processor, images, task: str, *, tile_aggregation: str | None = None,
                       **kwargs) -> torch.Tensor:
    """Class logits [N, C] of `images` on `task`: `zero_shot_logits(model, zero_shot_batch(...))`.

    Keyword arguments are `zero_shot_batch`'s (`fields`, `use_metadata`, `prompt_variants`, `tiles`,
    `max_length`, `truncation`, image options).
    """
    return zero_shot_logits(model, zero_shot_batch(processor, images, task, **kwargs),
                            tile_aggregation=tile_aggregation)


__all__ = [
    "AGGREGATIONS", "TILE_AGGREGATION", "ZeroShotBatch", "aggregate_scores", "zero_shot_batch",
    "zero_shot_classify", "zero_shot_logits",
]
