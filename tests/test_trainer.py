"""MamaTrainer: collation, loss gating across steps and resume, optimizer groups, schedule, 2-process DDP."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_mama import MamaConfig, MamaDataCollator, MamaImageProcessor, MamaModel, MamaProcessor, MamaTrainer
from modeling_mama import MamaTrainingArguments, MultiViewDataset

IMAGE = 56


def make_trainer(tiny_dataset, tokenizer, out_dir, *, late_loss_step=3, max_steps=6, save_steps=None, **extra):
    torch.manual_seed(0)
    config = MamaConfig.tiny(vocab_size=len(tokenizer), sentence_separator_token_id=tokenizer.sep_token_id)
    model = MamaModel(config)
    processor = MamaProcessor(MamaImageProcessor(size=IMAGE), tokenizer)
    train = MultiViewDataset(tiny_dataset, processor, seed=0)
    args = MamaTrainingArguments(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=2e-3,
        weight_decay=0.1, logging_steps=1, report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, disable_tqdm=True,
        late_loss_step=late_loss_step, **extra,
    )
    return MamaTrainer(model=model, args=args, train_dataset=train, data_collator=MamaDataCollator(processor))


def train_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_collator_batches_views_and_reports(tiny_dataset, report_tokenizer):
    processor = MamaProcessor(MamaImageProcessor(size=IMAGE), report_tokenizer)
    dataset = MultiViewDataset(tiny_dataset, processor, seed=0)
    batch = MamaDataCollator(processor)([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == batch["extra_pixel_values"].shape == (4, 3, IMAGE, IMAGE)
    ids, positions, mask = batch["input_ids"], batch["sentence_positions"], batch["sentence_mask"]
    assert ids.shape == batch["attention_mask"].shape and positions.shape == mask.shape
    # Every real sentence position holds the separator token; a report has 8+ sentences.
    assert (ids.gather(1, positions)[mask] == report_tokenizer.sep_token_id).all()
    assert (mask.sum(dim=1) >= 8).all()


def test_items_are_reproducible_per_epoch(tiny_dataset, report_tokenizer):
    dataset = MultiViewDataset(tiny_dataset, MamaProcessor(MamaImageProcessor(size=IMAGE), report_tokenizer), seed=3)
    first, again = dataset[5], dataset[5]
    assert torch.equal(first["pixel_values"], again["pixel_values"]) and first["report"] == again["report"]
    dataset.set_epoch(1)
    other = [dataset[5] for _ in range(1)][0]
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    # Masking is drawn per item: over the dataset, about 80% of the six metadata fields are "unknown".
    masked = sum(sentence.count("unknown") for i in range(len(dataset)) for sentence in dataset[i]["report"])
    assert 0.5 < masked / (6 * len(dataset)) < 1.0


def test_tiled_training_run(tiny_dataset, report_tokenizer, tmp_path):
    """Tiles + augmentation + SLA in one MamaTrainer run: SLA aligns the sentences with the tiles' patches."""
    torch.manual_seed(0)
    config = MamaConfig.tiny(vocab_size=len(report_tokenizer), sentence_separator_token_id=report_tokenizer.sep_token_id)
    model = MamaModel(config)
    processor = MamaProcessor(
        MamaImageProcessor(mode="tiles", size=IMAGE, tile_size=28, tile_grid=[3, 2], max_tiles=2), report_tokenizer)
    train = MultiViewDataset(tiny_dataset, processor, seed=0)  # augment=True: random tiles, augmented
    encoded = []
    original = model._run_vision_tower
    model._run_vision_tower = lambda pixel_values, **kwargs: encoded.append(tuple(pixel_values.shape)) or original(
        pixel_values, **kwargs)
    args = MamaTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=6, learning_rate=2e-3, logging_steps=1,
        report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0, save_strategy="no", disable_tqdm=True,
        late_loss_step=0,
    )
    trainer = MamaTrainer(model=model, args=args, train_dataset=train, data_collator=MamaDataCollator(processor))
    before = model.patch_projection.fc1.weight.detach().clone()
    trainer.train()
    logs = train_logs(trainer)
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    assert all(math.isfinite(entry["loss_local"]) and math.isfinite(entry["loss_multiview"]) for entry in logs)
    # Per step: both views together, then the real tiles alone (1-2 per image, 28 px) for the local term.
    views, tiles = encoded[0::2], encoded[1::2]
    assert views == [(12, 3, IMAGE, IMAGE)] * 3
    assert all(6 <= shape[0] <= 12 and shape[1:] == (3, 28, 28) for shape in tiles)
    assert not torch.equal(before, model.patch_projection.fc1.weight)


