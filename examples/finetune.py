"""Full fine-tune of a pre-trained MaMA image tower with a new linear head.

    python examples/finetune.py --model PRETRAINED --dataset DATA --task birads --output_dir OUT
    python examples/finetune.py --model PRETRAINED --dataset DATA --task density --train_fraction 0.1 \
        --output_dir OUT
    accelerate launch examples/finetune.py --model PRETRAINED --dataset DATA --task cancer --output_dir OUT

The same arguments and outputs as `examples/linear_probe.py` (the paper's recipe by default,
class-balanced sampling, `--train_fraction`, `--random_init`, `--test_split`, `--augment`, every
`TrainingArguments` option; `metrics.json`, `confusion_matrix.png` and `roc.png` in `--output_dir`);
here the whole image tower trains. To keep the best checkpoint on the validation split:
`--eval_strategy steps --save_strategy steps --load_best_model_at_end --metric_for_best_model auc`.
See `modeling_mama.training.finetuning`.
"""

from modeling_mama.training.finetuning import main_finetune

if __name__ == "__main__":
    main_finetune()
