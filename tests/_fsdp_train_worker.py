"""Worker of test_trainer's 2-process FSDP run (torch.distributed.run, gloo on the CPU).

accelerate only shards with FSDP on accelerator devices (on a CPU machine `accelerate launch
--config_file examples/accelerate/fsdp.yaml` runs plain DDP), so this worker applies what that config
asks for with torch's FSDP2 directly, as accelerate's `fsdp2_prepare_model` would: `fully_shard` on
every layer class named in `fsdp_transformer_layer_cls_to_wrap` and then on the root,
`reshard_after_forward` from the config, and the config's mixed precision as accelerate maps it
(`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16, output_dtype=bf16)`). Tiny towers with
activation checkpointing, the late loss terms switching on inside the run. At the end the full state
dict is gathered as the Trainer does for `FULL_STATE_DICT` and rank 0 saves it with `save_pretrained`.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))

from conftest import REPO, _schema_rows  # noqa: E402

LATE_HEADS = ("multiview_head.0.weight", "patch_projection.fc1.weight")
STEPS, LATE_LOSS_STEP, BATCH = 4, 2, 4


def fsdp_settings() -> dict:
    import yaml

    config = yaml.safe_load((REPO / "examples" / "accelerate" / "fsdp.yaml").read_text())
    fsdp = config["fsdp_config"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}[config["mixed_precision"]]
    return {
        "version": int(fsdp["fsdp_version"]),
        "wrap": set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")),
        "reshard_after_forward": bool(fsdp["fsdp_reshard_after_forward"]),
        "dtype": dtype,
        "state_dict_type": fsdp["fsdp_state_dict_type"],
    }


def full_parameters(model) -> dict[str, torch.Tensor]:
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
            for name, value in model.named_parameters()}


def main(out_dir: str) -> None:
    import datasets
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from modeling_mama import MamaConfig, MamaDataCollator, MamaImageProcessor, MamaModel, MultiViewDataset
    from modeling_mama.reports import build_report
    from modeling_mama.tokenization import train_report_tokenizer
    from modeling_mama.training.multiview import report_fields_from_row
    from modeling_mama.training.schedule import LossSchedule

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    settings = fsdp_settings()
    assert settings["version"] == 2, settings

    rows = _schema_rows(6)
    tokenizer = train_report_tokenizer([s for r in rows for s in build_report(report_fields_from_row(r))], vocab_size=1000)
    dataset = datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})
    train = MultiViewDataset(dataset, MamaImageProcessor(size=56), seed=0, augment=False)
    collator = MamaDataCollator(tokenizer)
    torch.manual_seed(0)  # the same initial weights on every rank, as a seeded run builds them
    config = MamaConfig.tiny(vocab_size=len(tokenizer), sentence_separator_token_id=tokenizer.sep_token_id,
                             activation_checkpointing=True)
    model = MamaModel(config).train()
    initial = full_parameters(model)

    dtype = settings["dtype"]
    policy = MixedPrecisionPolicy()
    if dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype, output_dtype=dtype)
    shard = {"reshard_after_forward": settings["reshard_after_forward"], "mp_policy": policy}
    units = [module for module in model.modules() if type(module).__name__ in settings["wrap"]]
    for module in units:
        fully_shard(module, **shard)
    fully_shard(model, **shard)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.1)
    schedule = LossSchedule.late(LATE_LOSS_STEP)
    losses, late_heads = [], {0: {name: initial[name] for name in LATE_HEADS}}
    for step in range(STEPS):
        start = (step * world_size + rank) * BATCH % len(train)
        batch = collator([train[(start + offset) % len(train)] for offset in range(BATCH)])
        outputs = model(**batch, return_loss=True, loss_terms=schedule.active_terms(step))
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append({name: float(value) for name, value in outputs.loss_terms.items()})
        parameters = full_parameters(model)
        late_heads[step + 1] = {name: parameters[name] for name in LATE_HEADS}

    # The final folder as the Trainer writes it with FULL_STATE_DICT (examples/pretrain.py save_final_model).
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trained = full_parameters(model)
    if rank == 0:
        model.save_pretrained(out_dir, state_dict=state_dict)
        torch.save({"initial": initial, "trained": trained, "late_heads": late_heads},
                   Path(out_dir) / "fsdp_parameters.pt")
        sharded = [type(value).__name__ for value in dict(model.named_parameters()).values()]
        with open(Path(out_dir) / "fsdp_run.json", "w") as handle:
            json.dump({"world_size": world_size, "losses": losses, "units": len(units),
                       "parameter_types": sorted(set(sharded))}, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
