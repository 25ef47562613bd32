"""Convert VinDr-Mammo (as published) into a `datasets.DatasetDict` saved with `save_to_disk`.

    python data_scripts/vindr.py --root <dataset folder> --out <folder>
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.vindr` for what is read, the labels, the splits and the failures file.
"""

from __future__ import annotations

from _converter_cli import run_converter


def main(argv=None) -> int:
    return run_converter("vindr", argv, description="Convert VinDr-Mammo (as published) into a datasets.DatasetDict.")


if __name__ == "__main__":
    raise SystemExit(main())
