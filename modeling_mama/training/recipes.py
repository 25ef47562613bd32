"""MaMA's training recipes as data (METHOD.md sections 6 and 7): the one place their values live.

A recipe is a set of `TrainingArguments` values (`MamaTrainingArguments` for pre-training). The entry
points make it the parser's defaults *before* the arguments are built, so every value reaches the
accelerator (mixed precision, DDP options) and the command line still overrides any of them:

>>> from transformers import HfArgumentParser
>>> from modeling_mama import MamaTrainingArguments
>>> parser = HfArgumentParser(MamaTrainingArguments)
>>> parser.set_defaults(**pretraining_recipe("paper", device="cpu"))
>>> (args,) = parser.parse_args_into_dataclasses(["--output_dir", "run", "--max_steps", "100"])
>>> args.learning_rate, args.max_steps, args.max_grad_norm, args.mixed_precision
(4e-05, 100, 0.0, 'bf16')

`examples/pretrain.py --preset paper|tiny`, `ClassificationTrainingArguments` (probe / fine-tune),
the model card (`recipe_settings`) and the README read these tables.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

logger = logging.getLogger(__name__)

# Pre-training (METHOD.md section 6). The optimizer is the TrainingArguments default, AdamW (eps 1e-8).
PAPER_PRETRAINING: dict[str, Any] = {
    "learning_rate": 4e-5,
    "weight_decay": 0.1,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr": 1e-8},
    "warmup_steps": 4000,
    "max_steps": 40_000,
    "per_device_train_batch_size": 36,  # x 4 GPUs in the paper
    "gradient_accumulation_steps": 2,
    "seed": 42,
    "decay_all_parameters": True,  # weight decay on scales, norms and biases too
    "late_loss_step": 8000,  # multi-view, symmetric-CLIP and local terms from this optimizer step
    "gather_with_grad": False,  # CLIP / SLA per process; NT-Xent gathers regardless
    "max_grad_norm": 0.0,  # no gradient clipping (the transformers default clips at 1.0)
    # A last partial batch of one image would reach the multi-view head's BatchNorm in training mode.
    "dataloader_drop_last": True,
    "bf16": True,  # bf16 autocast, fp32 master weights (not pure bf16 weights); see `resolve_bf16`
    "activation_checkpointing": True,  # both towers
}

# The offline demo / tests: every loss term from the first step unless --late_loss_step says otherwise.
TINY_PRETRAINING: dict[str, Any] = {"late_loss_step": 0}

PRETRAINING_RECIPES: dict[str, dict[str, Any]] = {"paper": PAPER_PRETRAINING, "tiny": TINY_PRETRAINING}

# Linear probe and full fine-tune (METHOD.md section 7), with class-balanced sampling (BalancedTrainer).
PAPER_CLASSIFICATION: dict[str, Any] = {
    "learning_rate": 5e-4,
    "weight_decay": 1e-3,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr": 1e-5},
    "warmup_steps": 100,
    "max_steps": 8000,
    "per_device_train_batch_size": 36,  # x 2 GPUs in the paper
}


def resolve_bf16(device: str | None = None) -> dict[str, Any]:
    """The mixed-precision values that carry "bf16 autocast where the hardware supports it" to this machine.

    `device`: `"gpu-bf16"` (a GPU with bf16), `"gpu"` (an older GPU: fp32), `"cpu"` (no
    accelerator: bf16 autocast on the CPU, which `TrainingArguments` only allows with `use_cpu=True`);
    `None` asks torch.
    """
    if device is None:
        import torch
        from transformers.utils import is_torch_bf16_gpu_available

        if not torch.accelerator.is_available():
            device = "cpu"
        else:
            device = "gpu-bf16" if is_torch_bf16_gpu_available() else "gpu"
    if device == "gpu-bf16":
        return {"bf16": True}
    if device == "gpu":
        logger.warning("This GPU has no bf16 support: the paper recipe runs in fp32 (pass --fp16 true for fp16 AMP).")
        return {"bf16": False}
    if device == "cpu":
        return {"bf16": True, "use_cpu": True}
    raise ValueError(f"device must be 'gpu-bf16', 'gpu', 'cpu' or None, got {device!r}.")


def pretraining_recipe(preset: str, *, device: str | None = None) -> dict[str, Any]:
    """The `MamaTrainingArguments` values of a pre-training preset (`"paper"` or `"tiny"`), adapted to
    the machine's bf16 support (`resolve_bf16(device)`); a fresh copy the caller may change."""
    if preset not in PRETRAINING_RECIPES:
        raise ValueError(f"--preset must be one of {sorted(PRETRAINING_RECIPES)}, got {preset!r}.")
    recipe = copy.deepcopy(PRETRAINING_RECIPES[preset])
    if recipe.get("bf16"):
        recipe.update(resolve_bf16(device))
    return recipe


def recipe_settings(training_args) -> dict[str, Any]:
    """The values `training_args` ran with for every setting the pre-training recipe names (model card rows).

    >>> from modeling_mama import MamaTrainingArguments
    >>> settings = recipe_settings(MamaTrainingArguments(output_dir="run", learning_rate=1e-3))
    >>> settings["learning_rate"], settings["late_loss_step"]
    (0.001, 8000)
    """
    return {name: getattr(training_args, name) for name in PAPER_PRETRAINING if hasattr(training_args, name)}


__all__ = [
    "PAPER_CLASSIFICATION", "PAPER_PRETRAINING", "PRETRAINING_RECIPES", "TINY_PRETRAINING",
    "pretraining_recipe", "recipe_settings", "resolve_bf16",
]
