"""Multi-view pairing: which other image of the exam is a training item's second view (METHOD.md 4).

An `ExamIndex` is built once from the dataset's `exam_id` / `laterality` columns; drawing another
view is then O(1) per sample (the reference scanned lists). `MultiViewDataset` turns a converted
dataset into training items: an augmented image (with up to `max_tiles` full-resolution tiles of its
breast in tiles mode), its second view, and its report sentences with freshly drawn metadata masking.
Pixels come from the processor (`MamaProcessor`, the one data path); `MamaDataCollator` tokenises the
reports with the same processor. All randomness of an item is derived from (seed, epoch, index), so
a run resumed from a checkpoint sees exactly the items it would have seen.

>>> index = ExamIndex(["e1", "e1", "e1", "e2"], ["L", "L", "R", "R"])
>>> index.sample(0, "ipsilateral", np.random.default_rng(0))
1
>>> index.sample(3, "same_exam", np.random.default_rng(0)) is None  # a single-image exam
True
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .converted import stored_image_options

POLICIES = ("same_exam", "ipsilateral", "contralateral")


class ExamIndex:
    """Rows grouped by exam and by (exam, breast), with each row's place in its groups."""

    def __init__(self, exam_ids: Sequence[str], lateralities: Sequence[str]):
        if len(exam_ids) != len(lateralities):
            raise ValueError(f"exam_ids ({len(exam_ids)}) and lateralities ({len(lateralities)}) differ in length.")
        self.exam_ids = [str(exam) for exam in exam_ids]
        self.lateralities = [str(side).upper() if side is not None else "" for side in lateralities]
        self._by_exam: dict[str, list[int]] = defaultdict(list)
        self._by_breast: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._place_in_exam: list[int] = []
        self._place_in_breast: list[int] = []
        for row, (exam, side) in enumerate(zip(self.exam_ids, self.lateralities)):
            self._place_in_exam.append(len(self._by_exam[exam]))
            self._by_exam[exam].append(row)
            self._place_in_breast.append(len(self._by_breast[exam, side]))
            self._by_breast[exam, side].append(row)

    def __len__(self) -> int:
        return len(self.exam_ids)

    @staticmethod
    def _other(group: list[int], place: int, rng: np.random.Generator) -> int | None:
        # Uniform over the group without the row itself, without building a new list.
        if len(group) < 2:
            return None
        pick = int(rng.integers(len(group) - 1))
        return group[pick + 1] if pick >= place else group[pick]

    def sample(self, row: int, policy: str, rng: np.random.Generator) -> int | None:
        """Another row to pair with `row` under `policy`, or None when the exam has none."""
        exam, side = self.exam_ids[row], self.lateralities[row]
        if policy == "same_exam":
            return self._other(self._by_exam[exam], self._place_in_exam[row], rng)
        if policy == "ipsilateral":
            return self._other(self._by_breast[exam, side], self._place_in_breast[row], rng)
        if policy == "contralateral":
            other_side = {"L": "R", "R": "L"}.get(side)
            group = self._by_breast.get((exam, other_side), []) if other_side else []
            return group[int(rng.integers(len(group)))] if group else None
        raise ValueError(f"Unknown multi-view policy {policy!r}; expected one of {POLICIES}.")


def sample_extra_view(index: ExamIndex, row: int, *, policy: str = "same_exam", probability: float = 0.5,
                      rng: np.random.Generator) -> int | None:
    """The paper's rule: with `probability` another view of the exam (per `policy`), else (or when
    there is none) None, meaning "a second augmentation of the same image"."""
    if rng.random() >= probability:
        return None
    return index.sample(row, policy, rng)


def report_fields_from_row(row: dict[str, Any]):
    """The `ReportFields` of a converted dataset row (DESIGN.md schema; `reports.DATASET_COLUMNS`)."""
    from ..reports import DATASET_COLUMNS, ReportFields

    return ReportFields.from_mapping(row, DATASET_COLUMNS)


