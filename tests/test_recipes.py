"""The recipe table: presets as parser defaults, bf16 where the hardware has it, the card's settings."""

import doctest

import pytest
from transformers import HfArgumentParser

from modeling_mama import MamaTrainingArguments
from modeling_mama.training import recipes
from modeling_mama.training.finetuning import ClassificationTrainingArguments
from modeling_mama.training.recipes import (
    PAPER_CLASSIFICATION,
    PAPER_PRETRAINING,
    pretraining_recipe,
    recipe_settings,
    resolve_bf16,
)
from scripts import load_script

ClassificationArguments = load_script("examples/finetune.py").ClassificationArguments


def test_docstring_examples():
    assert doctest.testmod(recipes, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("device, expected", [
    ("gpu-bf16", {"bf16": True}), ("gpu", {"bf16": False}), ("cpu", {"bf16": True, "use_cpu": True}),
])
def test_bf16_where_the_hardware_has_it(device, expected):
    assert resolve_bf16(device) == expected
    recipe = pretraining_recipe("paper", device=device)
    assert {key: recipe.get(key) for key in expected} == expected
    assert pretraining_recipe("tiny", device=device) == {"late_loss_step": 0}  # the tiny preset keeps fp32


def test_recipes_are_copies_and_unknown_presets_are_refused():
    recipe = pretraining_recipe("paper", device="gpu-bf16")
    recipe["lr_scheduler_kwargs"]["min_lr"] = 1.0
    assert PAPER_PRETRAINING["lr_scheduler_kwargs"] == {"min_lr": 1e-8}
    with pytest.raises(ValueError, match="--preset"):
        pretraining_recipe("huge")
    with pytest.raises(ValueError, match="device"):
        resolve_bf16("tpu")


def test_paper_recipe_as_parser_defaults_and_overrides(tmp_path):
    parser = HfArgumentParser(MamaTrainingArguments)
    parser.set_defaults(**pretraining_recipe("paper", device="cpu"))
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--late_loss_step", "100"])
    for name, value in PAPER_PRETRAINING.items():
        assert getattr(args, name) == (100 if name == "late_loss_step" else value), name
    assert args.mixed_precision == "bf16" and args.ddp_find_unused_parameters is True
    assert recipe_settings(args) == {**PAPER_PRETRAINING, "late_loss_step": 100}


def test_classification_arguments_default_to_the_table(tmp_path):
    parser = HfArgumentParser((ClassificationArguments, ClassificationTrainingArguments))
    _, args = parser.parse_args_into_dataclasses(["--model", "m", "--dataset", "d", "--output_dir", str(tmp_path)])
    for name, value in PAPER_CLASSIFICATION.items():
        assert getattr(args, name) == value, name
