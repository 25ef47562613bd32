"""A zero-shot pipeline for mammograms: DICOM files, arrays or whole exams in, per-class scores out.

transformers' stock `pipeline("zero-shot-image-classification")` works with a saved MaMA model, but it
loads images as 8-bit RGB and does not understand DICOM or exams. This pipeline (registered as
`"mammography-zero-shot"` when `modeling_mama` is imported) takes:

- one image: a DICOM path, a `pydicom.Dataset`, an image file path, a numpy array or a PIL image; or a
  dict `{"image": ..., "fields": {...}, "laterality": "L", "view": "CC"}`;
- one exam: `{"views": [image or dict, ...], "fields": {...}}` (fields shared by every view).

For each image it builds the paper's prompts (METHOD.md section 7): the image's own metadata sections
(from `fields`, or from the DICOM tags: laterality and view) followed by each class's sentences, and
scores `s * image . prompt`; scores are one softmax over the classes. For an exam it also returns
breast-level scores (the mean of that breast's view probabilities) and an exam-level score (the mean
of all views' probabilities); `aggregate="max"` instead takes the most suspicious view (binary tasks).

>>> from transformers import pipeline
>>> classifier = pipeline("mammography-zero-shot", model="path/to/mama")     # doctest: +SKIP
>>> classifier("exam/1-1.dcm", task="density")                            # doctest: +SKIP
[{'label': 'C', 'score': 0.61}, {'label': 'B', 'score': 0.22}, ...]
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from transformers import AutoModelForZeroShotImageClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .dicom import DicomImage, read_dicom
from .image_processing_mama import _is_image_file
from .reports import CLASS_NAMES, DATASET_COLUMNS, ZERO_SHOT_TASKS, ReportFields, zero_shot_prompts
from .tokenization import batch_tokenize_reports

TASK_NAME = "mammography-zero-shot"


def _fields(value: Any) -> ReportFields:
    if value is None:
        return ReportFields()
    if isinstance(value, ReportFields):
        return value
    if isinstance(value, Mapping):
        return ReportFields.from_mapping(value, DATASET_COLUMNS) if value else ReportFields()
    raise TypeError(f"fields must be a ReportFields or a mapping of report fields, got {type(value).__name__}.")


def _view(item: Any, shared: ReportFields) -> tuple[Any, ReportFields]:
    """One view: (image source for the image processor, its report fields)."""
    fields = shared
    if isinstance(item, Mapping):
        if "image" not in item:
            raise ValueError(f"A view given as a dict needs an 'image' key; got keys {sorted(item)}.")
        own = _fields(item.get("fields"))
        overrides = {key: item[key] for key in ("laterality", "view") if item.get(key) is not None}
        fields = ReportFields(**{**_merged(shared, own), **overrides})
        item = item["image"]
    if isinstance(item, Dataset) or (isinstance(item, str) and not _is_image_file(item)):
        item = read_dicom(item)
    if isinstance(item, DicomImage):
        from_tags = {"laterality": item.laterality, "view": item.view_position}
        fields = ReportFields(**{**{k: v for k, v in from_tags.items() if v}, **_merged(fields)})
    return item, fields


def _merged(*layers: ReportFields) -> dict[str, Any]:
    """Non-missing values of several ReportFields, later layers winning."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in vars(layer).items() if value is not None})
    return merged


