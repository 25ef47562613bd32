"""Image <-> report retrieval on a converted dataset split: how well the two towers line up.

Every image of the split is a query against the split's distinct reports, and every report against
the images. Each image's report is the one `MultiViewDataset` trains on, unmasked (`processor(reports=
row)`); images whose reports are the same text (e.g. two acquisitions of one view) share one report
column, so either of them is a correct answer for it. Scores are cosine similarities of the L2-normalised
global embeddings; recall@k counts a query as a hit when a correct candidate ranks within the top k
(`metrics.retrieval_metrics`, ties counted against the query).

Training logs the same quantity inside each batch (`metrics.retrieval_accuracy`, pairs on the diagonal);
this is its dataset-level counterpart, where every report of the split competes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..zero_shot_scoring import normalized_image_features
from .converted import stored_image_options
from .metrics import retrieval_metrics


@torch.no_grad()
def retrieval_embeddings(model, processor, dataset, *, batch_size: int = 32, max_length: int | None = None,
                         truncation: str = "error", image_options: dict | None = None, progress: bool = True,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image embeddings [N, D], report embeddings [R, D], report index of each image [N]) of a converted split.

    Reports are built from each row's columns by the processor (`reports=`), without masking; identical
    sentence lists are encoded once. `image_options` default to `converted.stored_image_options(dataset)`
    (the converters' images are already oriented and cropped).
    """
    if len(dataset) == 0:
        raise ValueError("The split is empty: nothing to retrieve.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    options = stored_image_options(dataset) if image_options is None else dict(image_options)
    device = next(model.parameters()).device
    image_embeds, report_of_image = [], []
    report_index: dict[tuple[str, ...], int] = {}
    for start in tqdm(range(0, len(dataset), batch_size), desc="retrieval images", disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixel_values = processor(images=[row["image"] for row in rows],
                                 laterality=[row.get("laterality") for row in rows], **options)["pixel_values"]
        image_embeds.append(normalized_image_features(model, pixel_values.to(device)).float().cpu())
        for sentences in processor.build_reports(rows):
            report_of_image.append(report_index.setdefault(tuple(sentences), len(report_index)))
    reports = [list(sentences) for sentences in report_index]
    report_embeds = []
    for start in tqdm(range(0, len(reports), batch_size), desc="retrieval reports", disable=not progress):
        text = processor(reports=reports[start:start + batch_size], max_length=max_length, truncation=truncation)
        features = model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device))
        report_embeds.append(F.normalize(features.pooler_output, dim=-1).float().cpu())
    return torch.cat(image_embeds).numpy(), torch.cat(report_embeds).numpy(), np.asarray(report_of_image)


def evaluate_retrieval(model, processor, dataset, ks: Sequence[int] = (1, 5, 10), **kwargs) -> dict[str, Any]:
    """Recall@k image -> report and report -> image over a converted split, with the counts behind them.

    `kwargs` go to `retrieval_embeddings`. Chance recall@k is about k / R both ways (R distinct reports).
    """
    image_embeds, report_embeds, report_of_image = retrieval_embeddings(model, processor, dataset, **kwargs)
    similarity = image_embeds @ report_embeds.T
    results: dict[str, Any] = retrieval_metrics(similarity, ks=ks, groups=report_of_image,
                                                column_groups=np.arange(len(report_embeds)))
    results.update(num_images=int(len(image_embeds)), num_reports=int(len(report_embeds)))
    return results


__all__ = ["evaluate_retrieval", "retrieval_embeddings"]
