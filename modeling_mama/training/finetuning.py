"""Linear probe and full fine-tune of MaMA's image tower on a converted dataset (METHOD.md section 7).

Both settings train `MamaForImageClassification` (the image tower, its pooled feature and a new
linear head) with the transformers `Trainer`; the probe freezes the tower first, the fine-tune does
not. The paper's recipe is the default of `ClassificationTrainingArguments`: SGD (momentum 0.9,
weight decay 1e-3), lr 5e-4 with 100 warm-up steps and a cosine decay to 1e-5, 8000 steps, batch 36,
and class-balanced sampling (each image drawn with weight 1 / its class count, so every class is
drawn equally often). `--train_fraction` trains on a seeded, class-stratified subsample of the train
split (the data-efficiency runs: 1%, 10%, 100%). At the end the test split (`--test_split`) is
scored with `classification_metrics` (one softmax) and `metrics.json`, `confusion_matrix.png` and
`roc.png` are written next to the saved model. With `--eval_strategy steps` the validation split is
scored during training (bACC, AUC), so `--load_best_model_at_end --metric_for_best_model auc` works.

    python examples/linear_probe.py --model PRETRAINED --dataset DATA --task density --output_dir OUT
    python examples/finetune.py --model PRETRAINED --dataset DATA --task birads --train_fraction 0.1 --output_dir OUT

>>> stratified_fraction([0, 0, 0, 0, 1, 1, 2], 0.5, seed=0).size   # 2 of class 0, 1 of class 1, 1 of class 2
4
>>> class_balanced_weights([0, 0, 0, 1]).tolist()
[0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm
from transformers import HfArgumentParser, TrainingArguments, set_seed

from ..configuration_mama import MamaConfig
from ..hub import merge_datasets, recorded_datasets
from ..image_processing_mama import MamaImageProcessor
from .metrics import classification_metrics, softmax_scores
from ..modeling_mama import MamaForImageClassification
from .trainer import ConvertedCheckpointsTrainer, check_max_steps
from .visualization import plot_confusion_matrix, plot_roc
from .zero_shot import label_to_class

logger = logging.getLogger(__name__)

# Class names in class-index order (the index is `label_to_class(task, label)`).
TASK_CLASS_NAMES = {
    "birads": [f"BI-RADS {category}" for category in range(7)],
    "density": ["A (fatty)", "B (scattered)", "C (heterogeneous)", "D (extremely dense)"],
    "cancer": ["negative", "positive"],
}
TASKS = tuple(TASK_CLASS_NAMES)


def _check_task(task: str) -> None:
    if task not in TASK_CLASS_NAMES:
        raise ValueError(f"Unknown task {task!r}; expected one of {list(TASKS)}.")


# --------------------------------------------------------------------------------- sampling rules
def stratified_fraction(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Positions (sorted) of a seeded, class-stratified subsample of `labels`.

    Each class present keeps `round(fraction * count)` of its members, and at least one, drawn
    without replacement by `numpy.random.default_rng(seed)`; `fraction=1.0` keeps everything.

    >>> stratified_fraction([0] * 10 + [1] * 3, 0.1, seed=0).size   # 1 of class 0, and class 1 kept
    2
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}.")
    labels = np.asarray(labels, dtype=np.int64)
    if fraction == 1.0:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, math.floor(fraction * members.size + 0.5))
        kept.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def class_balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """Per-sample weights 1 / (number of samples of that class): every class weighs 1 in total.

    >>> class_balanced_weights([2, 0, 2]).tolist()
    [0.5, 1.0, 0.5]
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("class_balanced_weights needs at least one label.")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].astype(np.float64)


