"""MamaDataCollator: the processor's own outputs, batched."""

import numpy as np
import pytest
import torch

from modeling_mama import MamaDataCollator, MamaProcessor, MultiViewDataset
from modeling_mama.image_processing_mama import MamaImageProcessor

SIZE = 28


@pytest.mark.parametrize("mode", ["global", "tiles"])
def test_collator_gives_what_a_direct_processor_call_gives(tiny_dataset, report_tokenizer, mode):
    processor = MamaProcessor(MamaImageProcessor(mode=mode, size=SIZE, tile_grid=[3, 2]), report_tokenizer)
    dataset = MultiViewDataset(tiny_dataset, processor, augment=False, probability=0.0, mask_prob=0.0)
    rows = [tiny_dataset[index] for index in range(4)]
    batch = MamaDataCollator(processor)([dataset[index] for index in range(4)])
    direct = processor(images=[row["image"] for row in rows], reports=rows,
                       laterality=[row["laterality"] for row in rows])
    assert set(direct) <= set(batch) and set(batch) - set(direct) == {"extra_pixel_values"}
    for key, value in direct.items():
        assert torch.equal(batch[key], value), key
    assert torch.equal(batch["extra_pixel_values"], batch["pixel_values"])  # probability 0: the same image


def test_tiles_of_different_counts_are_padded_and_masked(report_tokenizer):
    processor = MamaProcessor(MamaImageProcessor(size=SIZE), report_tokenizer)
    items = [{"pixel_values": torch.zeros(3, SIZE, SIZE), "report": ["Overall Assessment: Negative."],
              "tile_pixel_values": torch.ones(count, 3, 8, 8), "tile_mask": torch.tensor([True] * count)}
             for count in (2, 3)]
    batch = MamaDataCollator(processor)(items)
    assert batch["tile_pixel_values"].shape == (2, 3, 3, 8, 8)
    assert batch["tile_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert torch.all(batch["tile_pixel_values"][0, 2] == 0)
    with pytest.raises(ValueError, match=r"Items \[0\] have no tiles while others have"):
        MamaDataCollator(processor)([{k: v for k, v in items[0].items() if not k.startswith("tile")}, items[1]])


def test_budget_and_truncation(report_tokenizer):
    processor = MamaProcessor(MamaImageProcessor(size=SIZE), report_tokenizer, max_length=12)
    sentences = ["Procedure reported: MG Screening Bilateral.", "Reason for procedure: screening.",
                 "Overall Assessment: Negative."]
    item = {"pixel_values": torch.zeros(3, SIZE, SIZE), "report": sentences}
    with pytest.raises(ValueError, match="more than max_length=12"):
        MamaDataCollator(processor)([item])
    with pytest.warns(UserWarning, match="more than max_length=12"):
        batch = MamaDataCollator(processor, truncation="warn")([item])
    assert batch["input_ids"].shape[1] <= 12 and 1 <= int(batch["sentence_mask"].sum()) < 3
    assert MamaDataCollator(processor, max_length=144)([item])["sentence_mask"].sum() == 3


def test_a_tokenizer_still_works_with_a_warning(report_tokenizer):
    with pytest.warns(FutureWarning, match="pass the MamaProcessor"):
        collator = MamaDataCollator(report_tokenizer)
    item = {"pixel_values": torch.zeros(3, SIZE, SIZE), "report": ["Overall Assessment: Negative."]}
    expected = MamaProcessor(MamaImageProcessor(), report_tokenizer)(reports=[item["report"]])
    assert np.array_equal(collator([item])["input_ids"].numpy(), expected["input_ids"].numpy())
