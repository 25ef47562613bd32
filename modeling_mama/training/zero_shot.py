"""Zero-shot evaluation of a MaMA model on a converted dataset, the paper's protocol (METHOD.md section 7).

For each test image and each class, the prompt is the image's own unmasked metadata sections
(procedure, reason, patient info, image info) followed by the class's sentences; the class score is
`s * image_embed . prompt_embed` and the prediction its argmax. With `use_metadata=False` every image
shares one class-only prompt per class. Several phrasings per class (prompt ensembling, an extension)
are averaged in embedding space (`prompt_variants`, 0 in the paper protocol). With `tiles=True` each
image's full-resolution tiles are scored and aggregated per image (max for cancer, mean otherwise).

The scoring itself is `modeling_mama.zero_shot_scoring.ZeroShotScorer`, the one the mammography
pipeline and batch prediction use: this module walks a dataset split in batches, reads each row's
fields and labels, and tells the processor that the converter already oriented and cropped the
stored images.

>>> from modeling_mama.training.zero_shot import label_to_class
>>> label_to_class("density", 3), label_to_class("birads", 0)
(2, 0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..labels import get_task
from ..zero_shot_scoring import ZeroShotScorer
from .converted import stored_image_options
from .multiview import report_fields_from_row


def label_to_class(task: str, label: Any) -> int | None:
    """Dataset label -> class index (`labels.TASKS[task].label_to_class`): BI-RADS 0-6 -> 0-6,
    density 1-4 -> 0-3, cancer 0/1 -> 0/1."""
    return get_task(task).label_to_class(label)


@torch.no_grad()
def zero_shot_logits(model, processor, dataset, task: str, *, use_metadata: bool = True,
                     prompt_variants: int = 0, tiles: bool = False, tile_aggregation: str | None = None,
                     batch_size: int = 32, max_length: int | None = None, truncation: str = "error",
                     image_options: dict | None = None, progress: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Class logits [N, C] for the rows of `dataset` that have a label for `task`.

    Returns (logits, class labels, row indices used). `dataset` is a converted split (DESIGN.md schema).
    The options are `ZeroShotScorer`'s (`max_length` defaults to the processor's saved budget);
    `image_options` default to `converted.stored_image_options(dataset)` (no re-orientation, no
    re-crop of converted images).
    """
    column = get_task(task).label_column
    if column not in dataset.column_names:
        raise ValueError(f"The dataset has no {column!r} column, needed for the {task} task.")
    scorer = ZeroShotScorer(model, processor, task, use_metadata=use_metadata, prompt_variants=prompt_variants,
                            tiles=tiles, tile_aggregation=tile_aggregation, max_length=max_length,
                            truncation=truncation)
    options = stored_image_options(dataset) if image_options is None else dict(image_options)
    labels = [label_to_class(task, value) for value in dataset[column]]
    rows = [i for i, label in enumerate(labels) if label is not None]
    if not rows:
        raise ValueError(f"No row of the dataset has a {task} label: its {column!r} column is empty.")
    all_logits = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"zero-shot {task}", disable=not progress):
        batch_rows = [dataset[i] for i in rows[start:start + batch_size]]
        fields = [report_fields_from_row(row) for row in batch_rows]
        inputs = scorer.preprocess([row["image"] for row in batch_rows], fields, **options)
        all_logits.append(scorer.logits(inputs, fields).cpu())
    logits = torch.cat(all_logits).numpy() if all_logits else np.zeros((0, 0), dtype=np.float32)
    return logits, np.asarray([labels[i] for i in rows]), rows


def evaluate_zero_shot(model, processor, dataset, task: str, **kwargs) -> dict[str, Any]:
    """Zero-shot metrics (balanced accuracy, AUC, ...) of `model` on a converted split."""
    from .metrics import classification_metrics

    logits, labels, _ = zero_shot_logits(model, processor, dataset, task, **kwargs)
    num_classes = logits.shape[1] if logits.size else get_task(task).num_classes
    metrics = classification_metrics(logits, labels, num_classes=num_classes)
    metrics["num_images"] = int(len(labels))
    return metrics


__all__ = ["evaluate_zero_shot", "label_to_class", "zero_shot_logits"]
