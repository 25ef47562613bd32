"""A converted dataset says its images are oriented and cropped; training and evaluation believe it."""

import json

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import _schema_rows
from modeling_mama import MamaConfig, MamaModel, MamaProcessor, MultiViewDataset
from modeling_mama.data.converters.common import STORED_IMAGES
from modeling_mama.image_processing_mama import MamaImageProcessor
from modeling_mama.training.converted import (
    conversion_record,
    conversion_records,
    load_converted,
    stored_image_options,
    tile_grid,
)
from modeling_mama.training.zero_shot import zero_shot_logits

SIZE = 28


def stored_crop():
    """A stored (oriented, cropped) breast whose dense tissue lies away from the chest wall: the
    pixel-mass rule would flip it, and Otsu would crop it to the dense part."""
    pixels = np.full((96, 64), 0.25, dtype=np.float32)  # fatty tissue, chest wall at the left
    pixels[20:80, 40:] = 0.9                             # dense tissue towards the nipple
    return np.rint(pixels * 65535).astype(np.uint16)


def save_converted(folder, record):
    rows = _schema_rows(1)
    for row in rows:
        row["image"] = Image.fromarray(stored_crop())
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    split = datasets.Dataset.from_dict(columns, features=datasets.Features({
        key: datasets.Image() if key == "image" else datasets.Value("int64") if isinstance(value[0], int)
        else datasets.Value("string") for key, value in columns.items()}))
    datasets.DatasetDict({"train": split}).save_to_disk(str(folder))
    if record is not None:
        (folder / "conversion.json").write_text(json.dumps(record))
    return datasets.load_from_disk(str(folder))


def plain_view(stored):
    """The stored image resized, nothing else (no flip, no crop)."""
    unit = torch.from_numpy(stored.astype(np.float32) / 65535)
    resized = F.interpolate(unit[None, None], size=(SIZE, SIZE), mode="bilinear", antialias=True,
                            align_corners=False)[0, 0]
    return ((resized - 0.5) / 0.5).expand(3, -1, -1)


def test_a_stored_image_is_neither_flipped_nor_cropped(tmp_path, report_tokenizer):
    converted = save_converted(tmp_path / "converted", {"converter": "embed", "image_size": 96, **STORED_IMAGES})
    processor = MamaProcessor(MamaImageProcessor(size=SIZE), report_tokenizer)
    split = converted["train"]
    assert stored_image_options(split) == {"do_orient": False, "do_crop_to_breast": False}
    item = MultiViewDataset(split, processor, augment=False, probability=0.0)[0]
    torch.testing.assert_close(item["pixel_values"], plain_view(stored_crop()), atol=1e-5, rtol=0)
    torch.testing.assert_close(item["extra_pixel_values"], item["pixel_values"])
    # The same rows without the record are processed as raw mammograms: flipped and re-cropped.
    in_memory = datasets.Dataset.from_dict(split.to_dict(), features=split.features)
    assert stored_image_options(in_memory) == {}
    raw = processor(images=stored_crop(), return_geometry=True)
    assert raw["flipped"].item() and raw["crop_boxes"][0].tolist() != [0, 0, 64, 96]
    assert not torch.allclose(MultiViewDataset(in_memory, processor, augment=False)[0]["pixel_values"],
                              item["pixel_values"])
    # Zero-shot evaluation reads the record too.
    config = MamaConfig.tiny(vocab_size=len(report_tokenizer), image_size=SIZE,
                             sentence_separator_token_id=report_tokenizer.sep_token_id)
    model = MamaModel(config).eval()
    default, _, _ = zero_shot_logits(model, processor, split, "density", progress=False)
    stored, _, _ = zero_shot_logits(model, processor, split, "density", progress=False,
                                    image_options={"do_orient": False, "do_crop_to_breast": False})
    reprocessed, _, _ = zero_shot_logits(model, processor, split, "density", progress=False, image_options={})
    np.testing.assert_allclose(default, stored)
    assert not np.allclose(default, reprocessed)


def test_the_record_is_found_wherever_the_dataset_is(tmp_path):
    converted = save_converted(tmp_path / "converted", {"converter": "rsna", "image_size": 1024, **STORED_IMAGES})
    for dataset in (tmp_path / "converted", str(tmp_path / "converted"), converted, converted["train"],
                    converted["train"].select([2, 0]), converted["train"].shuffle(seed=0)):
        assert conversion_record(dataset)["image_size"] == 1024
        assert stored_image_options(dataset) == {"do_orient": False, "do_crop_to_breast": False}
    assert tile_grid(converted["train"], 518) == [2, 2] and tile_grid(converted["train"], 112) == [10, 10]
    native = save_converted(tmp_path / "native", {"converter": "rsna", "image_size": 0, **STORED_IMAGES})
    assert tile_grid(native["train"], 518, default=[6, 3]) == [6, 3]
    # Records written before the flags existed describe oriented, cropped images (every converter did it).
    legacy = save_converted(tmp_path / "legacy", {"converter": "vindr", "image_size": 512})
    assert stored_image_options(legacy["train"]) == {"do_orient": False, "do_crop_to_breast": False}
    unknown = save_converted(tmp_path / "unknown", {"image_orientation": "as acquired"})
    assert stored_image_options(unknown["train"]) == {}
    assert conversion_record(save_converted(tmp_path / "none", None)["train"]) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "conversion.json").write_text("{not json")
    with pytest.raises(ValueError, match="conversion.json cannot be read"):
        conversion_record(tmp_path / "broken")


def test_several_folders_combined_read_every_folders_record(tmp_path, caplog):
    """A concatenation (`load_converted`) answers for all its folders, not for the first one alone."""
    small = save_converted(tmp_path / "small", {"converter": "rsna", "image_size": 512, **STORED_IMAGES})
    large = save_converted(tmp_path / "large", {"converter": "cmmd", "image_size": 2048, **STORED_IMAGES})
    assert small and large
    combined, _ = load_converted([tmp_path / "small", tmp_path / "large"])
    assert [record["image_size"] for record in conversion_records(combined["train"])] == [512, 2048]
    assert tile_grid(combined["train"], 518) == [4, 4]  # covers the larger images, not only the first folder's
    assert stored_image_options(combined["train"]) == {"do_orient": False, "do_crop_to_breast": False}
    save_converted(tmp_path / "foreign", {"converter": "other", "image_size": 1024, "image_orientation": "as acquired"})
    mixed, _ = load_converted([tmp_path / "small", tmp_path / "foreign"])
    with caplog.at_level("WARNING"):
        assert stored_image_options(mixed["train"]) == {}  # some images are not prepared: prepare them all
    assert "Only some of the datasets" in caplog.text
    native = save_converted(tmp_path / "native", {"converter": "rsna", "image_size": 0, **STORED_IMAGES})
    assert native
    assert tile_grid(load_converted([tmp_path / "small", tmp_path / "native"])[0]["train"], 518, default=[6, 3]) == [6, 3]


def test_the_converters_record_their_stored_images(synthetic_embed_dataset):
    record = json.loads((synthetic_embed_dataset / "conversion.json").read_text())
    assert record["image_size"] == 128 and record["image_orientation"] == "chest_wall_left"
    assert record["image_cropped_to_breast"] is True
    split = datasets.load_from_disk(str(synthetic_embed_dataset))["train"]
    assert stored_image_options(split) == {"do_orient": False, "do_crop_to_breast": False}
    assert tile_grid(split, 56) == [3, 3]
