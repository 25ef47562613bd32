"""examples/pretrain.py: arguments, a SIGKILLed run resumed exactly, the saved folder, what the presets
hand the accelerator, bf16 autocast on the CPU."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, load_example

RESUME_ARGUMENTS = [
    "--preset", "tiny", "--image_size", "56", "--hidden_size", "32", "--max_steps", "12",
    "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--late_loss_step", "6",
    "--augmentation", "mild", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1",
    "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0", "--disable_tqdm", "true",
    "--eval_tasks", "",
]


def step_losses(checkpoint):
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"], entry.get("loss_local")) for entry in history if "loss" in entry]


def test_killed_run_resumes_exactly(synthetic_embed_dataset, tmp_path):
    pretrain = load_example("pretrain")
    reference = tmp_path / "reference"
    pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(reference), *RESUME_ARGUMENTS])

    killed = tmp_path / "killed"
    command = [sys.executable, str(REPO / "examples" / "pretrain.py"), "--dataset", str(synthetic_embed_dataset),
               "--output_dir", str(killed), *RESUME_ARGUMENTS]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    # Kill once checkpoint-8 is complete (its trainer_state.json is written last), mid-way through 12 steps.
    while not (killed / "checkpoint-8" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint-8 within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "checkpoint-12").exists()

    pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(killed),
                   "--resume_from_checkpoint", str(killed / "checkpoint-8"), *RESUME_ARGUMENTS])
    expected, resumed = step_losses(reference / "checkpoint-12"), step_losses(killed / "checkpoint-12")
    # Every step once, nothing lost or repeated, the same loss curve (local term on from step 7).
    assert [step for step, _, _ in resumed] == list(range(1, 13))
    for (step, loss, local), (_, resumed_loss, resumed_local) in zip(expected, resumed):
        assert resumed_loss == pytest.approx(loss, rel=1e-5), step
        assert (local is None) == (resumed_local is None) == (step <= 6)
    final, resumed_final = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert final.keys() == resumed_final.keys()
    for key in final:
        assert (final[key] - resumed_final[key]).abs().max() < 1e-5, key


def test_saved_folder_is_complete(pretrained_tiny_mama):
    from modeling_mama import MamaModel, MamaProcessor

    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md",
                 "results.json"):
        assert (pretrained_tiny_mama / name).exists(), name
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    model = MamaModel.from_pretrained(pretrained_tiny_mama)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.sentence_separator_token_id == processor.tokenizer.sep_token_id
    card = (pretrained_tiny_mama / "README.md").read_text()
    results = json.loads((pretrained_tiny_mama / "results.json").read_text())
    balanced_accuracy = results["zero_shot"]["density"]["balanced_accuracy"]
    assert f"| density | zero-shot | balanced_accuracy | {balanced_accuracy:.3f} |" in card
    assert "| learning_rate | 0.003 |" in card
    # Trained on the synthetic look-alike: recorded from the data, whatever converter wrote it.
    assert model.config.training_datasets == processor.training_datasets == ["synthetic"]
    assert "trained only on synthetic images" in card


def test_bad_arguments_are_reported(synthetic_embed_dataset, tmp_path):
    pretrain = load_example("pretrain")
    with pytest.raises(ValueError, match="--augmentation"):
        pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path),
                       "--augmentation", "heavy", "--max_steps", "1"])
    with pytest.raises(ValueError, match="--preset"):
        pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path),
                       "--preset", "huge", "--max_steps", "1"])


def test_training_data_is_recorded_from_the_datasets(synthetic_embed_dataset, tmp_path, caplog):
    """`--dataset A B`: both datasets are trained on (concatenated) and recorded from their own
    conversion.json; --training_datasets only adds names; a requested evaluation that the data cannot
    support is reported, not silently dropped."""
    import shutil

    from datasets import DatasetDict, load_from_disk

    from modeling_mama import MamaModel, MamaProcessor
    from modeling_mama.hub import DatasetLicenseError

    embed = tmp_path / "embed"
    shutil.copytree(synthetic_embed_dataset, embed, ignore=shutil.ignore_patterns(".*"))
    (embed / "conversion.json").write_text(json.dumps({"converter": "embed", "dataset": "embed"}))
    cbis = tmp_path / "cbis"
    train = load_from_disk(str(synthetic_embed_dataset))["train"]
    DatasetDict(train=train.select(range(8)).remove_columns("density"),
                test=train.select(range(8, 12)).remove_columns("density")).save_to_disk(str(cbis))
    (cbis / "conversion.json").write_text(json.dumps({"converter": "cbis_ddsm", "dataset": "cbis_ddsm"}))

    out = tmp_path / "out"
    arguments = ["--dataset", str(embed), str(cbis), "--output_dir", str(out), "--training_datasets", "lab notes",
                 "--preset", "tiny", "--image_size", "56", "--hidden_size", "32", "--max_steps", "1",
                 "--per_device_train_batch_size", "8", "--report_to", "none", "--save_strategy", "no",
                 "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--eval_tasks", "density"]
    with caplog.at_level("WARNING"):
        results = load_example("pretrain").main(arguments)
    assert "Skipping the zero-shot density evaluation" in caplog.text
    assert results["zero_shot"] == {} and results["zero_shot_skipped"] == {"density": "the test split has no density labels"}
    model = MamaModel.from_pretrained(out)
    assert model.config.training_datasets == ["embed", "cbis_ddsm", "lab notes"]
    assert MamaProcessor.from_pretrained(out).training_datasets == ["embed", "cbis_ddsm", "lab notes"]
    with pytest.raises(DatasetLicenseError):
        model.push_to_hub("me/mama")
    assert "EMBED (Emory Breast Imaging Dataset)" in (out / "README.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert saved["zero_shot_skipped"] == {"density": "the test split has no density labels"}

    with pytest.raises(ValueError, match="--max_steps 0 trains nothing"):
        load_example("pretrain").main([*arguments[:-4], "--max_steps", "0"])


# ------------------------------------------------------------------ what the accelerator is built from
RUN_FLAGS = ["--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--save_strategy", "no"]


def tiny_run(tiny_dataset, tokenizer, argv):
    """Arguments and `MamaTrainer` built as `pretrain.main` builds them, around tiny towers (the paper
    preset's own towers need the Hub)."""
    from modeling_mama import MamaConfig, MamaImageProcessor, MamaModel, MamaProcessor, MultiViewDataset

    pretrain = load_example("pretrain")
    model_args, data_args, training_args = pretrain.parse_arguments(argv)
    model = MamaModel(MamaConfig.tiny(vocab_size=len(tokenizer), sentence_separator_token_id=tokenizer.sep_token_id))
    processor = MamaProcessor(MamaImageProcessor(size=56), tokenizer)
    train = MultiViewDataset(tiny_dataset, processor, seed=0)
    return training_args, pretrain.build_trainer(model, processor, train, training_args, data_args)


def test_paper_preset_reaches_the_accelerator(tiny_dataset, report_tokenizer, tmp_path):
    # The paper's batch is 36; the command line overrides it (24 images: 2 batches of 10, then 4 left over).
    training_args, trainer = tiny_run(tiny_dataset, report_tokenizer, [
        "--preset", "paper", "--output_dir", str(tmp_path), "--max_steps", "1", "--per_device_train_batch_size", "10",
        *RUN_FLAGS])
    caller_sees = training_args.to_dict()
    accelerator = trainer.accelerator
    assert accelerator.mixed_precision == "bf16"  # on this CPU: bf16 autocast (use_cpu)
    assert accelerator.ddp_handler.find_unused_parameters is True  # set before the accelerator existed
    assert len(trainer.get_train_dataloader()) == 2  # the partial batch of 4 is dropped
    max_norms = []  # the Trainer measures the gradient norm (for its logs) with max_norm=inf: no clipping
    clip = accelerator.clip_grad_norm_
    accelerator.clip_grad_norm_ = lambda parameters, max_norm, *args: max_norms.append(max_norm) or clip(
        parameters, max_norm, *args)
    trainer.train()
    assert trainer.state.global_step == 1 and max_norms == [math.inf]  # the recipe has no gradient clipping
    assert trainer.model.is_activation_checkpointing
    # The recipe's optimizer and schedule (AdamW, 4e-5 after 4000 warm-up steps, min lr 1e-8).
    assert type(trainer.optimizer.optimizer).__name__ == "AdamW"
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert trainer.args.lr_scheduler_kwargs == {"min_lr": 1e-8}
    assert trainer.args.learning_rate == 4e-5 and trainer.args.warmup_steps == 4000 and trainer.args.seed == 42
    # MamaTrainer worked on a copy: the caller's arguments are as parsed.
    assert training_args.to_dict() == caller_sees and training_args.remove_unused_columns is True
    assert trainer.args is not training_args and trainer.args.remove_unused_columns is False


def test_command_line_overrides_the_preset(tiny_dataset, report_tokenizer, tmp_path):
    _, trainer = tiny_run(tiny_dataset, report_tokenizer, [
        "--preset", "paper", "--output_dir", str(tmp_path), "--bf16", "false", "--max_grad_norm", "1.0",
        "--ddp_find_unused_parameters", "false", "--dataloader_drop_last", "false", "--per_device_train_batch_size", "10",
        *RUN_FLAGS])
    assert trainer.accelerator.mixed_precision == "no"
    assert trainer.accelerator.ddp_handler.find_unused_parameters is False
    assert len(trainer.get_train_dataloader()) == 3 and trainer.args.max_grad_norm == 1.0


def test_bf16_autocast_run_of_the_tiny_preset(tiny_dataset, report_tokenizer, tmp_path):
    """accelerate's bf16 autocast on the CPU, through the Trainer: forward runs under bf16 autocast, every
    loss term is finite, and the weights stay fp32 (mixed precision, not bf16 weights) and train."""
    training_args, trainer = tiny_run(tiny_dataset, report_tokenizer, [
        "--preset", "tiny", "--output_dir", str(tmp_path), "--bf16", "true", "--use_cpu", "true", "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--logging_steps", "1", *RUN_FLAGS])
    assert trainer.accelerator.mixed_precision == "bf16"
    model = trainer.model
    autocast_seen = []
    model.visual_projection.register_forward_pre_hook(
        lambda module, inputs: autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    before = {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}
    trainer.train()
    assert autocast_seen and set(autocast_seen) == {(True, torch.bfloat16)}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        terms = [entry[f"loss_{term}"] for term in ("clip", "multiview", "symmetric_clip", "local")]
        assert all(math.isfinite(value) for value in [entry["loss"], *terms])
    for name, value in model.named_parameters():
        assert value.dtype == torch.float32, name
    assert not torch.equal(before["visual_projection.weight"], model.visual_projection.weight)


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu_ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_launch_the_paper_recipe(name):
    """`accelerate launch --config_file examples/accelerate/<name>.yaml examples/pretrain.py --preset paper`:
    the launcher accelerate would pick and the environment it hands the script (GPU configs: parsed and
    prepared here, not run; FSDP runs on CPU in test_trainer, DeepSpeed is not run, see README)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from modeling_mama.training.recipes import PAPER_PRETRAINING

    script = ["examples/pretrain.py", "--preset", "paper", "--dataset", "data/embed"]
    args = launch_command_parser().parse_args(["--config_file", str(REPO / "examples" / "accelerate" / f"{name}.yaml"),
                                               *script])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    assert [args.training_script, *args.training_script_args] == script
    assert args.mixed_precision == "bf16" and PAPER_PRETRAINING["bf16"]
    assert args.num_processes == (1 if name == "single_gpu" else 4)
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
        name == "multi_gpu_ddp", name == "fsdp", name == "deepspeed_zero2")
    if name == "fsdp":
        import transformers.models.dinov2_with_registers.modeling_dinov2_with_registers as dinov2
        import transformers.models.gpt2.modeling_gpt2 as gpt2

        environment = prepare_multi_gpu_env(args)
        assert environment["ACCELERATE_USE_FSDP"] == "true" and environment["FSDP_VERSION"] == "2"
        assert environment["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
        wrapped = environment["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")
        assert wrapped == ["Dinov2WithRegistersLayer", "GPT2Block"]  # the paper towers' block classes
        assert hasattr(dinov2, wrapped[0]) and hasattr(gpt2, wrapped[1])
    if name == "deepspeed_zero2":
        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])])
        _, environment = prepare_deepspeed_cmd_env(args)
        assert environment["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert environment["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
        # The Trainer refuses a DeepSpeed config that disagrees with the run's arguments.
        assert int(environment["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"]) == PAPER_PRETRAINING["gradient_accumulation_steps"]
        assert float(environment["ACCELERATE_GRADIENT_CLIPPING"]) == PAPER_PRETRAINING["max_grad_norm"]


def test_tiles_and_the_token_budget_from_the_command_line(synthetic_embed_dataset, tmp_path):
    from modeling_mama import MamaProcessor

    out = tmp_path / "tiled"
    results = load_example("pretrain").main([
        "--dataset", str(synthetic_embed_dataset), "--output_dir", str(out), "--preset", "tiny", "--image_size", "56",
        "--hidden_size", "32", "--max_steps", "2", "--per_device_train_batch_size", "8", "--late_loss_step", "0",
        "--tiles", "--max_tiles", "2", "--max_length", "200", "--truncation", "warn", "--augmentation", "paper",
        "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        "--eval_tasks", "cancer",
    ])
    processor = MamaProcessor.from_pretrained(out)
    image_processor = processor.image_processor
    assert processor.max_length == 200  # the budget travels with the model (issue 16.8)
    assert (image_processor.mode, image_processor.max_tiles, image_processor.tile_grid) == ("tiles", 2, [3, 3])
    assert image_processor.tile_size == {"height": 56, "width": 56}  # stored at 128 px: 3 x 3 tiles of 56
    assert {"cancer"} == set(results["zero_shot"]) == set(results["zero_shot_tiles"])
    scored = load_example("zero_shot").main([
        "--model", str(out), "--dataset", str(synthetic_embed_dataset), "--task", "cancer", "--tiles",
        "--output_dir", str(tmp_path / "zero_shot"),
    ])
    assert (scored["tiles"], scored["tile_aggregation"], scored["max_length"]) == (True, "max", 200)
    assert scored["image_level"]["auc"] == pytest.approx(results["zero_shot_tiles"]["cancer"]["auc"])
    with pytest.raises(ValueError, match="--truncation must be one of"):
        load_example("pretrain").main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path / "x"),
                                       "--truncation", "cut", "--max_steps", "1"])
    with pytest.raises(ValueError, match="--tile_grid must be ROWS,COLS"):
        load_example("pretrain").main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path / "x"),
                                       "--tiles", "--tile_grid", "3x3", "--max_steps", "1"])
