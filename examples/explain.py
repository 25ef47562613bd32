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
`pointing_hit` per sentence (1 or 0; a share when several cells tie for the maximum) with their mean
`pointing_game`, and the boxes are drawn on the heat maps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.file_utils_mama import write_json_atomic
from modeling_mama.image_utils_mama import boxes_to_view
from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report
from modeling_mama.tokenization import split_sentences
from modeling_mama.training.converted import stored_image_options
from modeling_mama.training.metrics import pointing_game
from modeling_mama.training.visualization import plot_heat_map, sentence_heat_maps


def report_fields(text: str) -> ReportFields:
    """`--fields`: a JSON object of `ReportFields` values; argparse prints what is wrong with it."""
    example = 'e.g. --fields \'{"density": 4, "birads": 1, "laterality": "L"}\' (in single quotes for the shell)'
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({error.msg} at character {error.pos}); "
                                         f"{example}.") from None
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object of report fields; {example}.")
    names = [field.name for field in dataclasses.fields(ReportFields)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown report field(s) {', '.join(unknown)}; the fields are "
                                         f"{', '.join(names)}.")
    try:
        return ReportFields(**values)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{error}; {example}.") from None


def lesion_boxes(text: str) -> list[list[float]]:
    """`--boxes`: a JSON list of [x0, y0, x1, y1] boxes."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({error.msg}); e.g. --boxes "
                                         f"'[[120, 80, 160, 130]]'.") from None
    if not isinstance(values, list) or not all(isinstance(box, list) and len(box) == 4 for box in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of [x0, y0, x1, y1] boxes.")
    return values


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
    text.add_argument("--fields", type=report_fields, help="JSON object of report fields (ReportFields names).")
    parser.add_argument("--boxes", type=lesion_boxes,
                        help="JSON list of lesion boxes [x0, y0, x1, y1] in the pixels of --image.")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if args.image is not None and args.report is None and args.fields is None:
        parser.error("--image needs --report or --fields (a dataset row brings its own report).")
    if args.boxes is not None and args.dataset is not None:
        parser.error("--boxes are for --image; a dataset row brings its own lesion_boxes.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = MamaModel.from_pretrained(args.model).eval()
    processor = MamaProcessor.from_pretrained(args.model)
    boxes = args.boxes or []
    image, source_name, row = args.image, args.image, None
    if args.dataset is not None:
        import datasets

        row = datasets.load_from_disk(args.dataset)[args.split][args.row]
        image, boxes = row["image"], row.get("lesion_boxes") or []
        source_name = f"{args.dataset} {args.split}[{args.row}] ({row['image_id']})"
    if args.fields is not None:
        sentences = build_report(args.fields)
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
        boxes_in_view = boxes_to_view(boxes, geometry["crop_boxes"][0].numpy(), bool(geometry["flipped"][0]),
                                      view.shape, keep_aspect_ratio=processor.image_processor.keep_aspect_ratio
                                      ).tolist()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"image": source_name, "model": args.model, "lesion_boxes": boxes_in_view, "sentences": []}
    for index, (sentence, grid) in enumerate(zip(sentences, similarity)):
        path = plot_heat_map(view, grid, output_dir / f"sentence_{index:02d}.png", title=sentence, boxes=boxes_in_view)
        summary["sentences"].append({"sentence": sentence, "file": path.name, "max_similarity": float(grid.max()),
                                     "mean_similarity": float(grid.mean())})
    if boxes_in_view:
        scored = pointing_game(list(similarity), [boxes_in_view] * len(similarity), image_sizes=view.shape)
        for entry, hit in zip(summary["sentences"], scored["hits"]):
            entry["pointing_hit"] = hit
        summary["pointing_game"] = scored["accuracy"]
    write_json_atomic(output_dir / "summary.json", summary)
    scored_text = f"; pointing game {summary['pointing_game']:.2f} over the sentences" if boxes_in_view else ""
    print(f"{len(similarity)} heat maps -> {output_dir}{scored_text}")
    return summary


if __name__ == "__main__":
    main()
