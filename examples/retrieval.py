"""Image <-> report retrieval of a MaMA model on a converted dataset split.

    python examples/retrieval.py --model outputs/pretrain-demo --dataset DATA [--split test] [--ks 1,5,10]

Every image of the split queries the split's distinct reports (each image's own report is the one
pre-training builds from its row, unmasked), and every report queries the images; images sharing one
report text are all correct for it. Prints recall@k both ways next to chance, and writes
`retrieval.json` into `--output_dir` (default `<model>/retrieval`). The library side is
`modeling_mama.training.retrieval`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import load_from_disk

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.tokenization import TRUNCATION_MODES
from modeling_mama.training.finetuning import write_json
from modeling_mama.training.retrieval import evaluate_retrieval


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved MaMA folder (model + processor).")
    parser.add_argument("--dataset", required=True, help="A converted dataset folder (data_scripts/*.py).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ks", default="1,5,10", help="Comma-separated k of recall@k.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=None,
                        help="Report token budget (default: the one saved with the model's processor).")
    parser.add_argument("--truncation", choices=TRUNCATION_MODES, default="error",
                        help="A report over the budget: error (default) or warn (drop its last whole sentences).")
    parser.add_argument("--output_dir", default=None, help="Default: <model>/retrieval.")
    args = parser.parse_args(argv)
    try:
        args.ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        parser.error(f"--ks must be comma-separated whole numbers, got {args.ks!r}.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    splits = load_from_disk(args.dataset)
    if args.split not in splits:
        raise SystemExit(f"error: the dataset has no split {args.split!r}; it has {sorted(splits)}.")
    model = MamaModel.from_pretrained(args.model).eval()
    processor = MamaProcessor.from_pretrained(args.model)
    results = {"split": args.split, "max_length": args.max_length or processor.max_length}
    results.update(evaluate_retrieval(model, processor, splits[args.split], ks=args.ks, batch_size=args.batch_size,
                                      max_length=args.max_length, truncation=args.truncation))
    output_dir = Path(args.output_dir or Path(args.model) / "retrieval")
    write_json(results, output_dir / "retrieval.json")  # strict JSON (nan is null), atomic
    images, reports = results["num_images"], results["num_reports"]
    print(f"retrieval on {images} images and {reports} distinct reports ({args.split} split)")
    # A random ranking finds one of a query's correct candidates in the top k with probability about k / R
    # both ways (an image has one correct report among R; a report about N / R correct images among N).
    print(f"{'k':>4s} {'image->report':>14s} {'report->image':>14s} {'chance':>7s}")
    for k in args.ks:
        print(f"{k:4d} {results[f'image_to_report_recall@{k}']:14.3f} {results[f'report_to_image_recall@{k}']:14.3f} "
              f"{min(1.0, k / reports):7.3f}")
    print(f"written to {output_dir / 'retrieval.json'}")
    return results


if __name__ == "__main__":
    main()
