"""Batches of pre-training items: the two views stacked, the reports tokenised (one separator per sentence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..tokenization import batch_tokenize_reports


@dataclass
class MamaDataCollator:
    """Batches `MultiViewDataset` items: pixel tensors stacked, reports tokenised and padded.

    Every batch carries `extra_pixel_values`: an item without a second view uses its own view.
    Whether the multi-view terms run must not depend on one process's batch: NT-Xent (and CLIP /
    SLA with `gather_with_grad`) gather across processes, so a rank that skipped them would leave the
    others waiting in the collective. An item paired with itself is the paper's "no other view"
    case (METHOD.md section 4: the same image twice) without the second augmentation, which the
    dataset, not the collator, would have to draw. Set the multi-view weights to 0 to train without
    second views.
    """

    tokenizer: Any
    max_length: int = 144

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
        batch["extra_pixel_values"] = torch.stack(
            [item.get("extra_pixel_values", item["pixel_values"]) for item in items])
        text = batch_tokenize_reports([item["report"] for item in items], self.tokenizer, max_length=self.max_length)
        for key in ("input_ids", "attention_mask", "sentence_positions", "sentence_mask"):
            batch[key] = text[key]
        return batch


__all__ = ["MamaDataCollator"]