class MammographyZeroShotPipeline(Pipeline):
    """Zero-shot BI-RADS / density / cancer scores for mammograms and exams; see the module docstring.

    Call arguments: `task` ("birads", "density" or "cancer"), `fields` (report fields shared by every
    view), `use_metadata` (paper: True), `aggregate` ("mean" or "max"), `max_length` (default 144).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, task=None, fields=None, use_metadata=None, aggregate=None, max_length=None,
                             **kwargs):
        preprocess: dict[str, Any] = {}
        if task is not None:
            if task not in ZERO_SHOT_TASKS:
                raise ValueError(f"task must be one of {ZERO_SHOT_TASKS}, got {task!r}.")
            preprocess["task"] = task
        if fields is not None:
            preprocess["fields"] = fields
        if use_metadata is not None:
            preprocess["use_metadata"] = use_metadata
        if max_length is not None:
            preprocess["max_length"] = max_length
        postprocess = {"aggregate": aggregate} if aggregate is not None else {}
        return preprocess, {}, postprocess

    def preprocess(self, inputs, task: str = "density", fields=None, use_metadata: bool = True,
                   max_length: int = 144):
        shared = _fields(fields)
        is_exam = isinstance(inputs, Mapping) and "views" in inputs
        if is_exam:
            shared = ReportFields(**_merged(shared, _fields(inputs.get("fields"))))
            items = list(inputs["views"])
            if not items:
                raise ValueError("An exam needs at least one view in 'views'.")
        else:
            items = [inputs]
        views = [_view(item, shared) for item in items]
        pixel_values = self.image_processor.preprocess(
            [source for source, _ in views], laterality=[view_fields.laterality for _, view_fields in views],
            return_tensors="pt",
        )["pixel_values"]
        prompts = [prompt for _, view_fields in views
                   for prompt in zero_shot_prompts(task, view_fields if use_metadata else None)]
        text = batch_tokenize_reports(prompts, self.tokenizer, max_length=max_length)
        return {
            "pixel_values": pixel_values, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
            "task": task, "is_exam": is_exam,
            "lateralities": [view_fields.laterality or "?" for _, view_fields in views],
            "view_names": [view_fields.view for _, view_fields in views],
        }

    def _forward(self, model_inputs):
        model = self.model
        pixel_values = model_inputs["pixel_values"].to(self.device, dtype=next(model.parameters()).dtype)
        image_embeds = F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
        text_embeds = F.normalize(model.get_text_features(model_inputs["input_ids"].to(self.device),
                                                          model_inputs["attention_mask"].to(self.device)).pooler_output, dim=-1)
        num_views = image_embeds.shape[0]
        text_embeds = text_embeds.reshape(num_views, -1, text_embeds.shape[-1])
        scale = model.clamped_scales()[0].exp()
        logits = scale * torch.einsum("vd,vcd->vc", image_embeds, text_embeds)
        return {**{key: value for key, value in model_inputs.items() if key not in ("pixel_values", "input_ids",
                                                                                   "attention_mask")},
                "logits": logits}

    def postprocess(self, model_outputs, aggregate: str = "mean"):
        names = CLASS_NAMES[model_outputs["task"]]
        probabilities = model_outputs["logits"].float().softmax(dim=-1).cpu().numpy()
        per_image = [_ranked(names, row) for row in probabilities]
        if not model_outputs["is_exam"]:
            return per_image[0]
        breast_ids, breast_scores = aggregate_scores(probabilities, model_outputs["lateralities"], how=aggregate)
        _, exam_scores = aggregate_scores(probabilities, ["exam"] * len(probabilities), how=aggregate)
        return {
            "images": [{"laterality": side, "view": view, "scores": scores} for side, view, scores in
                       zip(model_outputs["lateralities"], model_outputs["view_names"], per_image)],
            "breasts": {str(breast): _ranked(names, row) for breast, row in zip(breast_ids, breast_scores)},
            "exam": _ranked(names, exam_scores[0]),
        }


def _factorize(values: np.ndarray) -> tuple[list, np.ndarray]:
    """Unique values in order of first appearance, and each value's index among them."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(value, len(index)) for value in values), dtype=np.intp, count=len(values))
    return list(index), codes


def aggregate_scores(scores: Any, group_ids: Any, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Image-level scores -> one score per group (breast, exam), groups in order of first appearance.

    `scores` is [N] (a positive-class score) or [N, C] (class scores). `how="mean"` averages each
    class column. `how="max"` takes the highest positive score: for [N] scores the maximum; for binary
    [N, 2] scores the maximum of column 1, with column 0 set to 1 minus it (a breast is as suspicious
    as its most suspicious image). "max" is not defined for more than two classes.

    >>> ids, breast_scores = aggregate_scores([0.2, 0.6, 0.9], ["p1_L", "p1_L", "p1_R"], how="max")
    >>> ids.tolist(), breast_scores.tolist()
    (['p1_L', 'p1_R'], [0.6, 0.9])
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}.")
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



def _ranked(names, scores: np.ndarray) -> list[dict[str, Any]]:
    return sorted(({"label": name, "score": float(score)} for name, score in zip(names, scores)),
                  key=lambda entry: -entry["score"])


