"""What every converter's command line shares: the common options, running a converter, the summary.

    python data_scripts/<name>.py --root DATASET --out FOLDER [--workers N] [--image-size 1024]
        [--limit N] [--seed 0] [--no-progress] [--delete-cache] [--num-shards N --shard-index i]
        [dataset options]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from modeling_mama.data.converters.common import (
    CONVERTERS,
    DEFAULT_IMAGE_SIZE,
    FAILURES_FILE,
    SUMMARY_FILE,
    ConverterError,
    Shard,
    StorageError,
)


def common_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every converter has: --root, --out, --workers, --image-size, --limit, --seed,
    --no-progress, --delete-cache, --num-shards, --shard-index."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="the dataset folder as published")
    parser.add_argument("--out", required=True,
                        help="folder to write the DatasetDict into (created; re-running resumes)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding DICOM files (default 1)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"long side of the stored images in pixels (default {DEFAULT_IMAGE_SIZE}; 0 = the native "
                             "size, decoded fully); JPEG 2000 files are decoded at reduced resolution when that "
                             "still gives a breast crop at least this long")
    parser.add_argument("--limit", type=int, default=None,
                        help="read only the first N rows of the image table (a quick trial)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level splits (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--delete-cache", action="store_true",
                        help="delete <out>/.cache at the end (a re-run then decodes everything again)")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="split the conversion into this many parts by patient (one per machine or job); "
                             "assemble them with data_scripts/merge.py (default 1: no sharding)")
    parser.add_argument("--shard-index", type=int, default=0,
                        help="which part this run converts, 0 .. --num-shards - 1 (e.g. $SLURM_ARRAY_TASK_ID)")
    return parser


def print_summary(out: Path, dataset_dict) -> None:
    summary = json.loads((out / SUMMARY_FILE).read_text())
    splits = ", ".join(f"{name} {len(split)}" for name, split in dataset_dict.items())
    print(f"{out}: {splits} images; {summary['failures']} failures in {out / FAILURES_FILE}")


def run_converter(name: str, argv: Sequence[str] | None, *, description: str,
                  add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                  options: Sequence[str] = ()) -> int:
    """Parse `argv`, run `CONVERTERS[name]` with the dataset `options` (argument names) and print a summary.

    A `ConverterError` (bad root, missing table or column, mismatched cache...) prints one line and
    returns 2; a `StorageError` (the output folder cannot be written: disk full, read-only, no
    permission) prints one line and returns 1. Per-image problems are in `failures.csv` and do not
    stop the run.
    """
    parser = common_parser(description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    converter = CONVERTERS[name](args.root, **{option: getattr(args, option) for option in options})
    try:
        dataset_dict = converter.convert(args.out, image_size=args.image_size, workers=args.workers,
                                         limit=args.limit, seed=args.seed, progress=not args.no_progress,
                                         keep_cache=not args.delete_cache,
                                         shard=Shard(count=args.num_shards, index=args.shard_index))
    except ConverterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_summary(Path(args.out), dataset_dict)
    return 0
