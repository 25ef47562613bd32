"""Zero-shot evaluation of a MaMA model with the paper's protocol (METHOD.md section 7).

    python examples/zero_shot.py --model outputs/pretrain-demo --dataset DATA --task density

`--dataset` is a folder written by data_scripts/*.py; the split (default `test`; EMBED also has
`test_balanced`) is scored image by image with prompts built from each image's own metadata
(`--no_metadata` for class-only prompts; `--prompt_variants N` to average N extra phrasings per class).
For the cancer task, `--breast_level` also reports breast-level results (mean of each breast's views,
RSNA style). `--tiles` scores each image's full-resolution breast tiles against the class prompts and
aggregates them per image (`--tile_aggregation`: default max for cancer, a finding-present task,
and mean for BI-RADS and density). Prompts use the model processor's saved token budget (or
`--max_length`); `--truncation warn` drops a too-long prompt's last sentences instead of stopping.
Writes `zero_shot_<task>.json`, a confusion matrix and a ROC curve into `--output_dir`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.training.finetuning import write_json
from modeling_mama.reports import CLASS_NAMES
from modeling_mama.tokenization import TRUNCATION_MODES
from modeling_mama.training.metrics import (
    breast_level,
    classification_metrics,
    softmax_scores,
)
from modeling_mama.training.visualization import plot_confusion_matrix, plot_roc
from modeling_mama.labels import get_task
from modeling_mama.training.zero_shot import zero_shot_logits
from modeling_mama.zero_shot_scoring import AGGREGATIONS, default_tile_aggregation


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved MaMA folder (model + processor).")
    parser.add_argument("--dataset", required=True, help="A converted dataset folder.")
    parser.add_argument("--task", required=True, choices=sorted(CLASS_NAMES))
    parser.add_argument("--split", default="test")
    parser.add_argument("--output_dir", default=None, help="Default: <model>/zero_shot.")
    parser.add_argument("--no_metadata", action="store_true", help="Class-only prompts (no metadata prefix).")
    parser.add_argument("--prompt_variants", type=int, default=0, help="Extra phrasings per class to average.")
    parser.add_argument("--breast_level", action="store_true", help="Also aggregate views per breast (cancer).")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="Images per batch (with --tiles each image also brings its grid of tiles: use fewer).")
    parser.add_argument("--max_length", type=int, default=None,
                        help="Prompt token budget (default: the one saved with the model's processor).")
    parser.add_argument("--truncation", choices=TRUNCATION_MODES, default="error",
                        help="A prompt over the budget: error (default) or warn (drop its last whole sentences).")
    parser.add_argument("--tiles", action="store_true", help="Score full-resolution tiles and aggregate per image.")
    parser.add_argument("--tile_aggregation", choices=AGGREGATIONS, default=None,
                        help="Tiles -> image (default: max for cancer, mean for birads / density).")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    splits = load_from_disk(args.dataset)
    if args.split not in splits:
        raise SystemExit(f"error: the dataset has no split {args.split!r}; it has {sorted(splits)}.")
    split = splits[args.split]
    task = get_task(args.task)
    column = task.label_column
    if column not in split.column_names or not any(task.label_to_class(value) is not None
                                                   for value in split[column]):
        found = "has no" if column not in split.column_names else "has an empty"
        raise SystemExit(f"error: the {args.split!r} split of {args.dataset} {found} {column!r} column: no image "
                         f"has a {args.task} label to score. Pick a task this dataset labels, or another --split.")
    model = MamaModel.from_pretrained(args.model).eval()
    processor = MamaProcessor.from_pretrained(args.model)
    # The processor's saved budget is the one the model was trained with (the report's; the paper's
    # cancer prompts alone fit 72 tokens, but with the metadata prefix they need the report's 144).
    max_length = args.max_length or processor.max_length
    tile_aggregation = (args.tile_aggregation or default_tile_aggregation(args.task)) if args.tiles else None
    logits, labels, rows = zero_shot_logits(
        model, processor, split, args.task, use_metadata=not args.no_metadata,
        prompt_variants=args.prompt_variants, batch_size=args.batch_size, max_length=max_length,
        truncation=args.truncation, tiles=args.tiles, tile_aggregation=tile_aggregation,
    )
    names = CLASS_NAMES[args.task]
    results = {"task": args.task, "split": args.split, "num_images": int(len(labels)),
               "use_metadata": not args.no_metadata, "prompt_variants": args.prompt_variants,
               "max_length": max_length, "tiles": args.tiles, "tile_aggregation": tile_aggregation,
               "image_level": classification_metrics(logits, labels, num_classes=len(names))}
    if args.breast_level:
        subset = split.select(rows)
        breast_ids, breast_scores, breast_labels = breast_level(
            softmax_scores(logits), labels, subset["patient_id"], subset["laterality"],
        )
        results["breast_level"] = classification_metrics(breast_scores, breast_labels, num_classes=len(names),
                                                         from_logits=False)
        results["breast_level"]["num_breasts"] = int(len(breast_ids))
    output_dir = Path(args.output_dir or Path(args.model) / "zero_shot")
    output_dir.mkdir(parents=True, exist_ok=True)
    image_level = results["image_level"]
    plot_confusion_matrix(np.asarray(image_level["confusion_matrix"]), names,
                          output_dir / f"zero_shot_{args.task}_confusion.png", title=f"zero-shot {args.task}")
    plot_roc(softmax_scores(logits), labels, names, output_dir / f"zero_shot_{args.task}_roc.png",
             title=f"zero-shot {args.task}")
    target = write_json(results, output_dir / f"zero_shot_{args.task}.json")  # strict JSON: nan is null
    print(f"{args.task} ({args.split}, {len(labels)} images): balanced accuracy "
          f"{image_level['balanced_accuracy']:.3f}, AUC {image_level['auc']:.3f} -> {target}")
    return results


if __name__ == "__main__":
    main()
