"""Convert CMMD (a TCIA download plus its clinical sheet) into a `datasets.DatasetDict`.

    python data_scripts/cmmd.py --root <folder with CMMD/ and the clinical sheet> --out <folder>
        [--clinical CMMD_clinicaldata_revision.xlsx] [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.cmmd` for what is read, the join, the labels, the reports and the
failures file.
"""

from __future__ import annotations

from _converter_cli import run_converter


def add_arguments(parser) -> None:
    parser.add_argument("--clinical", default=None,
                        help="the clinical sheet (CMMD_clinicaldata_revision.xlsx or its CSV export); "
                             "default: found at or below --root")


def main(argv=None) -> int:
    return run_converter("cmmd", argv, description="Convert CMMD (as downloaded from TCIA) into a datasets.DatasetDict.",
                         add_arguments=add_arguments, options=["clinical"])


if __name__ == "__main__":
    raise SystemExit(main())
