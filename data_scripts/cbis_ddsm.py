"""Convert CBIS-DDSM (a TCIA download plus its four case-description CSVs) into a `datasets.DatasetDict`.

    python data_scripts/cbis_ddsm.py --root <folder with the CSVs and CBIS-DDSM/> --out <folder>
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.cbis_ddsm` for what is read, the merged reports, the labels, the
official split, the lesion boxes and the failures file.
"""

from __future__ import annotations

from _converter_cli import run_converter


def main(argv=None) -> int:
    return run_converter("cbis_ddsm", argv, description="Convert CBIS-DDSM (as downloaded from TCIA) into a "
                                                        "datasets.DatasetDict.")


if __name__ == "__main__":
    raise SystemExit(main())