def normalized_image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised global image embeddings [B, D]: where zero-shot scoring reads the image tower."""
    return F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)


class ZeroShotScorer:
    """Zero-shot class probabilities for batches of mammograms (the pipeline's scores, for many images).

    Each image is scored against its own prompts (METHOD.md section 7: its metadata sections, then each
    class's sentences) as `s * image . prompt`, with one softmax over the classes. Images and prompts
    both go through the processor. The prompts of each distinct metadata prefix are encoded once and
    kept (up to `cache_size` prefixes, the least recently used dropped first): the views of a folder
    share few prefixes (procedure, age, side, view), and the text tower (a 2.7B-parameter LLM in the
    paper) costs more than the image tower.

    >>> scorer = ZeroShotScorer(model, processor, "density")                                  # doctest: +SKIP
    >>> scorer([read_dicom("L-CC.dcm")], [ReportFields(laterality="L", view="CC", age=61)])  # doctest: +SKIP
    array([[0.08, 0.61, 0.22, 0.09]], dtype=float32)
    """

    def __init__(self, model, processor, task: str, *, use_metadata: bool = True, max_length: int | None = None,
                 cache_size: int = 4096):
        if task not in ZERO_SHOT_TASKS:
            raise ValueError(f"task must be one of {ZERO_SHOT_TASKS}, got {task!r}.")
        self.model = model.eval()
        self.processor = processor
        self.task = task
        self.class_names = list(CLASS_NAMES[task])
        self.use_metadata = use_metadata
        self.max_length = max_length
        self.cache_size = int(cache_size)
        self._prompt_embeddings: OrderedDict[tuple | None, torch.Tensor] = OrderedDict()

    def preprocess(self, images: Sequence[Any], fields: Sequence[ReportFields | None]) -> torch.Tensor:
        """`pixel_values` of images (DICOM paths or `DicomImage`s, arrays, ...), each oriented by its laterality."""
        lateralities = [None if image_fields is None else image_fields.laterality for image_fields in fields]
        return self.processor(images=list(images), laterality=lateralities)["pixel_values"]

    @torch.no_grad()
    def prompt_embeddings(self, fields: Sequence[ReportFields | None]) -> torch.Tensor:
        """L2-normalised class prompt embeddings [N, C, D], one set per image's report fields."""
        keys = [self._key(image_fields) for image_fields in fields]
        new = {key: image_fields for key, image_fields in zip(keys, fields) if key not in self._prompt_embeddings}
        if new:
            prompts = [prompt for image_fields in new.values()
                       for prompt in zero_shot_prompts(self.task, image_fields if self.use_metadata else None)]
            text = self.processor(text=prompts, max_length=self.max_length)
            device = next(self.model.parameters()).device
            features = F.normalize(self.model.get_text_features(text["input_ids"].to(device),
                                                                text["attention_mask"].to(device)).pooler_output,
                                   dim=-1)
            for key, embeddings in zip(new, features.reshape(len(new), len(self.class_names), -1)):
                self._prompt_embeddings[key] = embeddings
        for key in keys:
            self._prompt_embeddings.move_to_end(key)
        stacked = torch.stack([self._prompt_embeddings[key] for key in keys])
        while len(self._prompt_embeddings) > max(self.cache_size, len(set(keys))):
            self._prompt_embeddings.popitem(last=False)
        return stacked

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor, fields: Sequence[ReportFields | None]) -> torch.Tensor:
        """Class logits [N, C] of preprocessed images and their report fields."""
        if len(pixel_values) != len(fields):
            raise ValueError(f"Got {len(pixel_values)} images but {len(fields)} report fields; give one per image.")
        parameter = next(self.model.parameters())
        image_embeds = normalized_image_features(self.model, pixel_values.to(parameter.device, dtype=parameter.dtype))
        prompt_embeds = self.prompt_embeddings(fields).to(image_embeds.dtype)
        scale = self.model.clamped_scales()[0].exp()
        return scale * torch.einsum("nd,ncd->nc", image_embeds, prompt_embeds)

    def __call__(self, images: Sequence[Any], fields: Sequence[ReportFields | None]) -> np.ndarray:
        """Class probabilities [N, C] (float32; columns in `class_names` order) of images and their fields."""
        logits = self.logits(self.preprocess(images, fields), fields)
        return logits.float().softmax(dim=-1).cpu().numpy()

    def _key(self, fields: ReportFields | None) -> tuple | None:
        if fields is not None and not isinstance(fields, ReportFields):
            raise TypeError(f"fields must be ReportFields or None, got {type(fields).__name__}.")
        return dataclasses.astuple(fields) if self.use_metadata and fields is not None else None


PIPELINE_REGISTRY.register_pipeline(
    TASK_NAME, pipeline_class=MammographyZeroShotPipeline, pt_model=AutoModelForZeroShotImageClassification,
    type="multimodal",
)

__all__ = [
    "MammographyZeroShotPipeline", "TASK_NAME", "ZeroShotScorer", "aggregate_scores", "normalized_image_features",
]
