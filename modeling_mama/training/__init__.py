"""Training and evaluation of MaMA: what pre-training, probing, fine-tuning and scoring need.

Nothing here travels with a saved model folder (that is the package's top level). Names load on
first use, so `import modeling_mama.training` stays cheap.

- `trainer`: `MamaTrainer`, `MamaTrainingArguments`, `ConvertedCheckpointsTrainer`.
- `collator`: `MamaDataCollator`.
- `multiview`: `ExamIndex`, `MultiViewDataset` (METHOD.md section 4).
- `converted`: what a converted dataset's `conversion.json` says about its stored images.
- `finetuning`: linear probe / fine-tune datasets, sampler and trainer.
- `zero_shot`: the paper's zero-shot protocol over a converted dataset (scoring: `modeling_mama.zero_shot_scoring`).
- `metrics` (+ the `evaluate` module in `metric/`), `visualization`: scores and plots.
"""

import importlib

_LAZY = {
    "MamaTrainer": "trainer",
    "MamaTrainingArguments": "trainer",
    "ConvertedCheckpointsTrainer": "trainer",
    "MamaDataCollator": "collator",
    "ExamIndex": "multiview",
    "MultiViewDataset": "multiview",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
