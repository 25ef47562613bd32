"""Assemble the shard folders of a conversion run on several machines into one `datasets.DatasetDict`.

    python data_scripts/merge.py --shards OUT0 OUT1 OUT2 --out MERGED

Every converter takes `--num-shards N --shard-index i` (`common.Shard`): it plans the rows and the
patient-level splits from the full tables, then converts only the patients of shard i, and writes
`shard.json` next to its dataset: where each of its rows stands in the single-run order. The merge

1. checks that the folders are the N shards of one conversion (same converter, tables, options);
2. concatenates each split and puts the rows back in the single-run order; the class-balanced
   subset (EMBED's `test_balanced`), which needs all rows, is drawn here with the run's seed;
3. concatenates the failures files (the tables' refusals are in shard 0; decode failures in the
   shard that met them) and sums `conversion.json`;
4. commits them into `--out` the way a converter does (`common.commit_dataset`: dataset,
   failures.csv and conversion.json switch together): a reader sees the previous dataset (or none)
   or the complete merged one.

The result equals a single-machine conversion with the same seed: same rows in the same order,
same splits, same image bytes. The merged folder holds the images (the shards' `.cache` folders are
not needed any more); it needs about as much disk space as the shards' datasets together.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import (
    FAILURE_COLUMNS,
    FAILURES_FILE,
    SHARD_FILE,
    SUMMARY_FILE,
    ConverterError,
    balanced_subset,
    commit_dataset,
    failures_csv,
    sort_failures,
    summary_json,
)

# conversion.json entries that differ from shard to shard (everything else must agree).
_PER_SHARD = {"shard", "rows", "failures", "failure_reasons", "decode_reductions", "stored_size"}


def _read_shard(folder: Path) -> tuple[dict, dict]:
    for name in ("dataset_dict.json", SHARD_FILE, SUMMARY_FILE):
        if not (folder / name).is_file():
            hint = (" (was it converted with --num-shards?)" if name == SHARD_FILE
                    else " (is its conversion finished?)")
            raise ConverterError(f"{folder} is not a converted shard: {folder / name} is missing{hint}.")
    return json.loads((folder / SHARD_FILE).read_text()), json.loads((folder / SUMMARY_FILE).read_text())


def _read_failures(path: Path) -> list[dict]:
    """failures.csv rows as written by `failures_csv` (empty cells back to None, row_index int)."""
    with open(path, newline="") as handle:
        rows = [{column: (row.get(column) or None) for column in FAILURE_COLUMNS} for row in csv.DictReader(handle)]
    for row in rows:
        if row["row_index"] is not None:
            row["row_index"] = int(row["row_index"])
    return rows


def merge_shards(shards: Sequence, out, *, progress: bool = True):
    """Merge the shard folders `shards` (any order) into `out`; returns the merged DatasetDict.

    Raises `ConverterError` when a folder is not a finished shard, when shards are missing or
    repeated, or when the shards come from different conversions (the message names the option).
    """
    import datasets

    folders = [Path(shard).expanduser() for shard in shards]
    if not folders:
        raise ConverterError("--shards: give the output folders of every shard of the conversion.")
    read = [_read_shard(folder) for folder in folders]
    count = read[0][0]["count"]
    indices = sorted(info["index"] for info, _ in read)
    if any(info["count"] != count for info, _ in read) or indices != list(range(count)):
        found = ", ".join(f"{folder} (shard {info['index']} of {info['count']})"
                          for folder, (info, _) in zip(folders, read))
        raise ConverterError(
            f"--shards must be the {count} shards 0..{count - 1} of one conversion, each once; got {found}.")
    by_index = sorted(zip(folders, read), key=lambda item: item[1][0]["index"])
    first_summary = by_index[0][1][1]
    for folder, (_, summary) in by_index[1:]:
        for key in sorted(set(first_summary) | set(summary)):
            if key not in _PER_SHARD and first_summary.get(key) != summary.get(key):
                raise ConverterError(
                    f"{folder} was converted with {key} = {summary.get(key)!r} but {by_index[0][0]} with "
                    f"{first_summary.get(key)!r}: the shards must come from one conversion (same options).")
    out = Path(out).expanduser()
    if out.resolve() in {folder.resolve() for folder in folders}:
        raise ConverterError(f"--out {out} is one of the shards: write the merged dataset to a new folder.")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY_FILE).is_file())):
        raise ConverterError(
            f"--out {out} already holds files that the merge did not write: use an empty or new folder.")
    out.mkdir(parents=True, exist_ok=True)

    loaded = [datasets.load_from_disk(str(folder)) for folder, _ in by_index]
    merged = {}
    for name in loaded[0]:
        order = np.concatenate([np.asarray(info["order"][name], dtype=np.int64) for _, (info, _) in by_index])
        split = datasets.concatenate_datasets([dataset_dict[name] for dataset_dict in loaded])
        merged[name] = split.select(np.argsort(order, kind="stable"))
    balanced = by_index[0][1][0]["balanced"]
    if balanced is not None:
        source, label, name = balanced
        merged[name] = merged[source].select(balanced_subset(merged[source][label], seed=first_summary["seed"]))
    dataset_dict = datasets.DatasetDict(merged)

    failures = [row for folder, _ in by_index for row in _read_failures(folder / FAILURES_FILE)]
    sort_failures(failures)
    reductions = sum((Counter(summary.get("decode_reductions", {})) for _, (_, summary) in by_index), Counter())
    info = {key: value for key, value in first_summary.items() if key not in _PER_SHARD}
    info["merged_shards"] = [str(folder) for folder, _ in by_index]
    counts = {name: len(split) for name, split in dataset_dict.items()}
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        commit_dataset(out, dataset_dict, files={FAILURES_FILE: failures_csv(failures),
                                                 SUMMARY_FILE: summary_json(info, counts, failures, reductions)})
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return datasets.load_from_disk(str(out))
