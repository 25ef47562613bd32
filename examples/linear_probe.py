"""Linear probe of a pre-trained MaMA image tower: the tower is frozen, a new linear head trains.

    python examples/linear_probe.py --model PRETRAINED --dataset DATA --task density --output_dir OUT
    python examples/linear_probe.py --model PRETRAINED --dataset DATA --task cancer --train_fraction 0.01 \
        --output_dir OUT
    python examples/linear_probe.py --model PRETRAINED --random_init --dataset DATA --output_dir OUT  # baseline

`--model` is a saved MaMA folder (its image processor is used when saved alongside), `--dataset` a
converted dataset (data_scripts/*.py), `--task` birads | density | cancer, `--test_split` the split
scored at the end (default test; EMBED's class-balanced BI-RADS set is test_balanced), `--augment
false` trains on plain resized images instead of the paper's augmentation. The defaults are the
paper's recipe (SGD momentum 0.9, weight decay 1e-3, lr 5e-4 cosine to 1e-5, 100 warm-up steps,
8000 steps, batch 36, class-balanced sampling); every `TrainingArguments` option overrides them
(`--max_steps`, `--per_device_train_batch_size`, `--learning_rate`, `--bf16`, ...). The test split is
scored at the end: `metrics.json`, `confusion_matrix.png` and `roc.png` land in `--output_dir` with
the trained classifier. See examples/finetune.py (same arguments) and `modeling_mama.training.finetuning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune import run_classification


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Linear probe: frozen image tower, new linear head."""
    return run_classification(argv, freeze_image_tower=True)


if __name__ == "__main__":
    main()
