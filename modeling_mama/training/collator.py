"""Batches of pre-training items: the views and tiles stacked, the reports tokenised by the processor."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MamaDataCollator:
    """Batches `MultiViewDataset` items into `MamaModel.forward` inputs.

    The reports (sentence lists) go through `processor(reports=...)`, the same call that makes the
    inputs everywhere else, so `input_ids`, `attention_mask`, `sentence_positions` and
    `sentence_mask` are exactly what a direct processor call gives (one separator token per sentence:
    the one source of sentence positions). Pixel tensors are stacked; tiles are stacked with their
    `tile_mask`, padded (masked) to the largest tile count of the batch.

    Args:
        processor: the `MamaProcessor` the items were made with.
        max_length: the reports' token budget (default: the processor's saved `max_length`).
        truncation: "error" (default) raises on a report longer than the budget; "warn" drops its last
            whole sentences.

    Every batch carries `extra_pixel_values`: an item without a second view uses its own view.
    Whether the multi-view terms run must not depend on one process's batch: NT-Xent (and CLIP /
    SLA with `gather_with_grad`) gather across processes, so a rank that skipped them would leave the
    others waiting in the collective. An item paired with itself is the paper's "no other view"
    case (METHOD.md section 4: the same image twice) without the second augmentation, which the
    dataset, not the collator, would have to draw. Set the multi-view weights to 0 to train without
    second views.
    """

    processor: Any
    max_length: int | None = None
    truncation: str = "error"

    def __post_init__(self):
        if not hasattr(self.processor, "build_reports") and hasattr(self.processor, "sep_token_id"):
            from ..image_processing_mama import MamaImageProcessor
            from ..processing_mama import MamaProcessor

            warnings.warn("MamaDataCollator(tokenizer) is deprecated: pass the MamaProcessor.", FutureWarning,
                          stacklevel=3)
            self.processor = MamaProcessor(MamaImageProcessor(), self.processor)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.processor(reports=[item["report"] for item in items], max_length=self.max_length,
                                    truncation=self.truncation))
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
        batch["extra_pixel_values"] = torch.stack(
            [item.get("extra_pixel_values", item["pixel_values"]) for item in items])
        if any("tile_pixel_values" in item for item in items):
            batch.update(_stack_tiles(items))
        return batch


def _stack_tiles(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    missing = [index for index, item in enumerate(items) if "tile_pixel_values" not in item]
    if missing:
        raise ValueError(f"Items {missing} have no tiles while others have: build every item with the same "
                         f"processor mode.")
    count = max(item["tile_pixel_values"].shape[0] for item in items)
    shape = items[0]["tile_pixel_values"].shape[1:]
    tile_pixel_values = items[0]["tile_pixel_values"].new_zeros((len(items), count, *shape))
    tile_mask = torch.zeros((len(items), count), dtype=torch.bool)
    for row, item in enumerate(items):
        tiles = item["tile_pixel_values"].shape[0]
        tile_pixel_values[row, :tiles] = item["tile_pixel_values"]
        tile_mask[row, :tiles] = item["tile_mask"]
    return {"tile_pixel_values": tile_pixel_values, "tile_mask": tile_mask}


__all__ = ["MamaDataCollator"]
