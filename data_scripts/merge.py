"""Merge the shard folders of a conversion run as `--num-shards N --shard-index i` into one DatasetDict.

    python data_scripts/merge.py --shards <out0> <out1> ... --out <folder> [--no-progress]

See `modeling_mama.data.converters.merge` for the checks, the row order and the failures file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from _converter_cli import print_summary

from modeling_mama.data.converters.common import ConverterError
from modeling_mama.data.converters.merge import merge_shards


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Merge the shard folders of a sharded conversion into one DatasetDict.")
    parser.add_argument("--shards", nargs="+", required=True, help="the output folders of shards 0 .. N-1 (any order)")
    parser.add_argument("--out", required=True, help="folder to write the merged DatasetDict into")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        dataset_dict = merge_shards(args.shards, args.out, progress=not args.no_progress)
    except ConverterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(Path(args.out), dataset_dict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
