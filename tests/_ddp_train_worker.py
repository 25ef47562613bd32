"""Worker of test_trainer's 2-process DDP run: a few MamaTrainer steps, then each rank writes its
parameters and its loss history (launched with torch.distributed.run, gloo on the CPU)."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import _schema_rows  # noqa: E402


def main(out_dir: str) -> None:
    import datasets

    from modeling_mama import MamaConfig, MamaDataCollator, MamaImageProcessor, MamaModel, MamaProcessor, MamaTrainer
    from modeling_mama import MamaTrainingArguments, MultiViewDataset
    from modeling_mama.training.multiview import report_fields_from_row
    from modeling_mama.reports import build_report
    from modeling_mama.tokenization import train_report_tokenizer

    rows = _schema_rows(4)
    tokenizer = train_report_tokenizer([s for r in rows for s in build_report(report_fields_from_row(r))], vocab_size=1000)
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    dataset = datasets.Dataset.from_dict(columns)
    torch.manual_seed(0)
    config = MamaConfig.tiny(vocab_size=len(tokenizer), sentence_separator_token_id=tokenizer.sep_token_id)
    model = MamaModel(config)
    processor = MamaProcessor(MamaImageProcessor(size=56), tokenizer)
    train = MultiViewDataset(dataset, processor, seed=0, augment=False)
    args = MamaTrainingArguments(
        output_dir=out_dir, max_steps=10, per_device_train_batch_size=4, learning_rate=2e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, late_loss_step=2,
    )
    trainer = MamaTrainer(model=model, args=args, train_dataset=train,
                          data_collator=MamaDataCollator(processor))
    trainer.train()
    rank = trainer.args.process_index
    # Parameters must agree; BatchNorm running stats are buffers DDP re-broadcasts from rank 0 each forward.
    state = {name: value.detach().clone() for name, value in model.named_parameters()}
    torch.save(state, os.path.join(out_dir, f"params_rank{rank}.pt"))
    with open(os.path.join(out_dir, f"history_rank{rank}.json"), "w") as handle:
        json.dump({"world_size": trainer.args.world_size, "log_history": trainer.state.log_history}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
