"""Converted datasets as training data: what each says about its images, and several loaded as one.

The converters (`modeling_mama.data.converters`) store every image oriented (chest wall left),
cropped to the breast and shrunk to a long side of at most `image_size` pixels, and record that
next to the dataset. Training and evaluation read it back here, so the image processor neither
orients nor crops those images again: the pixel-mass rule could flip a stored image whose dense
tissue lies away from the chest wall, and Otsu could crop a stored crop further.

>>> stored_image_options({"image_orientation": "chest_wall_left", "image_cropped_to_breast": True})
{'do_orient': False, 'do_crop_to_breast': False}
>>> stored_image_options(None)          # not a converted dataset: orient and crop as usual
{}
>>> tile_grid({"image_size": 1024}, tile_size=518)
[2, 2]

`load_converted(paths)` loads each folder with `datasets.load_from_disk`, records which data it
holds (`hub.recorded_datasets`: the licence key its converter wrote into `conversion.json`) and,
for several folders, concatenates them split by split (a split present in only some folders is
the concatenation of those). Identifiers are prefixed with the folder's position and data
(`"1-cmmd/D1-0001"`) when there are several folders, so two datasets' exams never pair up as
views of one exam and no patient crosses datasets by accident.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..hub import merge_datasets, recorded_datasets

logger = logging.getLogger(__name__)

CONVERSION_FILE = "conversion.json"
ORIENTATION = "chest_wall_left"
ID_COLUMNS = ("patient_id", "exam_id")


def conversion_record(dataset) -> dict[str, Any] | None:
    """The `conversion.json` written next to a converted dataset, or None when there is none.

    `dataset` is the dataset folder, a `datasets.DatasetDict` or a split (`Dataset`) loaded from it
    with `load_from_disk` (found through its Arrow files; `select` / `shuffle` / `map` keep them), or
    the record itself (a mapping). An in-memory dataset has no record. For several folders
    concatenated (`load_converted`) this is the first folder's: `conversion_records` gives them all.
    """
    records = conversion_records(dataset)
    return records[0] if records else None


def conversion_records(dataset) -> list[dict[str, Any] | None]:
    """One `conversion.json` (or None) per dataset folder `dataset` was loaded from, in order: a
    concatenation of several converted folders (`load_converted`) has several. Empty for an
    in-memory dataset; `[record]` for a folder or a record."""
    if dataset is None:
        return []
    if isinstance(dataset, Mapping) and not hasattr(dataset, "cache_files"):
        return [dict(dataset)]
    if isinstance(dataset, (str, os.PathLike)):
        return [_read_record(Path(dataset))]
    records: dict[Path, dict[str, Any] | None] = {}
    for arrow in _arrow_files(dataset):  # <dataset folder>/<split>/data-*.arrow
        for folder in (arrow.parent.parent, arrow.parent):
            if (folder / CONVERSION_FILE).is_file():
                records.setdefault(folder, _read_record(folder))
                break
        else:
            records.setdefault(arrow.parent.parent, None)
    return list(records.values())


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / CONVERSION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({error}); re-run the converter that wrote it.") from error


def _arrow_files(dataset) -> list[Path]:
    cache_files = getattr(dataset, "cache_files", None) or []
    if isinstance(cache_files, Mapping):  # a DatasetDict: {split: [files]}
        cache_files = [entry for files in cache_files.values() for entry in files]
    return [Path(entry["filename"]) for entry in cache_files]


def images_are_prepared(record: Mapping[str, Any] | None) -> bool:
    """Whether a conversion record says its images are stored oriented and cropped to the breast.

    Records written before these keys existed (they have `converter` and `image_size`) describe
    images the converters already oriented and cropped: every converter version did.
    """
    if not record:
        return False
    if "image_orientation" in record or "image_cropped_to_breast" in record:
        return record.get("image_orientation") == ORIENTATION and bool(record.get("image_cropped_to_breast"))
    return "converter" in record and "image_size" in record


def stored_image_options(dataset) -> dict[str, bool]:
    """Image processor options for the stored images of `dataset` (see `conversion_record` for what
    `dataset` can be): no orientation and no crop when the converter did both (for every folder of a
    concatenation), else none (`{}`)."""
    records = conversion_records(dataset)
    if records and all(images_are_prepared(record) for record in records):
        return {"do_orient": False, "do_crop_to_breast": False}
    if any(images_are_prepared(record) for record in records):
        logger.warning("Only some of the datasets combined here store oriented, cropped images: every image is "
                       "oriented and cropped again (convert the others with data_scripts/ to avoid it).")
    return {}


def tile_grid(dataset, tile_size: int, default: list[int] | None = None) -> list[int] | None:
    """`[rows, cols]` of tiles of `tile_size` that cover a stored image at its resolution: the long
    side the converter recorded (`image_size`; the largest over a concatenation's folders) divided by
    the tile size, rounded up, on both axes. `default` when a folder records no positive size
    (unknown, or 0 = native resolution)."""
    long_sides = [int((record or {}).get("image_size") or 0) for record in conversion_records(dataset)]
    if not long_sides or min(long_sides) <= 0:
        return default
    count = max(1, math.ceil(max(long_sides) / int(tile_size)))
    return [count, count]


def _load_one(path: Path):
    import datasets

    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a converted dataset folder (no dataset_dict.json): convert the data with "
            "data_scripts/<dataset>.py --root DOWNLOAD --out FOLDER and pass that FOLDER.")
    return datasets.load_from_disk(str(path))


def _prefixed(split, prefix: str):
    for column in ID_COLUMNS:
        if column in split.column_names:
            values = [None if value is None else f"{prefix}/{value}" for value in split[column]]
            # Column operations on the Arrow table: the images are not rewritten.
            split = split.remove_columns(column).add_column(column, values)
    return split


def load_converted(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """`(DatasetDict, training_datasets)` of one or several converted dataset folders.

    Columns that some folders lack (e.g. a column added to the schema after an older conversion)
    are dropped with a warning, so the concatenation has one schema.
    """
    import datasets

    folders = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(path) for path in paths]
    if not folders:
        raise ValueError("load_converted needs at least one dataset folder.")
    loaded = [_load_one(folder) for folder in folders]
    records = [recorded_datasets(folder) for folder in folders]
    training_datasets = merge_datasets(*records)
    if len(loaded) == 1:
        return loaded[0], training_datasets

    columns = set.intersection(*(set(split.column_names) for splits in loaded for split in splits.values()))
    dropped = sorted({column for splits in loaded for split in splits.values() for column in split.column_names}
                     - columns)
    if dropped:
        logger.warning("Columns %s are not in every dataset of %s: training on the shared columns only.",
                       dropped, [str(folder) for folder in folders])
    names = list(dict.fromkeys(name for splits in loaded for name in splits))
    combined = {}
    for name in names:
        parts = []
        for position, (splits, record) in enumerate(zip(loaded, records)):
            if name in splits:
                split = splits[name].select_columns([c for c in splits[name].column_names if c in columns])
                parts.append(_prefixed(split, f"{position}-{'+'.join(record)}"))
        features = parts[0].features
        combined[name] = datasets.concatenate_datasets([part.cast(features) if part.features != features else part
                                                        for part in parts])
    return datasets.DatasetDict(combined), training_datasets


__all__ = [
    "CONVERSION_FILE", "conversion_record", "conversion_records", "images_are_prepared", "load_converted", "stored_image_options", "tile_grid",
]
