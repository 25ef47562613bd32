"""Converted datasets as training data: one or several folders written by `data_scripts/*.py`.

`load_converted(paths)` loads each folder with `datasets.load_from_disk`, records which data it
holds (`hub.recorded_datasets`: the licence key its converter wrote into `conversion.json`) and,
for several folders, concatenates them split by split (a split present in only some folders is
the concatenation of those). Identifiers are prefixed with the folder's position and data
(`"1-cmmd/D1-0001"`) when there are several folders, so two datasets' exams never pair up as
views of one exam and no patient crosses datasets by accident.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..hub import merge_datasets, recorded_datasets

logger = logging.getLogger(__name__)

ID_COLUMNS = ("patient_id", "exam_id")


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


__all__ = ["load_converted"]
