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
