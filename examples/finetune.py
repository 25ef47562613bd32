"""Full fine-tune of a pre-trained MaMA image tower with a new linear head.

    python examples/finetune.py --model PRETRAINED --dataset DATA --task birads --output_dir OUT
    python examples/finetune.py --model PRETRAINED --dataset DATA --task density --train_fraction 0.1 \
        --output_dir OUT
    accelerate launch examples/finetune.py --model PRETRAINED --dataset DATA --task cancer --output_dir OUT

The same arguments and outputs as `examples/linear_probe.py` (the paper's recipe by default,
class-balanced sampling, `--train_fraction`, `--random_init`, `--test_split`, `--augment`, every
`TrainingArguments` option; `metrics.json`, `confusion_matrix.png` and `roc.png` in `--output_dir`);
here the whole image tower trains. To keep the best checkpoint on the validation split:
`--eval_strategy steps --save_strategy steps --load_best_model_at_end --metric_for_best_model auc`.
The library side (datasets, balanced sampler, trainer, evaluation) is
`modeling_mama.training.finetuning`; this script parses the arguments and runs it.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser, set_seed

from modeling_mama.training.finetuning import (
    BalancedTrainer,
    ClassificationDataset,
    ClassificationTrainingArguments,
    build_classifier,
    check_task,
    compute_metrics_for,
    evaluate_classifier,
    load_image_processor,
    stratified_fraction,
    write_json,
)
from modeling_mama.hub import merge_datasets, recorded_datasets
from modeling_mama.labels import get_task
from modeling_mama.training.metrics import softmax_scores
from modeling_mama.training.visualization import plot_confusion_matrix, plot_roc

logger = logging.getLogger("finetune")


@dataclass
class ClassificationArguments:
    model: str = field(metadata={"help": "A saved MaMA folder (MamaModel or MamaForImageClassification)."})
    dataset: str = field(metadata={"help": "A converted dataset folder (data_scripts/*.py): train and test splits."})
    task: str = field(default="density", metadata={"help": "birads | density | cancer"})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Share of the train split (stratified, seeded): 0.01, 0.1, 1.0."})
    random_init: bool = field(
        default=False, metadata={"help": "Same architecture as --model, random weights (baseline)."})
    augment: bool = field(
        default=True, metadata={"help": "The paper's training augmentation (--augment false: plain resize)."})
    test_split: str = field(
        default="test", metadata={"help": "Split scored at the end (EMBED BI-RADS: test_balanced)."})
    training_datasets: str | None = field(
        default=None, metadata={"help": "Comma-separated names added to the training data recorded in the saved "
                                        "config (the dataset's own conversion.json and the pretrained model's "
                                        "record are always kept)."})


def print_table(results: dict[str, Any]) -> None:
    test = results["test"]
    print(f"\n{results['setting']} on {results['task']}: trained on {results['num_train_images']} images "
          f"({100 * results['train_fraction']:g}% of train), tested on {test['num_images']} "
          f"({results['test_split']} split)")
    rows = [("balanced accuracy", test["balanced_accuracy"]), ("AUC", test["auc"]), ("accuracy", test["accuracy"])]
    if "sensitivity" in test:
        rows += [("sensitivity", test["sensitivity"]), ("specificity", test["specificity"]),
                 ("spec @ 80% sens", test["specificity_at_80_sensitivity"]), ("pF1", test["pf1"])]
    for name, value in rows:
        print(f"  {name:18s} {value:7.3f}")


def run_classification(argv: Sequence[str] | None, *, freeze_image_tower: bool) -> dict[str, Any]:
    """Train, test and report one probe (`freeze_image_tower=True`) or fine-tune run; returns the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ClassificationArguments, ClassificationTrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    check_task(args.task)
    if not 0.0 < args.train_fraction <= 1.0:
        raise ValueError(f"--train_fraction must be in (0, 1], got {args.train_fraction}.")
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    started = time.time()

    from datasets import load_from_disk

    if not (Path(args.dataset) / "dataset_dict.json").exists():
        raise ValueError(f"{args.dataset} is not a converted dataset folder (no dataset_dict.json); "
                         "write one with data_scripts/*.py.")
    splits = load_from_disk(args.dataset)
    missing = {"train", args.test_split} - set(splits)
    if missing:
        raise ValueError(f"The dataset at {args.dataset} lacks the split(s) {sorted(missing)}; "
                         f"it has {sorted(splits)}.")

    model = build_classifier(args.model, args.task, random_init=args.random_init)
    # The saved classifier is derived from the pretrained weights' data (unless random) and this dataset.
    model.config.training_datasets = merge_datasets(
        [] if args.random_init else model.config.training_datasets, recorded_datasets(args.dataset),
        args.training_datasets)
    if freeze_image_tower:
        model.freeze_image_tower()
    image_processor = load_image_processor(args.model, model.config)
    image_processor.training_datasets = list(model.config.training_datasets)

    train_full = ClassificationDataset(splits["train"], image_processor, args.task, augment=args.augment)
    test_dataset = ClassificationDataset(splits[args.test_split], image_processor, args.task)
    for name, dataset in (("train", train_full), (args.test_split, test_dataset)):
        if len(dataset) == 0:
            raise ValueError(f"The {name} split of {args.dataset} has no image with a {args.task} label.")
    train_dataset = train_full.select(stratified_fraction(train_full.labels, args.train_fraction, training_args.seed))
    eval_dataset = None
    if "validation" in splits and training_args.eval_strategy != "no":
        eval_dataset = ClassificationDataset(splits["validation"], image_processor, args.task)
    logger.info("%s: %d of %d labelled train images (class counts %s)", args.task, len(train_dataset),
                len(train_full), np.bincount(train_dataset.labels, minlength=model.config.num_labels).tolist())
    present = np.unique(train_dataset.labels)
    if present.size < 2:
        warnings.warn(f"The train split of {args.dataset} has only one {args.task} class "
                      f"({get_task(args.task).class_names[int(present[0])]}): the classifier can only learn to "
                      "predict it, and its test metrics say nothing about the image tower. Use data with at least "
                      "two classes.", UserWarning, stacklevel=2)

    trainer = BalancedTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        compute_metrics=compute_metrics_for(model.config.num_labels),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)

    results: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        image_processor.save_pretrained(output_dir)
        model = trainer.accelerator.unwrap_model(trainer.model)
        test, logits, labels = evaluate_classifier(model, image_processor, test_dataset, args.task,
                                                   batch_size=training_args.per_device_eval_batch_size)
        class_names = list(get_task(args.task).class_names)
        results = {
            "setting": "linear probe" if freeze_image_tower else "fine-tune",
            "task": args.task, "model": str(args.model), "random_init": args.random_init,
            "dataset": str(args.dataset), "test_split": args.test_split, "train_fraction": args.train_fraction,
            "num_train_images": len(train_dataset), "class_names": class_names,
            "test": test, "train": train_result.metrics,
            "wall_time_seconds": round(time.time() - started, 1),
        }
        write_json(results, output_dir / "metrics.json")
        plot_confusion_matrix(test["confusion_matrix"], class_names, output_dir / "confusion_matrix.png",
                              title=f"{results['setting']}, {args.task} ({args.test_split})")
        plot_roc(softmax_scores(logits), labels, class_names, output_dir / "roc.png")
        print_table(results)
        print(f"\nsaved to {output_dir}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Full fine-tune: image tower and head train together."""
    return run_classification(argv, freeze_image_tower=False)


if __name__ == "__main__":
    main()
