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
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm
from transformers import TrainingArguments

from ..configuration_mama import MamaConfig
from ..file_utils_mama import write_json_atomic
from ..labels import get_task
from ..image_processing_mama import MamaImageProcessor
from .converted import stored_image_options
from .metrics import classification_metrics
from ..modeling_mama import MamaForImageClassification
from .recipes import PAPER_CLASSIFICATION
from .trainer import ConvertedCheckpointsTrainer, check_max_steps

logger = logging.getLogger(__name__)

def check_task(task: str) -> None:
    """Raise a ValueError naming the known tasks (`labels.TASKS`) unless `task` is one of them."""
    get_task(task)


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
    (`labels.TASKS[task].label_to_class`: BI-RADS 0-6 -> 0-6, density 1-4 -> 0-3, cancer 0/1). With `augment=True`
    each item gets the processor's training augmentation (METHOD.md section 5), else the evaluation
    resize.

    Args:
        split: a `datasets.Dataset` with an `image` column and the task's label column.
        processor: a `MamaImageProcessor` (or a `MamaProcessor`, whose image processor is used).
        task: `"birads"`, `"density"` or `"cancer"`.
        augment: apply the training augmentation.
        image_options: image processor options for the stored images; default
            `converted.stored_image_options(split)` (a converted dataset's images are already oriented
            and cropped: neither is done again).
    """

    def __init__(self, split, processor, task: str, *, augment: bool = False, image_options: dict | None = None):
        check_task(task)
        missing = {"image", task} - set(split.column_names)
        if missing:
            raise ValueError(f"The dataset split lacks column(s) {sorted(missing)} needed for the {task} task; "
                             "convert the dataset with data_scripts/*.py.")
        self.image_processor = getattr(processor, "image_processor", processor)
        self.task = task
        self.augment = augment
        self.image_options = stored_image_options(split) if image_options is None else dict(image_options)
        classes = [get_task(task).label_to_class(value) for value in split[get_task(task).label_column]]
        self.rows = np.asarray([row for row, label in enumerate(classes) if label is not None], dtype=np.int64)
        self.labels = np.asarray([label for label in classes if label is not None], dtype=np.int64)
        # Decode only the image when an item is drawn.
        self.images = split.select_columns(["image"])

    @property
    def num_classes(self) -> int:
        return get_task(self.task).num_classes

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
            image, augment=self.augment, return_tensors="pt", **self.image_options)["pixel_values"][0]
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
_PAPER = PAPER_CLASSIFICATION


@dataclass
class ClassificationTrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults are the paper's probe / fine-tune recipe (METHOD.md section 7;
    the values live in `recipes.PAPER_CLASSIFICATION`)."""

    learning_rate: float = field(default=_PAPER["learning_rate"], metadata={"help": "Initial learning rate."})
    weight_decay: float = field(default=_PAPER["weight_decay"], metadata={"help": "Weight decay."})
    optim: str = field(default=_PAPER["optim"], metadata={"help": "Optimizer (paper: SGD, see optim_args)."})
    optim_args: str | None = field(default=_PAPER["optim_args"], metadata={"help": "Optimizer arguments."})
    lr_scheduler_type: str = field(default=_PAPER["lr_scheduler_type"], metadata={"help": "Cosine down to min_lr."})
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: dict(_PAPER["lr_scheduler_kwargs"]),
        metadata={"help": "Scheduler arguments (paper: min_lr; dropped for another scheduler type)."})
    warmup_steps: float = field(default=_PAPER["warmup_steps"], metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(default=_PAPER["max_steps"], metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=_PAPER["per_device_train_batch_size"],
                                             metadata={"help": "Batch size per device."})
    acknowledge_data_license: bool = field(
        default=False, metadata={"help": "You hold written permission to release weights trained on data whose "
                                         "licence needs it (EMBED, a hospital's own images)."})

    def __post_init__(self):
        check_max_steps(self.max_steps)
        # min_lr belongs to cosine_with_min_lr: another scheduler would reject it.
        if self.lr_scheduler_type != "cosine_with_min_lr" and self.lr_scheduler_kwargs == _PAPER["lr_scheduler_kwargs"]:
            self.lr_scheduler_kwargs = {}
        super().__post_init__()


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


def compute_metrics_for(num_classes: int):
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
    class_names = list(get_task(task).class_names)
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
    return write_json_atomic(path, _json_ready(data), default=float, allow_nan=False)


__all__ = [
    "BalancedSampler", "check_task", "compute_metrics_for", "BalancedTrainer", "ClassificationDataset",
    "ClassificationTrainingArguments", "build_classifier", "class_balanced_weights", "evaluate_classifier",
    "load_image_processor", "stratified_fraction", "write_json",
]
