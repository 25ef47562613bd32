"""Zero-shot class scores of mammograms: the one scorer behind the pipeline, batch prediction and the
dataset evaluation.

The paper's protocol (METHOD.md section 7): for each image and class, the prompt is the image's own
metadata sections (procedure, reason, patient info, image info; from its `ReportFields`) followed by
the class's sentences; the class logit is `s * image_embed . prompt_embed` (s the model's clamped
`logit_scale`), the prediction its argmax. With `use_metadata=False` (or no fields) every image
shares one class-only prompt per class. Extra phrasings per class (`prompt_variants`, prompt
ensembling, 0 in the paper) are averaged in embedding space.

Images and prompts both go through the processor (`processor(images=...)`, `processor(text=...)`).
The prompts of each distinct metadata prefix are encoded once and kept (up to `cache_size`
prefixes, the least recently used dropped first): the views of a folder share few prefixes
(procedure, age, side, view), and the text tower (a 2.7B-parameter LLM in the paper) costs more than
the image tower.

**Tiles** (the multi-scale extension; `tiles=True`): the processor also cuts each image's breast into
full-resolution tiles, every tile holding breast is scored against the image's class prompts like a
global view, and the image's class probabilities aggregate its tiles' (`tile_aggregation`):

- `"max"` for finding-present tasks (`labels.Task.finding_present`: cancer): an image is as suspicious
  as its most suspicious tile, P(positive) = max over its tiles, P(negative) = 1 - that; a finding too
  small for the 518 view can drive the image score. Defined for binary tasks.
- `"mean"` otherwise (BI-RADS, density: properties of the whole breast): the mean of the tiles'
  class probabilities.

Tiled logits are the log of the aggregated probabilities (a softmax gives them back). An image with no
tile holding breast keeps its global-view logits.

>>> default_tile_aggregation("cancer"), default_tile_aggregation("density")
('max', 'mean')
>>> ids, breast_scores = aggregate_scores([0.2, 0.6, 0.9], ["p1_L", "p1_L", "p1_R"], how="max")
>>> ids.tolist(), breast_scores.tolist()
(['p1_L', 'p1_R'], [0.6, 0.9])
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature

from .labels import get_task
from .reports import ZERO_SHOT_TASKS, ReportFields, zero_shot_prompt_variants, zero_shot_prompts
from .tokenization import TRUNCATION_MODES

AGGREGATIONS = ("mean", "max")


def default_tile_aggregation(task: str) -> str:
    """How an image's tile scores become its score: "max" for finding-present tasks, else "mean"."""
    return "max" if get_task(task).finding_present else "mean"


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


