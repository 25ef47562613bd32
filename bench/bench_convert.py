"""Conversion throughput (images/s) of the RSNA converter with 1 and 2 worker processes.

Writes an RSNA look-alike with full-field images (3328x2560, mostly JPEG 2000 lossless like the
real data) once, then converts it from scratch (empty output folder, so nothing is cached) with
`--workers 1` and `--workers 2`, and prints images/s for each and the speed-up. The time covers
everything `convert_rsna` does: reading the table, decoding, calibration, orientation, breast crop,
resize to the long side `--image-size`, PNG encoding, and saving the DatasetDict.

Run: `python bench/bench_convert.py [--patients 3] [--input-size full] [--image-size 1024] [--data DIR]`
(`--data` keeps the generated look-alike there and reuses it on the next run).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from modeling_mama.data.converters.rsna import convert_rsna
from modeling_mama.data.synthetic import generate_rsna


def time_conversion(root: Path, out: Path, *, workers: int, image_size: int) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    converted = convert_rsna(root, out, workers=workers, image_size=image_size, progress=False)
    seconds = time.perf_counter() - start
    return sum(len(split) for split in converted.values()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3, help="RSNA patients to generate (about 4 images each)")
    parser.add_argument("--input-size", default="full", help="'HxW' of the generated DICOMs or 'full' (3328x2560)")
    parser.add_argument("--image-size", type=int, default=1024, help="long side of the stored images")
    parser.add_argument("--data", default=None, help="folder for the generated look-alike (kept and reused)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(args.data) if args.data else Path(scratch) / "rsna"
        start = time.perf_counter()
        root = generate_rsna(data, num_patients=args.patients, image_size=args.input_size, workers=2, progress=False)
        print(f"look-alike ready in {time.perf_counter() - start:.1f} s: {root}")
        convert_rsna(root, Path(scratch) / "warm-up", workers=1, image_size=args.image_size, progress=False, limit=1)
        results = {}
        for workers in (1, 2):
            images, seconds = time_conversion(root, Path(scratch) / f"out-{workers}", workers=workers,
                                              image_size=args.image_size)
            results[workers] = images / seconds
            print(f"workers {workers}: {images} images in {seconds:.1f} s = {results[workers]:.2f} images/s")
        print(f"speed-up with 2 workers: {results[2] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
