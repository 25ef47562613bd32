"""Zero-shot evaluation of a MaMA model on a converted dataset, the paper's protocol (METHOD.md section 7).

For each test image and each class, the prompt is the image's own unmasked metadata sections
(procedure, reason, patient info, image info) followed by the class's sentences; the class score is
`s * image_embed . prompt_embed` and the prediction its argmax. With `use_metadata=False` every image
shares one class-only prompt per class. Several phrasings per class (prompt ensembling, an extension)
are averaged in embedding space (`prompt_variants`, 0 in the paper protocol). With `tiles=True` each
image's full-resolution tiles are scored and aggregated per image (max for cancer, mean otherwise).

The scoring itself is `modeling_mama.zero_shot_scoring`, the same as the mammography pipeline's: this
module only walks a dataset split in batches, reads each row's fields and labels, and tells the
processor that the converter already oriented and cropped the stored images.

>>> from modeling_mama.training.zero_shot import TASK_LABEL_COLUMNS, label_to_class
>>> TASK_LABEL_COLUMNS["density"], label_to_class("density", 3), label_to_class("birads", 0)
('density', 2, 0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..reports import zero_shot_prompts
from ..zero_shot_scoring import zero_shot_batch, zero_shot_logits as score_batch
from .converted import stored_image_options
from .multiview import report_fields_from_row

TASK_LABEL_COLUMNS = {"birads": "birads", "density": "density", "cancer": "cancer"}


def label_to_class(task: str, label: Any) -> int | None:
    """Dataset label -> class index: BI-RADS 0-6 -> 0-6, density 1-4 -> 0-3, cancer 0/1 -> 0/1."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return None
    label = int(label)
    if task == "density":
        return label - 1 if 1 <= label <= 4 else None
    if task == "birads":
        return label if 0 <= label <= 6 else None
    if task == "cancer":
        return label if label in (0, 1) else None
    raise ValueError(f"Unknown zero-shot task {task!r}; expected one of {sorted(TASK_LABEL_COLUMNS)}.")


@torch.no_grad()
def zero_shot_logits(model, processor, dataset, task: str, *, use_metadata: bool = True,
                     prompt_variants: int = 0, tiles: bool = False, tile_aggregation: str | None = None,
                     batch_size: int = 32, max_length: int | None = None, truncation: str = "error",
                     image_options: dict | None = None, progress: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Class logits [N, C] for the rows of `dataset` that have a label for `task`.

    Returns (logits, class labels, row indices used). `dataset` is a converted split (DESIGN.md schema).
    `max_length` defaults to the processor's saved budget; `image_options` to
    `converted.stored_image_options(dataset)` (no re-orientation, no re-crop of converted images).
    """
    column = TASK_LABEL_COLUMNS.get(task)
    if column is None:
        raise ValueError(f"Unknown zero-shot task {task!r}; expected one of {sorted(TASK_LABEL_COLUMNS)}.")
    if column not in dataset.column_names:
        raise ValueError(f"The dataset has no {column!r} column, needed for the {task} task.")
    options = stored_image_options(dataset) if image_options is None else dict(image_options)
    labels = [label_to_class(task, value) for value in dataset[column]]
    rows = [i for i, label in enumerate(labels) if label is not None]
    all_logits = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"zero-shot {task}", disable=not progress):
        batch_rows = [dataset[i] for i in rows[start:start + batch_size]]
        batch = zero_shot_batch(
            processor, [row["image"] for row in batch_rows], task,
            fields=[report_fields_from_row(row) for row in batch_rows] if use_metadata else None,
            use_metadata=use_metadata, prompt_variants=prompt_variants, tiles=tiles, max_length=max_length,
            truncation=truncation, laterality=[row["laterality"] for row in batch_rows], **options,
        )
        all_logits.append(score_batch(model, batch, tile_aggregation=tile_aggregation))
    logits = torch.cat(all_logits).numpy() if all_logits else np.zeros((0, 0), dtype=np.float32)
    return logits, np.asarray([labels[i] for i in rows]), rows


def evaluate_zero_shot(model, processor, dataset, task: str, **kwargs) -> dict[str, Any]:
    """Zero-shot metrics (balanced accuracy, AUC, ...) of `model` on a converted split."""
    from .metrics import classification_metrics

    logits, labels, _ = zero_shot_logits(model, processor, dataset, task, **kwargs)
    num_classes = logits.shape[1] if logits.size else len(zero_shot_prompts(task))
    metrics = classification_metrics(logits, labels, num_classes=num_classes)
    metrics["num_images"] = int(len(labels))
    return metrics


__all__ = ["TASK_LABEL_COLUMNS", "evaluate_zero_shot", "label_to_class", "zero_shot_logits"]
