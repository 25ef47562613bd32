"""Convert RSNA-Mammo (as published) into a `datasets.DatasetDict` saved with `save_to_disk`.

    python data_scripts/rsna.py --root <dataset folder> --out <folder> [--split-source train.csv|test.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.rsna` for what is read, the labels, the splits and the failures file.
"""

from __future__ import annotations

from _converter_cli import run_converter

from modeling_mama.data.converters.rsna import SPLIT_SOURCES


def add_arguments(parser) -> None:
    parser.add_argument("--split-source", choices=SPLIT_SOURCES, default="train.csv",
                        help="train.csv (labels; split 70/10/20 by patient) or test.csv (no labels; one test split)")


def main(argv=None) -> int:
    return run_converter("rsna", argv, description="Convert RSNA-Mammo (as published) into a datasets.DatasetDict.",
                         add_arguments=add_arguments, options=["split_source"])


if __name__ == "__main__":
    raise SystemExit(main())
