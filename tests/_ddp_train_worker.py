"""Worker of test_trainer's 2-process DDP run: the paper path in miniature.

`examples/pretrain.py --preset paper` arguments (bf16 autocast on the CPU, activation checkpointing,
gradient accumulation 2, no clipping, drop_last) with a few overrides (4 steps, late terms from
optimizer step 2, gather_with_grad on, batch 2), tiny towers, and a dataset in which some items have no
second view. Each rank writes its parameters, the late heads' values after every optimizer step,
its loss history and what its accelerator and DDP wrapper hold. Launched with torch.distributed.run
(gloo on the CPU).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import _schema_rows, load_example  # noqa: E402

LATE_HEADS = ("multiview_head.0.weight", "patch_projection.fc1.weight", "sentence_projection.fc2.weight", "local_scale")
ARGUMENTS = [
    "--preset", "paper", "--max_steps", "4", "--late_loss_step", "2", "--gather_with_grad", "true",
    "--per_device_train_batch_size", "2", "--learning_rate", "2e-3", "--warmup_steps", "0",
    "--logging_steps", "1",
    "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
]


class WithoutSomeExtraViews(torch.utils.data.Dataset):
    """A `MultiViewDataset` whose items at `indices` have no second view; records the optimizer step
    at which this process served one."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices, self.trainer, self.served_at = dataset, set(indices), None, []

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        item = self.dataset[index]
        if index in self.indices:
            item.pop("extra_pixel_values")
            self.served_at.append(self.trainer.state.global_step)
        return item


def main(out_dir: str) -> None:
    import datasets
    from transformers import TrainerCallback

    from modeling_mama import MamaConfig, MamaImageProcessor, MamaModel, MamaProcessor, MultiViewDataset
    from modeling_mama.reports import build_report
    from modeling_mama.tokenization import train_report_tokenizer
    from modeling_mama.training.multiview import report_fields_from_row

    pretrain = load_example("pretrain")
    model_args, data_args, training_args = pretrain.parse_arguments(["--output_dir", out_dir, *ARGUMENTS])

    rows = _schema_rows(6)
    tokenizer = train_report_tokenizer([s for r in rows for s in build_report(report_fields_from_row(r))], vocab_size=1000)
    dataset = datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})
    torch.manual_seed(0)
    model = MamaModel(MamaConfig.tiny(vocab_size=len(tokenizer), sentence_separator_token_id=tokenizer.sep_token_id))
    processor = MamaProcessor(MamaImageProcessor(size=56), tokenizer)
    train = WithoutSomeExtraViews(MultiViewDataset(dataset, processor, seed=0, augment=False),
                                  indices=range(0, len(dataset), 5))

    late_heads = {}

    class RecordLateHeads(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            parameters = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
            late_heads[state.global_step] = {name: parameters[name].detach().clone() for name in LATE_HEADS}

    trainer = pretrain.build_trainer(model, processor, train, training_args, data_args)
    train.trainer = trainer
    trainer.add_callback(RecordLateHeads())
    late_heads[0] = {name: value.detach().clone() for name, value in model.named_parameters() if name in LATE_HEADS}
    trainer.train()

    rank = trainer.args.process_index
    # Parameters must agree; BatchNorm running stats are buffers DDP re-broadcasts from rank 0 each forward.
    torch.save({name: value.detach().clone() for name, value in model.named_parameters()},
               os.path.join(out_dir, f"params_rank{rank}.pt"))
    torch.save(late_heads, os.path.join(out_dir, f"late_heads_rank{rank}.pt"))
    wrapped = trainer.model_wrapped
    with open(os.path.join(out_dir, f"history_rank{rank}.json"), "w") as handle:
        json.dump({
            "world_size": trainer.args.world_size, "log_history": trainer.state.log_history,
            "served_without_extra_view_at": train.served_at,
            "mixed_precision": trainer.accelerator.mixed_precision,
            "wrapper": type(wrapped).__name__, "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
            "activation_checkpointing": trainer.accelerator.unwrap_model(trainer.model).is_activation_checkpointing,
        }, handle)


if __name__ == "__main__":
    main(sys.argv[1])