# ------------------------------------------------------------------------------------------ data
class ClassificationDataset(Dataset):
    """One converted split (DESIGN.md schema) as `{"pixel_values", "labels"}` items for one task.

    Rows without a label for the task are skipped; `labels` holds the class index of every item
    (`label_to_class`: BI-RADS 0-6 -> 0-6, density 1-4 -> 0-3, cancer 0/1). With `augment=True`
    each item gets the processor's training augmentation (METHOD.md section 5), else the evaluation
    resize.

    Args:
        split: a `datasets.Dataset` with an `image` column and the task's label column.
        processor: a `MamaImageProcessor` (or a `MamaProcessor`, whose image processor is used).
        task: `"birads"`, `"density"` or `"cancer"`.
        augment: apply the training augmentation.
    """

    def __init__(self, split, processor, task: str, *, augment: bool = False):
        _check_task(task)
        missing = {"image", task} - set(split.column_names)
        if missing:
            raise ValueError(f"The dataset split lacks column(s) {sorted(missing)} needed for the {task} task; "
                             "convert the dataset with data_scripts/*.py.")
        self.image_processor = getattr(processor, "image_processor", processor)
        self.task = task
        self.augment = augment
        classes = [label_to_class(task, value) for value in split[task]]
        self.rows = np.asarray([row for row, label in enumerate(classes) if label is not None], dtype=np.int64)
        self.labels = np.asarray([label for label in classes if label is not None], dtype=np.int64)
        # Decode only the image when an item is drawn.
        self.images = split.select_columns(["image"])

    @property
    def num_classes(self) -> int:
        return len(TASK_CLASS_NAMES[self.task])

    def select(self, positions: Sequence[int]) -> "ClassificationDataset":
        """The items at `positions` (e.g. `stratified_fraction(dataset.labels, ...)`), as a new dataset."""
        subset = copy.copy(self)
        positions = np.asarray(positions, dtype=np.int64)
        subset.rows, subset.labels = self.rows[positions], self.labels[positions]
        return subset

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        image = self.images[int(self.rows[item])]["image"]
        pixel_values = self.image_processor.preprocess(
            image, augment=self.augment, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "labels": torch.tensor(int(self.labels[item]))}


# --------------------------------------------------------------------------------------- trainer
class BalancedSampler(WeightedRandomSampler):
    """A `WeightedRandomSampler` (with replacement, `len(weights)` draws per epoch) whose draws are
    fixed by `(seed, epoch)`: every process draws the same indices, and a resumed run the same batches."""

    def __init__(self, weights: Sequence[float], seed: int, num_samples: int | None = None):
        super().__init__(weights, num_samples if num_samples is not None else len(weights), replacement=True)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(state))
        return super().__iter__()