def test_terms_switch_on_at_their_step_and_are_logged(tiny_dataset, report_tokenizer, tmp_path):
    trainer = make_trainer(tiny_dataset, report_tokenizer, tmp_path, late_loss_step=3, max_steps=5)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = train_logs(trainer)
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5]
    for entry in logs:
        late = entry["step"] > 3  # the optimizer step counter is 3 during the 4th step
        assert ("loss_local" in entry) == late and ("loss_multiview" in entry) == late
        assert "loss_clip" in entry and "retrieval_i2t_top1" in entry and math.isfinite(entry["loss"])
    # The local head moved only after its switch-on, and weight decay alone did not move it before.
    assert not torch.equal(before["patch_projection.fc1.weight"], trainer.model.patch_projection.fc1.weight)


def test_late_heads_untouched_before_start_step(tiny_dataset, report_tokenizer, tmp_path):
    trainer = make_trainer(tiny_dataset, report_tokenizer, tmp_path, late_loss_step=100, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name in ("patch_projection.fc1.weight", "sentence_projection.fc2.weight", "multiview_head.0.weight",
                 "local_scale"):
        assert torch.equal(before[name], after[name]), name  # no gradient and no weight decay
    assert not torch.equal(before["visual_projection.weight"], after["visual_projection.weight"])
    lora = [n for n in before if "lora_B" in n]
    assert lora and any(not torch.equal(before[n], after[n]) for n in lora)


def test_resume_after_switch_on_continues_exactly(tiny_dataset, report_tokenizer, tmp_path):
    full = make_trainer(tiny_dataset, report_tokenizer, tmp_path / "full", late_loss_step=2, max_steps=6, save_steps=4)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert checkpoint.exists()
    resumed = make_trainer(tiny_dataset, report_tokenizer, tmp_path / "resumed", late_loss_step=2, max_steps=6)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    full_logs = {entry["step"]: entry for entry in train_logs(full)}
    resumed_logs = [entry for entry in train_logs(resumed) if entry["step"] > 4]  # history 1-4 comes from the checkpoint
    assert [entry["step"] for entry in resumed_logs] == [5, 6]
    for entry in resumed_logs:
        assert "loss_local" in entry
        assert entry["loss"] == pytest.approx(full_logs[entry["step"]]["loss"], rel=1e-5)
        assert entry["loss_local"] == pytest.approx(full_logs[entry["step"]]["loss_local"], rel=1e-5)
    # The local heads kept learning after the resume.
    from safetensors.torch import load_file

    at_checkpoint = load_file(checkpoint / "model.safetensors")
    name = "patch_projection.fc1.weight"
    assert not torch.equal(at_checkpoint[name], resumed.model.state_dict()[name])
    torch.testing.assert_close(full.model.state_dict()[name], resumed.model.state_dict()[name])


def test_optimizer_groups(tiny_dataset, report_tokenizer, tmp_path):
    trainer = make_trainer(tiny_dataset, report_tokenizer, tmp_path)
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    assert "visual_projection.weight" in decay and "patch_projection.fc1.weight" in decay
    for name in ("logit_scale", "local_scale", "visual_projection.bias", "patch_projection.norm1.weight",
                 "multiview_head.1.weight", "vision_model.embeddings.patch_embeddings.projection.bias"):
        assert name not in decay, name
    assert not any("norm" in name and name.endswith("weight") and "layernorm" in name for name in decay)
    trainer.args.decay_all_parameters = True
    assert set(trainer.get_decay_parameter_names(trainer.model)) == {n for n, _ in trainer.model.named_parameters()}


def test_cosine_schedule_with_min_lr_matches_formula(tiny_dataset, report_tokenizer, tmp_path):
    trainer = make_trainer(tiny_dataset, report_tokenizer, tmp_path, max_steps=100, warmup_steps=10,
                           lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-5})
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    peak, floor = 2e-3, 1e-5
    lrs = []
    for _ in range(100):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    for step in (0, 5, 10, 40, 75, 99):
        if step < 10:
            expected = peak * step / 10
        else:
            progress = (step - 10) / 90
            expected = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lrs[step] == pytest.approx(expected, rel=1e-6, abs=1e-12), step


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _run_two_processes(worker: str, out_dir: Path) -> None:
    """Run tests/<worker> on 2 gloo processes (torch.distributed.run, one thread each); it writes into `out_dir`."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(Path(__file__).with_name(worker)), str(out_dir)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_process_paper_path_in_miniature(tmp_path):
    """`pretrain.py --preset paper` on 2 gloo processes with tiny towers: checkpointing on, bf16 autocast,
    gradient accumulation 2, late terms from step 2 of 4, gather_with_grad, items without a second view."""
    _run_two_processes("_ddp_train_worker.py", tmp_path)
    histories = [json.loads((tmp_path / f"history_rank{rank}.json").read_text()) for rank in (0, 1)]
    for history in histories:
        assert history["world_size"] == 2 and history["mixed_precision"] == "bf16"
        assert history["wrapper"] == "DistributedDataParallel" and history["find_unused_parameters"] is True
        assert history["activation_checkpointing"]
    # Some rank trained on a batch holding an item without a second view while the multi-view terms ran.
    assert any(step >= 2 for history in histories for step in history["served_without_extra_view_at"])

    params = [torch.load(tmp_path / f"params_rank{rank}.pt") for rank in (0, 1)]
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name
    logs = [entry for entry in histories[0]["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    assert [("loss_multiview" in entry) for entry in logs] == [False, False, True, True]

    # The late heads: no gradient and no weight decay during optimizer steps 1-2, moving from step 3 on.
    late_heads = torch.load(tmp_path / "late_heads_rank0.pt")
    assert sorted(late_heads) == list(range(5))
    for name, initial in late_heads[0].items():
        for step in (1, 2):
            assert torch.equal(late_heads[step][name], initial), (name, step)
        for step in (3, 4):
            assert not torch.equal(late_heads[step][name], late_heads[step - 1][name]), (name, step)


def test_two_process_fsdp2_run_and_reload(tmp_path):
    """examples/accelerate/fsdp.yaml's sharding on 2 gloo processes (torch FSDP2, as accelerate would apply it
    on GPUs): bf16 parameters, checkpointed towers, late terms from step 2 of 4; the gathered model reloads."""
    _run_two_processes("_fsdp_train_worker.py", tmp_path)
    run = json.loads((tmp_path / "fsdp_run.json").read_text())
    assert run["world_size"] == 2 and run["parameter_types"] == ["DTensor"]
    assert run["units"] == 4  # 2 DINOv2 layers + 2 GPT-2 blocks, then the root
    every_term = ["clip", "local", "multiview", "symmetric_clip"]
    assert [sorted(terms) for terms in run["losses"]] == [["clip"], ["clip"], every_term, every_term]
    assert all(math.isfinite(value) for terms in run["losses"] for value in terms.values())

    parameters = torch.load(tmp_path / "fsdp_parameters.pt")
    initial, trained, late_heads = parameters["initial"], parameters["trained"], parameters["late_heads"]
    assert not torch.equal(initial["visual_projection.weight"], trained["visual_projection.weight"])
    for name in late_heads[0]:
        assert torch.equal(late_heads[1][name], initial[name]) and torch.equal(late_heads[2][name], initial[name])
        assert not torch.equal(late_heads[3][name], late_heads[2][name]), name
    # The saved folder is a plain MaMA folder: this package's code and class, every trained value.
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["MamaModel"] and config["auto_map"]["AutoModel"] == "modeling_mama.MamaModel"
    assert not list(tmp_path.glob("_fsdp*.py"))
    reloaded = MamaModel.from_pretrained(tmp_path)
    for name, value in reloaded.named_parameters():
        assert torch.equal(value, trained[name]), name


def test_checkpoints_reload_through_key_conversions(tmp_path):
    """The stock 5.23 Trainer restores DINOv2 checkpoints with stale attention weights; ours does not."""
    from transformers import Trainer, TrainingArguments

    from modeling_mama import MamaForImageClassification
    from modeling_mama.training.finetuning import BalancedTrainer
    from modeling_mama.training.trainer import ConvertedCheckpointsTrainer

    assert issubclass(BalancedTrainer, ConvertedCheckpointsTrainer) and issubclass(MamaTrainer, ConvertedCheckpointsTrainer)
    saved = MamaForImageClassification(MamaConfig.tiny(num_labels=3))
    saved.save_pretrained(tmp_path / "checkpoint")
    expected = {key: value.clone() for key, value in saved.state_dict().items()}
    name = "vision_model.encoder.layer.0.attention.q_proj.weight"
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")

    def fresh():
        torch.manual_seed(1)
        return MamaForImageClassification(MamaConfig.tiny(num_labels=3))

    stock = Trainer(model=fresh(), args=args)
    stock._load_from_checkpoint(str(tmp_path / "checkpoint"))
    assert not torch.equal(stock.model.state_dict()[name], expected[name])  # the upstream bug this works around

    ours = ConvertedCheckpointsTrainer(model=fresh(), args=args)
    ours._load_from_checkpoint(str(tmp_path / "checkpoint"))
    for key, value in expected.items():
        assert torch.equal(ours.model.state_dict()[key], value), key
    best = ConvertedCheckpointsTrainer(model=fresh(), args=args)
    best.state.best_model_checkpoint = str(tmp_path / "checkpoint")
    best._load_best_model()
    assert torch.equal(best.model.state_dict()[name], expected[name])
