"""examples/pretrain.py: arguments, a SIGKILLed run resumed exactly, the saved folder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
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


def test_bad_arguments_are_reported(synthetic_embed_dataset, tmp_path):
    pretrain = load_example("pretrain")
    with pytest.raises(ValueError, match="--augmentation"):
        pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path),
                       "--augmentation", "heavy", "--max_steps", "1"])
    with pytest.raises(ValueError, match="--preset"):
        pretrain.main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(tmp_path),
                       "--preset", "huge", "--max_steps", "1"])


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
