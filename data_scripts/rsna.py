"""Convert RSNA-Mammo (as published) into a `datasets.DatasetDict` saved with `save_to_disk`.

    python data_scripts/rsna.py --root <dataset folder> --out <folder> [--split-source train.csv|test.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.rsna` for what is read, the labels, the splits and the failures file.
"""

from modeling_mama.data.converters.rsna import main

if __name__ == "__main__":
    raise SystemExit(main())
