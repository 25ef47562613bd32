"""Convert EMBED (as published) into a `datasets.DatasetDict` saved with `save_to_disk`.

    python data_scripts/embed.py --root <dataset folder> --out <folder> [--dicom-root DIR]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.embed` for what is read, the labels, the splits and the failures file.
"""

from __future__ import annotations

from _converter_cli import run_converter


def add_arguments(parser) -> None:
    parser.add_argument("--dicom-root", default=None,
                        help="folder holding cohort_1/, cohort_2/ (default: --root); anon_dicom_path is re-rooted there")


def main(argv=None) -> int:
    return run_converter("embed", argv, description="Convert EMBED (as published) into a datasets.DatasetDict.",
                         add_arguments=add_arguments, options=["dicom_root"])


if __name__ == "__main__":
    raise SystemExit(main())