def normalized_image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised global image embeddings [B, D]: where zero-shot scoring reads the image tower."""
    return F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)


def concatenate_inputs(batches: Sequence[Mapping[str, torch.Tensor]]) -> BatchFeature:
    """Several `ZeroShotScorer.preprocess` outputs (e.g. one per file) as one batch."""
    if not batches:
        raise ValueError("concatenate_inputs got no batches.")
    return BatchFeature(data={key: torch.cat([batch[key] for batch in batches]) for key in batches[0]})


class ZeroShotScorer:
    """Zero-shot class logits / probabilities of mammograms for one task; see the module docstring.

    Args:
        model: a `MamaModel`.
        processor: its `MamaProcessor` (images and prompts both go through it).
        task: "birads", "density" or "cancer" (`labels.TASKS`).
        use_metadata: prefix each image's prompts with its metadata sections (paper); False: class-only.
        prompt_variants: extra phrasings per class, averaged in embedding space (0 in the paper).
        tiles: score full-resolution tiles and aggregate them per image.
        tile_aggregation: "max" or "mean" (default: max for finding-present tasks, else mean).
        max_length: the prompts' token budget (default: the processor's saved `max_length`).
        truncation: "error" (default) or "warn" for a prompt over the budget (see `MamaProcessor`).
        cache_size: prompt prefixes whose embeddings are kept.
        chunk_size: prompts / tiles encoded per forward pass.

    >>> scorer = ZeroShotScorer(model, processor, "density")                                  # doctest: +SKIP
    >>> scorer([read_dicom("L-CC.dcm")], [ReportFields(laterality="L", view="CC", age=61)])  # doctest: +SKIP
    array([[0.08, 0.61, 0.22, 0.09]], dtype=float32)
    """

    def __init__(self, model, processor, task: str, *, use_metadata: bool = True, prompt_variants: int = 0,
                 tiles: bool = False, tile_aggregation: str | None = None, max_length: int | None = None,
                 truncation: str = "error", cache_size: int = 4096, chunk_size: int = 64):
        if task not in ZERO_SHOT_TASKS:
            raise ValueError(f"task must be one of {ZERO_SHOT_TASKS}, got {task!r}.")
        self.task = task
        self.class_names = list(get_task(task).class_names)
        if tile_aggregation is not None and tile_aggregation not in AGGREGATIONS:
            raise ValueError(f"tile_aggregation must be one of {AGGREGATIONS}, got {tile_aggregation!r}.")
        self.tile_aggregation = default_tile_aggregation(task) if tile_aggregation is None else tile_aggregation
        if self.tile_aggregation == "max" and len(self.class_names) != 2:
            raise ValueError(f"tile_aggregation='max' is for finding-present (binary) tasks; the {task} task has "
                             f"{len(self.class_names)} classes: use 'mean'.")
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}.")
        zero_shot_prompt_variants(task, None, prompt_variants)  # checks the count
        self.model = model.eval()
        self.processor = processor
        self.use_metadata, self.prompt_variants, self.tiles = use_metadata, int(prompt_variants), bool(tiles)
        self.max_length, self.truncation = max_length, truncation
        self.cache_size, self.chunk_size = int(cache_size), int(chunk_size)
        self._prompt_embeddings: OrderedDict[tuple | None, torch.Tensor] = OrderedDict()

    def preprocess(self, images: Sequence[Any], fields: Sequence[ReportFields | None] | None = None,
                   **image_kwargs) -> BatchFeature:
        """Image inputs of images (DICOM paths or `DicomImage`s, arrays, PIL images...): `pixel_values`
        (and the tiles when tiled), each image oriented by its fields' laterality unless `laterality=`
        is given. `image_kwargs` go to the image processor (e.g. `do_orient=False` for stored images)."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if "laterality" not in image_kwargs and fields is not None:
            image_kwargs["laterality"] = [None if image_fields is None else image_fields.laterality
                                          for image_fields in fields]
        return self.processor(images=images, mode="tiles" if self.tiles else "global", **image_kwargs)

    def prompts(self, fields: ReportFields | None) -> list[list[list[str]]]:
        """The class prompts of one image, one set per phrasing: [phrasing][class] -> sentences."""
        prefix = fields if self.use_metadata else None
        return [zero_shot_prompts(self.task, prefix), *zero_shot_prompt_variants(self.task, prefix, self.prompt_variants)]

    @torch.no_grad()
    def prompt_embeddings(self, fields: Sequence[ReportFields | None]) -> torch.Tensor:
        """L2-normalised class prompt embeddings [N, C, D], one set per image's report fields (phrasings
        averaged)."""
        keys = [self._key(image_fields) for image_fields in fields]
        new = {key: image_fields for key, image_fields in zip(keys, fields) if key not in self._prompt_embeddings}
        if new:
            prompts = [prompt for image_fields in new.values() for phrasing in self.prompts(image_fields)
                       for prompt in phrasing]
            text = self.processor(text=prompts, max_length=self.max_length, truncation=self.truncation)
            device = next(self.model.parameters()).device
            features = torch.cat([
                F.normalize(self.model.get_text_features(
                    text["input_ids"][start:start + self.chunk_size].to(device),
                    text["attention_mask"][start:start + self.chunk_size].to(device)).pooler_output.float(), dim=-1)
                for start in range(0, len(prompts), self.chunk_size)
            ])
            features = features.reshape(len(new), 1 + self.prompt_variants, len(self.class_names), -1)
            for key, embeddings in zip(new, F.normalize(features.mean(dim=1), dim=-1)):
                self._prompt_embeddings[key] = embeddings
        for key in keys:
            self._prompt_embeddings.move_to_end(key)
        stacked = torch.stack([self._prompt_embeddings[key] for key in keys])
        while len(self._prompt_embeddings) > max(self.cache_size, len(set(keys))):
            self._prompt_embeddings.popitem(last=False)
        return stacked

    @torch.no_grad()
    def logits(self, inputs: Mapping[str, torch.Tensor] | torch.Tensor,
               fields: Sequence[ReportFields | None] | None) -> torch.Tensor:
        """Class logits [N, C] (float32) of preprocessed images (`preprocess`'s output, or a bare
        `pixel_values` tensor: global views only) and their report fields."""
        if isinstance(inputs, torch.Tensor):
            inputs = {"pixel_values": inputs}
        pixel_values = inputs["pixel_values"]
        fields = [None] * len(pixel_values) if fields is None else list(fields)
        if len(pixel_values) != len(fields):
            raise ValueError(f"Got {len(pixel_values)} images but {len(fields)} report fields; give one per image.")
        parameter = next(self.model.parameters())
        prompt_embeds = self.prompt_embeddings(fields).to(parameter.device)
        scale = self.model.clamped_scales()[0].exp().float()
        image_embeds = self._image_embeds(pixel_values, parameter)
        logits = scale * torch.einsum("nd,ncd->nc", image_embeds, prompt_embeds)
        if self.tiles and "tile_pixel_values" in inputs:
            tile_mask = inputs["tile_mask"].bool()
            owners = tile_mask.nonzero()[:, 0]
            if len(owners):
                tile_embeds = self._image_embeds(inputs["tile_pixel_values"][tile_mask], parameter)
                tile_logits = scale * torch.einsum("td,tcd->tc", tile_embeds, prompt_embeds[owners.to(parameter.device)])
                images, aggregated = aggregate_scores(tile_logits.softmax(-1), owners.tolist(), how=self.tile_aggregation)
                aggregated = torch.as_tensor(aggregated, dtype=torch.float32, device=logits.device)
                logits[torch.as_tensor(images.astype(np.int64), device=logits.device)] = aggregated.clamp_min(1e-12).log()
        return logits

    def _image_embeds(self, pixel_values: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            normalized_image_features(self.model, pixel_values[start:start + self.chunk_size].to(
                parameter.device, dtype=parameter.dtype)).float()
            for start in range(0, len(pixel_values), self.chunk_size)
        ])

    def __call__(self, images: Sequence[Any], fields: Sequence[ReportFields | None] | None = None,
                 **image_kwargs) -> np.ndarray:
        """Class probabilities [N, C] (float32; columns in `class_names` order) of images and their fields."""
        logits = self.logits(self.preprocess(images, fields, **image_kwargs), fields)
        return logits.float().softmax(dim=-1).cpu().numpy()

    def _key(self, fields: ReportFields | None) -> tuple | None:
        if fields is not None and not isinstance(fields, ReportFields):
            raise TypeError(f"fields must be ReportFields or None, got {type(fields).__name__}.")
        return dataclasses.astuple(fields) if self.use_metadata and fields is not None else None


__all__ = [
    "AGGREGATIONS", "ZeroShotScorer", "aggregate_scores", "concatenate_inputs", "default_tile_aggregation",
    "normalized_image_features",
]
