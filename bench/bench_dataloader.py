"""Does one CPU data-loader worker keep up? Paper-preset training items per second vs bare PNG decoding.

    python bench/bench_dataloader.py [--images 12] [--image-size 1024] [--repeats 3] [--threads 1]

Builds a converted dataset the way the converters store it (synthetic full-field mammograms
rendered at 2048 px, oriented, cropped, shrunk to `--image-size` on the long side, 16-bit PNG in a
`datasets.Dataset`, with the `conversion.json` record), then times, per item, in one process with
one torch thread (a DataLoader worker):

* decode: the item's two stored PNGs decoded to uint16 arrays, nothing else (the limit);
* after: what a worker does now for a paper-preset item (`MultiViewDataset` + `MamaDataCollator`):
  both views decoded, paper augmentation at 518, the report built with metadata masking and
  tokenised (144-token budget) through the processor; stored images are neither re-oriented nor
  re-cropped, and the augmentation pipeline is built once per process;
* before: the same item the way the code did it before (emulated here): orientation (pixel-mass rule)
  and Otsu crop of the stored image again, a new augmentation pipeline for every image, and the
  augmentation run on three equal channels (hue and blur three times).

Each variant is timed back to back on each item in every pass and the best pass per item counts.
The tokenizer is a byte-level BPE trained on the reports (BioMedLM's needs the Hub; its cost per
report is of the same order).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_dataset(folder: Path, count: int, image_size: int):
    """A converted-style split: `count` images, 2 per exam (CC and MLO of one breast)."""
    import datasets

    from modeling_mama.data.converters.common import STORED_IMAGES, features, preprocess_image
    from modeling_mama.data.synthetic import render_mammogram

    rng = np.random.default_rng(0)
    columns = {name: [] for name in features()}
    for index in range(count):
        laterality, view = "LR"[(index // 2) % 2], ("CC", "MLO")[index % 2]
        density = 1 + index % 4
        raw = render_mammogram(rng, height=2048, width=1600, laterality=laterality, view=view, density=density,
                               findings=[])
        stored, _ = preprocess_image(raw, laterality=laterality, image_size=image_size)
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format="PNG")
        row = {"patient_id": f"p{index // 4}", "exam_id": f"e{index // 4}", "image_id": f"i{index}",
               "laterality": laterality, "view": view, "source_path": "", "image": {"bytes": buffer.getvalue(),
                                                                                    "path": None},
               "procedure": "MG Screening Bilateral", "reason": "screening", "race": "White",
               "ethnicity": "Non-Hispanic or Latino", "age": 50 + index, "image_type": "2D",
               "report_density": density, "report_birads": 1, "mass_shape": None, "mass_density": None,
               "calc_find": None, "calc_distribution": None, "birads": 1, "density": density, "cancer": 0}
        for name in columns:
            columns[name].append(row[name])
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=features())}).save_to_disk(
        str(folder))
    (folder / "conversion.json").write_text(json.dumps({"converter": "bench", "image_size": image_size,
                                                        **STORED_IMAGES}))
    return datasets.load_from_disk(str(folder))["train"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="stored images (items)")
    parser.add_argument("--image-size", type=int, default=1024, help="stored long side (converters' default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the best per item counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import datasets

    from modeling_mama import MamaDataCollator, MamaImageProcessor, MamaProcessor, MultiViewDataset
    from torchvision.transforms import v2

    from modeling_mama.image_processing_mama import MamaTrainTransform, _cached_transform
    from modeling_mama.reports import build_report
    from modeling_mama.tokenization import train_report_tokenizer
    from modeling_mama.training.multiview import report_fields_from_row

    with tempfile.TemporaryDirectory() as directory:
        split = build_dataset(Path(directory) / "converted", args.images, args.image_size)
        rows = split.remove_columns("image")
        tokenizer = train_report_tokenizer([s for row in rows for s in build_report(report_fields_from_row(row))] * 20,
                                           vocab_size=1024)
        processor = MamaProcessor(MamaImageProcessor(), tokenizer, max_length=144)  # paper: 518, paper augmentation
        collator = MamaDataCollator(processor)
        after = MultiViewDataset(split, processor)  # paper: same_exam, 0.5, mask 0.8, augmented
        before = MultiViewDataset(split, processor, image_options={})  # orient + crop the stored images again
        png = split.cast_column("image", datasets.Image(decode=False))

        extra_rows = [after[index]["extra_index"] for index in range(args.images)]
        stored_bytes = [png[index]["image"]["bytes"] for index in range(args.images)]

        def decode(index: int) -> None:
            for row in (index, index if extra_rows[index] < 0 else extra_rows[index]):
                with Image.open(io.BytesIO(stored_bytes[row])) as image:
                    np.asarray(image)

        def item_after(index: int) -> None:
            collator([after[index]])

        one_channel = MamaTrainTransform._after_crop

        def three_channels(transform, pixels):  # the former code: everything on three equal channels
            return v2.Compose(transform.transform.transforms[1:])(pixels.repeat(3, 1, 1))

        def item_before(index: int) -> None:
            MamaTrainTransform._after_crop = three_channels
            try:
                _cached_transform.cache_clear()  # a new augmentation pipeline per image, as before
                item = before[index]
                _cached_transform.cache_clear()
                collator([item])
            finally:
                MamaTrainTransform._after_crop = one_channel

        variants = {"decode": decode, "after": item_after, "before": item_before}
        item_after(0)
        item_before(0)  # warm-up (torch kernels, tokenizer)
        best = {name: [float("inf")] * args.images for name in variants}
        for _ in range(args.repeats):
            for index in range(args.images):
                for name, function in variants.items():
                    start = time.perf_counter()
                    function(index)
                    best[name][index] = min(best[name][index], time.perf_counter() - start)
        size = Image.open(io.BytesIO(stored_bytes[0])).size
    seconds = {name: sum(times) / args.images for name, times in best.items()}
    print(f"{args.images} items, stored long side {args.image_size} (first image {size[0]}x{size[1]}), paper preset "
          f"(518, paper augmentation, both views, 144-token report), {args.threads} torch thread(s), best of "
          f"{args.repeats} passes")
    print(f"{'variant':10s} {'ms/item':>9s} {'items/s':>9s} {'images/s':>9s} {'x decode':>9s}")
    for name in ("decode", "before", "after"):
        print(f"{name:10s} {seconds[name] * 1000:9.1f} {1 / seconds[name]:9.2f} {2 / seconds[name]:9.2f} "
              f"{seconds[name] / seconds['decode']:9.2f}")
    print(f"after / before: {seconds['after'] / seconds['before']:.2f}; a batch of 36 items (the paper's per-GPU "
          f"batch) costs {36 * seconds['after']:.1f} worker-seconds")


if __name__ == "__main__":
    sys.exit(main())
