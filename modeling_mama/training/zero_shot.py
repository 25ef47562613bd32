"""Zero-shot classification with a MaMA model, the paper's protocol (METHOD.md section 7).

For each test image and each class, the prompt is the image's own unmasked metadata sections
(procedure, reason, patient info, image info) followed by the class's sentences; the class score is
`s * image_embed . prompt_embed` and the prediction its argmax. With `use_metadata=False` every image
shares one class-only prompt per class. Several phrasings per class (prompt ensembling, an extension)
are averaged in embedding space (`prompt_variants`, 0 in the paper protocol).

>>> from modeling_mama.training.zero_shot import label_to_class
>>> label_to_class("density", 3), label_to_class("birads", 0)
(2, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .multiview import report_fields_from_row
from ..labels import get_task
from ..reports import zero_shot_prompts
from ..tokenization import batch_tokenize_reports

def label_to_class(task: str, label: Any) -> int | None:
    """Dataset label -> class index (`labels.TASKS[task].label_to_class`): BI-RADS 0-6 -> 0-6,
    density 1-4 -> 0-3, cancer 0/1 -> 0/1."""
    return get_task(task).label_to_class(label)


@torch.no_grad()
def encode_prompts(model, tokenizer, prompts: Sequence[Sequence[str]], *, max_length: int = 144,
                   batch_size: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings of prompts given as sentence lists."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        text = batch_tokenize_reports(list(prompts[start:start + batch_size]), tokenizer, max_length=max_length)
        features = model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device)).pooler_output
        chunks.append(F.normalize(features, dim=-1))
    return torch.cat(chunks)


@torch.no_grad()
def zero_shot_logits(model, processor, dataset, task: str, *, use_metadata: bool = True,
                     prompt_variants: int = 0, batch_size: int = 32, max_length: int = 144,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Class logits [N, C] for the rows of `dataset` that have a label for `task`.

    Returns (logits, class labels, row indices used). `dataset` is a converted split (DESIGN.md schema).
    `prompt_variants` extra phrasings per class (prompt ensembling, beyond the paper) are averaged in.
    """
    model.eval()
    device = next(model.parameters()).device
    column = get_task(task).label_column
    if column not in dataset.column_names:
        raise ValueError(f"The dataset has no {column!r} column, needed for the {task} task.")
    labels = [label_to_class(task, value) for value in dataset[column]]
    rows = [i for i, label in enumerate(labels) if label is not None]
    scale = model.clamped_scales()[0].exp()
    shared = None
    if not use_metadata:
        shared = _class_embeddings(model, processor.tokenizer, task, None, prompt_variants, max_length)
    all_logits = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"zero-shot {task}", disable=not progress):
        batch_rows = [dataset[i] for i in rows[start:start + batch_size]]
        pixel_values = processor.image_processor.preprocess(
            [row["image"] for row in batch_rows], return_tensors="pt"
        )["pixel_values"].to(device)
        image_embeds = F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
        if shared is not None:
            class_embeds = shared.unsqueeze(0).expand(len(batch_rows), -1, -1)
        else:
            class_embeds = _class_embeddings(model, processor.tokenizer, task,
                                             [report_fields_from_row(row) for row in batch_rows],
                                             prompt_variants, max_length)
        all_logits.append((scale * torch.einsum("nd,ncd->nc", image_embeds, class_embeds)).cpu())
    logits = torch.cat(all_logits).numpy() if all_logits else np.zeros((0, 0), dtype=np.float32)
    return logits, np.asarray([labels[i] for i in rows]), rows


def _class_embeddings(model, tokenizer, task: str, fields, prompt_variants: int, max_length: int) -> torch.Tensor:
    """Normalised class embeddings, averaged over `prompt_variants` extra phrasings.

    `fields` is None (class-only prompts: returns [C, D]) or a list of N images' ReportFields (each
    image's metadata prefixes its prompts: returns [N, C, D]); all prompts are encoded in one pass.
    """
    per_image = fields if isinstance(fields, list) else [fields]
    phrasings = [[zero_shot_prompts(task, image_fields) for image_fields in per_image]]
    if prompt_variants > 0:
        from ..reports import zero_shot_prompt_variants

        variants = [zero_shot_prompt_variants(task, image_fields, prompt_variants) for image_fields in per_image]
        phrasings += [[image_variants[k] for image_variants in variants] for k in range(prompt_variants)]
    num_classes = len(phrasings[0][0])
    flat = [prompt for phrasing in phrasings for image_prompts in phrasing for prompt in image_prompts]
    embeds = encode_prompts(model, tokenizer, flat, max_length=max_length)
    embeds = embeds.reshape(len(phrasings), len(per_image), num_classes, -1)
    embeds = F.normalize(embeds.mean(dim=0), dim=-1)
    return embeds if isinstance(fields, list) else embeds[0]


def evaluate_zero_shot(model, processor, dataset, task: str, **kwargs) -> dict[str, Any]:
    """Zero-shot metrics (balanced accuracy, AUC, ...) of `model` on a converted split."""
    from .metrics import classification_metrics

    logits, labels, _ = zero_shot_logits(model, processor, dataset, task, **kwargs)
    num_classes = logits.shape[1] if logits.size else len(zero_shot_prompts(task))
    metrics = classification_metrics(logits, labels, num_classes=num_classes)
    metrics["num_images"] = int(len(labels))
    return metrics


__all__ = ["encode_prompts", "evaluate_zero_shot", "label_to_class", "zero_shot_logits"]
