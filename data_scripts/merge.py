"""Merge the shard folders of a conversion run as `--num-shards N --shard-index i` into one DatasetDict.

    python data_scripts/merge.py --shards <out0> <out1> ... --out <folder>

See `modeling_mama.data.converters.merge` for the checks, the row order and the failures file.
"""

from modeling_mama.data.converters.merge import main

if __name__ == "__main__":
    raise SystemExit(main())
