"""Conversion throughput of the RSNA converter: images/s per worker with 1 and 2 workers, and the decode share.

Writes an RSNA look-alike once: full-field images (3328 x 2560), 12 stored bits, JPEG 2000
lossless, as most of the real RSNA files are. Then it converts it from scratch (empty output
folder, nothing cached) with `--workers 1` and `--workers 2`, side by side in one run, and prints
images/s, images/s per worker, the 2-worker ratio, and images per CPU second (this process and its
workers, all threads): the per-core throughput, which other jobs on the cores disturb much less
than the wall clock (with one worker, the idle core runs decoder threads). The time covers
everything `convert_rsna` does: reading the table, decoding, calibration, orientation, breast crop,
resize to the long side `--image-size`, PNG encoding and saving the DatasetDict.

The decode share is measured in this process, image by image: the CPU time spent reading and
decoding the DICOM file (`read_dataset` + `read_dicom`, at the reductions the converter chooses,
thumbnail included) over that of the whole image step (`preprocess_image` + writing the PNG).

Run: `python bench/bench_convert.py [--images 12] [--image-size 1024] [--data DIR]`
(`--data` keeps the generated look-alike there and reuses it on the next run). Record `uptime`
next to the figures: other processes on the cores change them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import JPEG2000Lossless

from modeling_mama.data.converters import common
from modeling_mama.data.converters.rsna import TRAIN_COLUMNS, convert_rsna
from modeling_mama.data.synthetic import FULL_IMAGE_SIZE, DicomEncoding, mammogram_dataset, render_mammogram

ENCODING = DicomEncoding(bits_stored=12, transfer_syntax=JPEG2000Lossless)


def write_image(job: tuple[str, int, str, str, int]) -> None:
    path, seed, laterality, view, density = job
    pixels = render_mammogram(np.random.default_rng(seed), height=FULL_IMAGE_SIZE[0], width=FULL_IMAGE_SIZE[1],
                              laterality=laterality, view=view, density=density, findings=[], bits_stored=12)
    dataset = mammogram_dataset(pixels, ENCODING, laterality=laterality, view_position=view,
                                tags={"PatientID": Path(path).parent.name})
    temporary = f"{path}.partial"
    dataset.save_as(temporary, enforce_file_format=True)
    os.replace(temporary, path)


def write_lookalike(root: Path, images: int) -> Path:
    """`train.csv` + `train_images/<patient>/<image>.dcm`: 4 views (L/R x CC/MLO) per patient."""
    if (root / "train.csv").is_file() and len(pd.read_csv(root / "train.csv")) == images:
        return root
    rows, jobs = [], []
    for index in range(images):
        patient, view_index = 10000 + index // 4, index % 4
        laterality, view = ("L", "R")[view_index // 2], ("CC", "MLO")[view_index % 2]
        path = root / "train_images" / str(patient) / f"{index + 1}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(path), index, laterality, view, 1 + index % 4))
        rows.append({"patient_id": patient, "image_id": index + 1, "laterality": laterality, "view": view,
                     "age": 60, "cancer": 0, "BIRADS": 1, "density": "ABCD"[index % 4]})
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(write_image, jobs))
    pd.DataFrame(rows, columns=TRAIN_COLUMNS).to_csv(root / "train.csv", index=False)
    return root


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers), all threads."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def time_conversion(root: Path, out: Path, *, workers: int, image_size: int) -> tuple[int, float, float]:
    """Images converted, wall seconds and CPU seconds of one conversion from scratch."""
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    converted = convert_rsna(root, out, workers=workers, image_size=image_size, progress=False)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return sum(len(split) for split in converted.values()), seconds, cpu


def decode_share(paths: list[Path], image_size: int, scratch: Path) -> tuple[float, float, Counter]:
    """CPU seconds per image spent reading and decoding DICOM files, and in the whole image step (one
    process, one decoding thread), and how many images were decoded at each reduction."""
    decode = 0.0

    def timed(function):
        def run(*args, **kwargs):
            nonlocal decode
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                decode += time.process_time() - start
        return run

    total, reductions = 0.0, Counter()
    originals = common.read_dataset, common.read_dicom
    common.read_dataset, common.read_dicom = (timed(function) for function in originals)
    try:
        for path in paths:
            start = time.process_time()
            pixels, laterality, reduction = common.preprocess_image(path, laterality=None, image_size=image_size)
            common.write_png(scratch / "image.png", pixels, laterality=laterality)
            total += time.process_time() - start
            reductions[reduction] += 1
    finally:
        common.read_dataset, common.read_dicom = originals
    return decode / len(paths), total / len(paths), reductions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="full-field images to generate (4 per patient)")
    parser.add_argument("--image-size", type=int, default=1024, help="long side of the stored images")
    parser.add_argument("--data", default=None, help="folder for the generated look-alike (kept and reused)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        root = write_lookalike(Path(args.data) if args.data else scratch / "rsna", args.images)
        print(f"look-alike ready in {time.perf_counter() - start:.1f} s: {root} ({args.images} images, "
              f"{FULL_IMAGE_SIZE[0]}x{FULL_IMAGE_SIZE[1]}, 12-bit JPEG 2000 lossless); "
              f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
        convert_rsna(root, scratch / "warm-up", workers=1, image_size=args.image_size, progress=False, limit=1)
        per_worker = {}
        for workers in (1, 2):
            images, seconds, cpu = time_conversion(root, scratch / f"out-{workers}", workers=workers,
                                                   image_size=args.image_size)
            per_worker[workers] = images / seconds / workers
            print(f"workers {workers}: {images} images in {seconds:.1f} s = {images / seconds:.2f} images/s, "
                  f"{per_worker[workers]:.2f} images/s per worker; {cpu:.1f} CPU s = {images / cpu:.2f} images "
                  "per CPU second")
        print(f"2 workers / 1 worker: {2 * per_worker[2] / per_worker[1]:.2f}x")
        paths = sorted((root / "train_images").rglob("*.dcm"))
        decode, total, reductions = decode_share(paths, args.image_size, scratch)
        decoded_at = ", ".join(f"{count} at 1/{2**reduction}" for reduction, count in sorted(reductions.items()))
        print(f"decode share (1 process, {len(paths)} images; decoded {decoded_at}): {decode:.2f} of "
              f"{total:.2f} CPU s per image = {decode / total:.0%}")
        print(f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