class MultiViewDataset(torch.utils.data.Dataset):
    """Training items from a converted dataset: image, second view, masked report (METHOD.md 3-5).

    Each item holds `pixel_values` [3, H, W] and `extra_pixel_values` (the second view), the report as
    a list of sentences (`report`; `MamaDataCollator` tokenises it), `extra_index` (the other row, or
    -1 for a second augmentation of the same image) and, with tiles, `tile_pixel_values` [K, 3, h, w]
    and `tile_mask` [K] of the anchor image (the tiles' patches are what SLA aligns).

    Args:
        dataset: a `datasets.Dataset` in the converters' schema.
        processor: the `MamaProcessor` (a bare `MamaImageProcessor` works too: items need only pixels);
            its training augmentation is applied to both views (and the tiles).
        policy, probability: the extra-view rule (paper: `same_exam`, 0.5).
        mask_prob: probability of masking each metadata field of the report (paper: 0.8).
        augment: apply the training augmentation (off for validation).
        seed: base of every random draw.
        tiles: add the anchor image's tiles (default: when the image processor is in tiles mode);
            the image processor's `max_tiles`, `tile_size` and `tile_grid` shape them.
        sample_tiles: draw up to `max_tiles` random tiles holding breast (training) instead of every
            grid tile (evaluation). Default: the same as `augment`; training without augmentation
            should still sample, so memory stays bounded by `max_tiles`.
        image_options: image processor options for the stored images; default
            `converted.stored_image_options(dataset)`: a converted dataset's images are already
            oriented and cropped, so they are neither flipped nor cropped again.
    """

    def __init__(self, dataset, processor, *, policy: str = "same_exam", probability: float = 0.5,
                 mask_prob: float = 0.8, augment: bool = True, seed: int = 0, tiles: bool | None = None,
                 sample_tiles: bool | None = None, image_options: dict | None = None):
        if policy not in POLICIES:
            raise ValueError(f"Unknown multi-view policy {policy!r}; expected one of {POLICIES}.")
        missing = {"exam_id", "laterality", "image"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"The dataset lacks column(s) {sorted(missing)}; convert it with data_scripts/*.py.")
        self.dataset = dataset
        self.processor = processor
        image_processor = getattr(processor, "image_processor", processor)
        self.tiles = getattr(image_processor, "mode", "global") == "tiles" if tiles is None else bool(tiles)
        self.image_options = stored_image_options(dataset) if image_options is None else dict(image_options)
        self.policy, self.probability, self.mask_prob = policy, probability, mask_prob
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.sample_tiles = augment if sample_tiles is None else bool(sample_tiles)
        self.index = ExamIndex(list(dataset["exam_id"]), list(dataset["laterality"]))

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _images(self, row: dict[str, Any], seed: int, tiles: bool) -> dict[str, torch.Tensor]:
        options = {"mode": "tiles", "sample_tiles": self.sample_tiles} if tiles else {"mode": "global"}
        processed = self.processor(images=row["image"], augment=self.augment, seed=seed, laterality=row["laterality"],
                                   return_tensors="pt", **options, **self.image_options)
        return {key: value[0] for key, value in processed.items()}

    def __getitem__(self, item: int) -> dict[str, Any]:
        from ..reports import build_report

        rng = np.random.default_rng([self.seed, self.epoch, int(item)])
        row = self.dataset[int(item)]
        other = sample_extra_view(self.index, int(item), policy=self.policy, probability=self.probability, rng=rng)
        extra_row = self.dataset[other] if other is not None else row
        anchor = self._images(row, seed=int(rng.integers(2**62)), tiles=self.tiles)
        extra = self._images(extra_row, seed=int(rng.integers(2**62)), tiles=False)
        report = build_report(report_fields_from_row(row), mask_prob=self.mask_prob, generator=rng)
        return {
            **anchor,
            "extra_pixel_values": extra["pixel_values"],
            "report": report,
            "extra_index": -1 if other is None else int(other),
        }


__all__ = ["POLICIES", "ExamIndex", "MultiViewDataset", "report_fields_from_row", "sample_extra_view"]
