"""Convert EMBED (as published) into a `datasets.DatasetDict` saved with `save_to_disk`.

    python data_scripts/embed.py --root <dataset folder> --out <folder> [--dicom-root DIR]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

See `modeling_mama.data.converters.embed` for what is read, the labels, the splits and the failures file.
"""

from modeling_mama.data.converters.embed import main

if __name__ == "__main__":
    raise SystemExit(main())
