"""A zero-shot pipeline for mammograms: DICOM files, arrays or whole exams in, per-class scores out.

transformers' stock `pipeline("zero-shot-image-classification")` works with a saved MaMA model, but it
loads images as 8-bit RGB and does not understand DICOM or exams. This pipeline (registered as
`"mammography-zero-shot"` when `modeling_mama` is imported) takes:

- one image: a DICOM path, a `pydicom.Dataset`, an image file path, a numpy array or a PIL image; or a
  dict `{"image": ..., "fields": {...}, "laterality": "L", "view": "CC"}`;
- one exam: `{"views": [image or dict, ...], "fields": {...}}` (fields shared by every view).

For each image it builds the paper's prompts (METHOD.md section 7): the image's own metadata sections
(from `fields`, or from the DICOM tags: laterality and view) followed by each class's sentences, and
scores `s * image . prompt` with `zero_shot_scoring` (the scorer the dataset evaluation uses too; the
model's processor prepares every input, with its saved token budget); scores are one softmax over the
classes. For an exam it also returns breast-level scores (the mean of that breast's view
probabilities) and an exam-level score (the mean of all views' probabilities); `aggregate="max"`
instead takes the most suspicious view (binary tasks).

`tiles=True` scores every breast tile at full resolution and aggregates the tiles per image (max for
cancer, mean for BI-RADS and density; `tile_aggregation=` overrides): see `zero_shot_scoring`.

>>> from transformers import pipeline
>>> classifier = pipeline("mammography-zero-shot", model="path/to/mama")     # doctest: +SKIP
>>> classifier("exam/1-1.dcm", task="density")                            # doctest: +SKIP
[{'label': 'C', 'score': 0.61}, {'label': 'B', 'score': 0.22}, ...]
>>> classifier("exam/1-1.dcm", task="cancer", tiles=True)                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from transformers import AutoModelForZeroShotImageClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .dicom import DicomImage, read_dicom
from .image_processing_mama import _is_image_file
from .processing_mama import MamaProcessor
from .reports import CLASS_NAMES, DATASET_COLUMNS, ZERO_SHOT_TASKS, ReportFields
from .tokenization import TRUNCATION_MODES
# ZeroShotScorer, aggregate_scores and normalized_image_features live in zero_shot_scoring (re-exported here).
from .zero_shot_scoring import AGGREGATIONS, ZeroShotScorer, aggregate_scores, normalized_image_features

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
    view), `use_metadata` (paper: True), `aggregate` ("mean" or "max": views -> breast and exam),
    `tiles` (score full-resolution tiles, default False), `tile_aggregation` ("mean" or "max": tiles
    -> image; default max for cancer, mean otherwise), `max_length` (default: the processor's saved
    budget), `truncation` ("error" or "warn"), `no_breast` ("warn": a `NoBreastWarning` names an image in which no
    breast is found, e.g. a blank or all-background one, whose scores mean nothing; "error" refuses it;
    "ignore").
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            # Built by hand from its parts: the processor is still the one path to model inputs.
            if self.image_processor is None or self.tokenizer is None:
                raise ValueError("The mammography pipeline needs the model's MamaProcessor (or its image processor "
                                 "and tokenizer).")
            self.processor = MamaProcessor(self.image_processor, self.tokenizer)
        self._scorers: dict[tuple, ZeroShotScorer] = {}  # per task and settings: they cache prompt embeddings

    def _sanitize_parameters(self, task=None, fields=None, use_metadata=None, aggregate=None, max_length=None,
                             tiles=None, tile_aggregation=None, truncation=None, no_breast=None, **kwargs):
        for name, value, allowed in (("task", task, ZERO_SHOT_TASKS), ("truncation", truncation, TRUNCATION_MODES),
                                     ("tile_aggregation", tile_aggregation, AGGREGATIONS),
                                     ("aggregate", aggregate, AGGREGATIONS)):
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        given = {"no_breast": no_breast, "task": task, "fields": fields, "use_metadata": use_metadata,
                 "max_length": max_length, "truncation": truncation,
                 "tiles": None if tiles is None else bool(tiles), "tile_aggregation": tile_aggregation}
        preprocess = {name: value for name, value in given.items() if value is not None}
        postprocess = {"aggregate": aggregate} if aggregate is not None else {}
        return preprocess, {}, postprocess

    def scorer(self, task: str, **settings) -> ZeroShotScorer:
        """The `ZeroShotScorer` for a task and settings, kept between calls (it caches prompt embeddings)."""
        key = (task, *sorted(settings.items()))
        if key not in self._scorers:
            self._scorers[key] = ZeroShotScorer(self.model, self.processor, task, **settings)
        return self._scorers[key]

    def preprocess(self, inputs, task: str = "density", fields=None, use_metadata: bool = True,
                   max_length: int | None = None, truncation: str = "error", tiles: bool = False,
                   tile_aggregation: str | None = None, no_breast: str | None = None):
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
        scorer = self.scorer(task, use_metadata=use_metadata, max_length=max_length, truncation=truncation,
                             tiles=tiles, tile_aggregation=tile_aggregation)
        view_fields = [fields for _, fields in views]
        return {
            "inputs": scorer.preprocess([source for source, _ in views], view_fields,
                                        **({} if no_breast is None else {"no_breast": no_breast})),
            "fields": view_fields,
            "scorer": scorer, "task": task, "is_exam": is_exam,
            "lateralities": [fields.laterality or "?" for fields in view_fields],
            "view_names": [fields.view for fields in view_fields],
        }

    def _forward(self, model_inputs):
        logits = model_inputs["scorer"].logits(model_inputs["inputs"], model_inputs["fields"])
        kept = {key: value for key, value in model_inputs.items() if key not in ("inputs", "fields", "scorer")}
        return {**kept, "logits": logits}

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


def _ranked(names, scores: np.ndarray) -> list[dict[str, Any]]:
    return sorted(({"label": name, "score": float(score)} for name, score in zip(names, scores)),
                  key=lambda entry: -entry["score"])


PIPELINE_REGISTRY.register_pipeline(
    TASK_NAME, pipeline_class=MammographyZeroShotPipeline, pt_model=AutoModelForZeroShotImageClassification,
    type="multimodal",
)

__all__ = [
    "MammographyZeroShotPipeline", "TASK_NAME", "ZeroShotScorer", "aggregate_scores", "normalized_image_features",
]
