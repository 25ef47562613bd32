"""Batches of pre-training items: the two views stacked, the reports tokenised (one separator per sentence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..tokenization import batch_tokenize_reports


@dataclass
class MamaDataCollator:
    """Batches `MultiViewDataset` items: pixel tensors stacked, reports tokenised and padded."""

    tokenizer: Any
    max_length: int = 144

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
        if all("extra_pixel_values" in item for item in items):
            batch["extra_pixel_values"] = torch.stack([item["extra_pixel_values"] for item in items])
        text = batch_tokenize_reports([item["report"] for item in items], self.tokenizer, max_length=self.max_length)
        for key in ("input_ids", "attention_mask", "sentence_positions", "sentence_mask"):
            batch[key] = text[key]
        return batch


__all__ = ["MamaDataCollator"]
