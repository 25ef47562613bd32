"""Convert any folder of mammography DICOM files (e.g. a hospital's export) into a `datasets.DatasetDict`.

    python data_scripts/dicom_folder.py --root <folder> --out <folder> [--labels labels.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

`labels.csv` names its images by a `sop_instance_uid` or a `path` column (relative to --root) and may
hold `birads`, `density`, `cancer` and report fields. See `modeling_mama.data.converters.dicom_folder`.
"""

from __future__ import annotations

from _converter_cli import run_converter


def add_arguments(parser) -> None:
    parser.add_argument("--labels", default=None,
                        help="optional CSV of labels and report fields, keyed by sop_instance_uid or path")


def main(argv=None) -> int:
    return run_converter("dicom_folder", argv, description="Convert a folder of mammography DICOM files into a "
                                                           "datasets.DatasetDict.",
                         add_arguments=add_arguments, options=["labels"])


if __name__ == "__main__":
    raise SystemExit(main())
