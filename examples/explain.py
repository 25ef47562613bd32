"""What did MaMA align? One heat map per report sentence, over the mammogram; scored against lesion boxes.

    python examples/explain.py --model outputs/pretrain-demo --image exam/L-CC.dcm \
        --report "Breast composition: The breast is extremely dense. Findings: A mass is present." \
        --output_dir runs/explain
    python examples/explain.py --model outputs/pretrain-cbis --dataset data/cbis --split test --row 7 \
        --output_dir runs/explain-cbis

`--fields '{"density": 4, "birads": 4, "laterality": "L", "view": "CC"}'` builds the structured report
(METHOD.md section 3) instead of `--report`. For each sentence the patch-sentence cosine similarity of
the local (SLA) heads is upsampled onto the preprocessed view (oriented, breast-cropped) and saved as
`sentence_XX.png`; `summary.json` lists the sentences, their files and similarity ranges.

Lesion boxes: `--boxes '[[x0, y0, x1, y1], ...]'` in the pixels of `--image`, or the `lesion_boxes` of
a converted dataset's row (`--dataset DIR --split S --row N`, which also gives the image and, without
`--report` / `--fields`, the row's own report). Each sentence's heat map is then scored with the
pointing game (`training.metrics.pointing_game`: is its maximum inside a lesion box?), recorded as
`pointing_hit` per sentence, and the boxes are drawn on the heat maps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report
from modeling_mama.tokenization import split_sentences
from modeling_mama.training.converted import stored_image_options
from modeling_mama.training.metrics import pointing_game, pointing_game_accuracy
from modeling_mama.training.visualization import plot_heat_map, sentence_heat_maps


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved MaMA folder (model + processor).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="A DICOM file or an image file.")
    source.add_argument("--dataset", help="A converted dataset folder (data_scripts/*.py); with --split and --row.")
    parser.add_argument("--split", default="test", help="The split of --dataset (default test).")
    parser.add_argument("--row", type=int, default=0, help="The row of --split (default 0).")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--report", help="Report text; sentences end with '. '.")
    text.add_argument("--fields", help="JSON object of report fields (ReportFields names).")
    parser.add_argument("--boxes", help="JSON list of lesion boxes [x0, y0, x1, y1] in the pixels of --image.")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if args.image is not None and args.report is None and args.fields is None:
        parser.error("--image needs --report or --fields (a dataset row brings its own report).")
    if args.boxes is not None and args.dataset is not None:
        parser.error("--boxes are for --image; a dataset row brings its own lesion_boxes.")
    return args


def view_boxes(boxes, crop_box, flipped: bool, source_width: int, view_size: tuple[int, int]) -> list[list[float]]:
    """Boxes in a source image's pixels -> the processor's view of it (flipped, cropped, resized).

    `crop_box` and `flipped` are the processor's `return_geometry` outputs (the crop in the source's
    own, unflipped coordinates).

    >>> view_boxes([[60, 30, 70, 50]], (30, 20, 70, 100), True, 100, (40, 20))
    [[0.0, 5.0, 5.0, 15.0]]
    """
    x0, y0, x1, y1 = (float(value) for value in crop_box)
    height, width = view_size
    mapped = []
    for box in boxes:
        bx0, by0, bx1, by1 = (float(value) for value in box)
        if flipped:  # mirror both the box and the crop: the view's left is the source's right
            bx0, bx1 = source_width - bx1, source_width - bx0
            left = source_width - x1
        else:
            left = x0
        scale_x, scale_y = width / (x1 - x0), height / (y1 - y0)
        mapped.append([(bx0 - left) * scale_x, (by0 - y0) * scale_y, (bx1 - left) * scale_x, (by1 - y0) * scale_y])
    return mapped


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = MamaModel.from_pretrained(args.model).eval()
    processor = MamaProcessor.from_pretrained(args.model)
    boxes = json.loads(args.boxes) if args.boxes else []
    image, source_name = args.image, args.image
    if args.dataset is not None:
        import datasets

        row = datasets.load_from_disk(args.dataset)[args.split][args.row]
        image, boxes = row["image"], row.get("lesion_boxes") or []
        source_name = f"{args.dataset} {args.split}[{args.row}] ({row['image_id']})"
    if args.fields is not None:
        sentences = build_report(ReportFields(**json.loads(args.fields)))
    elif args.report is not None:
        sentences = split_sentences(args.report)
    else:
        sentences = build_report(ReportFields.from_mapping(row, DATASET_COLUMNS))
    if not sentences:
        raise SystemExit("error: the report has no sentence.")
    # A converted dataset's images are stored oriented and cropped (conversion.json): the processor
    # only resizes them, and their lesion_boxes are in the stored pixels.
    image_kwargs = stored_image_options(args.dataset) if args.dataset is not None else {}
    # A report longer than the token budget keeps its first sentences (with a warning): one map per kept sentence.
    view, similarity = sentence_heat_maps(model, processor, image, sentences, truncation="warn", **image_kwargs)
    boxes_in_view = []
    if boxes:
        geometry = processor.image_processor(image, return_geometry=True, **image_kwargs)
        source_width = int(np.asarray(image).shape[1]) if args.dataset is not None else _source_width(image)
        boxes_in_view = view_boxes(boxes, geometry["crop_boxes"][0].tolist(), bool(geometry["flipped"][0]),
                                   source_width, view.shape)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"image": source_name, "model": args.model, "lesion_boxes": boxes_in_view, "sentences": []}
    for index, (sentence, grid) in enumerate(zip(sentences, similarity)):
        path = plot_heat_map(view, grid, output_dir / f"sentence_{index:02d}.png", title=sentence, boxes=boxes_in_view)
        entry = {"sentence": sentence, "file": path.name, "max_similarity": float(grid.max()),
                 "mean_similarity": float(grid.mean())}
        if boxes_in_view:
            entry["pointing_hit"] = pointing_game(grid, boxes_in_view, image_size=view.shape)
        summary["sentences"].append(entry)
    if boxes_in_view:
        summary["pointing_game"] = pointing_game_accuracy([entry["pointing_hit"] for entry in summary["sentences"]])
    target = output_dir / "summary.json"
    temporary = output_dir / ".summary.json.tmp"
    temporary.write_text(json.dumps(summary, indent=2))
    temporary.replace(target)
    scored = f"; pointing game {summary['pointing_game']:.2f} over the sentences" if boxes_in_view else ""
    print(f"{len(sentences)} heat maps -> {output_dir}{scored}")
    return summary


def _source_width(image) -> int:
    """Width in pixels of an --image file, from its header (a DICOM file's Columns, an image file's size)."""
    from PIL import Image

    from modeling_mama.image_utils_mama import IMAGE_SUFFIXES

    if Path(image).suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(image) as opened:
            return opened.size[0]
    import pydicom

    return int(pydicom.dcmread(image, stop_before_pixels=True).Columns)


if __name__ == "__main__":
    main()