class BalancedTrainer(ConvertedCheckpointsTrainer):
    """A `Trainer` whose training batches are class-balanced (`BalancedSampler` with
    `class_balanced_weights`); everything else is the standard `Trainer`.

    `sample_weights` default to `class_balanced_weights(train_dataset.labels)`.
    """

    def __init__(self, *args, sample_weights: Sequence[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if sample_weights is None and self.train_dataset is not None:
            labels = getattr(self.train_dataset, "labels", None)
            if labels is None:
                raise ValueError("BalancedTrainer needs `sample_weights`, or a train_dataset with a `labels` "
                                 "attribute (e.g. ClassificationDataset).")
            sample_weights = class_balanced_weights(labels)
        self.sample_weights = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.sample_weights is None or len(self.sample_weights) != len(train_dataset):
            raise ValueError(f"BalancedTrainer has {0 if self.sample_weights is None else len(self.sample_weights)} "
                             f"sample weights for a train dataset of {len(train_dataset)} items.")
        return BalancedSampler(self.sample_weights, seed=self.args.seed)


# ------------------------------------------------------------------------------------- arguments
@dataclass
class ClassificationTrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults are the paper's probe / fine-tune recipe (METHOD.md section 7)."""

    learning_rate: float = field(default=5e-4, metadata={"help": "Initial learning rate (paper 5e-4)."})
    weight_decay: float = field(default=1e-3, metadata={"help": "Weight decay (paper 1e-3)."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (paper: SGD with momentum, see optim_args)."})
    optim_args: str | None = field(default="momentum=0.9",
                                   metadata={"help": "Optimizer arguments (paper: momentum=0.9)."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Paper: cosine down to min_lr."})
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"min_lr": 1e-5},
        metadata={"help": "Scheduler arguments (paper: min_lr 1e-5; dropped for another scheduler type)."})
    warmup_steps: float = field(default=100, metadata={"help": "Linear warm-up steps (paper 100)."})
    max_steps: int = field(default=8000, metadata={"help": "Optimizer steps (paper 8000)."})
    per_device_train_batch_size: int = field(default=36, metadata={"help": "Batch size per device (paper 36)."})
    acknowledge_data_license: bool = field(
        default=False, metadata={"help": "You hold written permission to release weights trained on data whose "
                                         "licence needs it (EMBED, a hospital's own images)."})

    def __post_init__(self):
        check_max_steps(self.max_steps)
        # min_lr belongs to cosine_with_min_lr: another scheduler would reject it.
        if self.lr_scheduler_type != "cosine_with_min_lr" and self.lr_scheduler_kwargs == {"min_lr": 1e-5}:
            self.lr_scheduler_kwargs = {}
        super().__post_init__()


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


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_classifier(model, processor, split, task: str, *, batch_size: int = 32,
                        progress: bool = True) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Score `model` on the labelled rows of a converted split.

    Returns `(metrics, logits, labels)`: `classification_metrics` of the logits (one softmax) plus
    `num_images`, the logits float32 [N, num_classes] and the class indices int64 [N]. `split` may
    also be a `ClassificationDataset` (then `processor` is not used).
    """
    dataset = split if isinstance(split, ClassificationDataset) else ClassificationDataset(split, processor, task)
    if len(dataset) == 0:
        raise ValueError(f"The split has no image with a {task} label to evaluate on.")
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc=f"evaluate {task}", disable=not progress):
        chunks.append(model(pixel_values=batch["pixel_values"].to(device)).logits.float().cpu())
    logits = torch.cat(chunks).numpy()
    metrics = classification_metrics(logits, dataset.labels, num_classes=logits.shape[1])
    metrics["num_images"] = len(dataset)
    return metrics, logits, dataset.labels.copy()


def _compute_metrics(num_classes: int):
    """`Trainer` callback for evaluation during training (`--eval_strategy steps`): bACC and AUC."""

    def compute(prediction) -> dict[str, float]:
        metrics = classification_metrics(prediction.predictions, prediction.label_ids, num_classes=num_classes)
        return {"balanced_accuracy": metrics["balanced_accuracy"], "auc": metrics["auc"]}

    return compute


# --------------------------------------------------------------------------------- entry points
def load_image_processor(model_dir: str | os.PathLike, config: MamaConfig) -> MamaImageProcessor:
    """The image processor saved with the model; without one, the paper's at the tower's input size."""
    try:
        return MamaImageProcessor.from_pretrained(model_dir)
    except OSError:
        size = int(config.vision_config.image_size)
        logger.warning("No image processor saved in %s: using MamaImageProcessor(size=%d).", model_dir, size)
        return MamaImageProcessor(size=size)


def build_classifier(model_dir: str | os.PathLike, task: str, *,
                     random_init: bool = False) -> MamaForImageClassification:
    """`MamaForImageClassification` for `task` from a saved MaMA folder (or its architecture only)."""
    class_names = TASK_CLASS_NAMES[task]
    labels = dict(num_labels=len(class_names), id2label=dict(enumerate(class_names)),
                  label2id={name: index for index, name in enumerate(class_names)})
    if random_init:
        return MamaForImageClassification(MamaConfig.from_pretrained(model_dir, **labels))
    return MamaForImageClassification.from_pretrained(model_dir, **labels)


def _json_ready(value):
    """nan -> None (null), so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write `data` as indented strict JSON (nan as null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        temporary.write_text(json.dumps(_json_ready(data), indent=2, default=float, allow_nan=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


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
    _check_task(args.task)
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
                      f"({TASK_CLASS_NAMES[args.task][int(present[0])]}): the classifier can only learn to predict it, "
                      "and its test metrics say nothing about the image tower. Use data with at least two classes.",
                      UserWarning, stacklevel=2)

    trainer = BalancedTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        compute_metrics=_compute_metrics(model.config.num_labels),
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
        class_names = TASK_CLASS_NAMES[args.task]
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


def main_probe(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Linear probe: frozen image tower, new linear head (see the module docstring for arguments)."""
    return run_classification(argv, freeze_image_tower=True)


def main_finetune(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Full fine-tune: image tower and head train together."""
    return run_classification(argv, freeze_image_tower=False)


__all__ = [
    "TASKS", "TASK_CLASS_NAMES", "BalancedSampler", "BalancedTrainer", "ClassificationArguments",
    "ClassificationDataset", "ClassificationTrainingArguments", "build_classifier", "class_balanced_weights",
    "evaluate_classifier", "load_image_processor", "main_finetune", "main_probe", "run_classification",
    "stratified_fraction", "write_json",
]
