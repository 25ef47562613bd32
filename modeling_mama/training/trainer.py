"""Pre-training MaMA with the transformers `Trainer` (METHOD.md sections 2 and 6).

- `MamaTrainer.compute_loss` asks its `LossSchedule` (built from `late_loss_step`) which terms run
  at the current optimizer step and passes them to the model (`loss_terms=`), with the gather choice
  (`gather_with_grad=`). Nothing is frozen or unfrozen mid-run (the reference's approach broke
  DDP gradient sync and resume): before its start step a term is simply not computed, so its heads get
  no gradient (`None`, not zero) and the optimizer, weight decay included, leaves them alone.
- Under DDP those heads are unused parameters until their step, so `MamaTrainingArguments` defaults
  to `ddp_find_unused_parameters=True`; the value is in the arguments before `Trainer.__init__`
  builds the accelerator (transformers would otherwise pick `False` whenever activation
  checkpointing is on). That works with transformers' default non-reentrant checkpointing; reentrant
  checkpointing hides the checkpointed blocks from DDP's search for unused parameters, whose gradients
  then arrive unannounced ("marked ready twice", pytorch#46166), so it is refused. `static_graph`
  cannot replace it: the graph changes when the late terms start.
- `MamaTrainer` works on a copy of the caller's arguments (`dataclasses.replace`), never the original.
- Every named loss term and the batch's image<->report retrieval accuracy are logged.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import ParallelMode
from transformers.trainer_pt_utils import get_parameter_names

from ..hub import check_release_allowed, write_model_card
from .metrics import retrieval_accuracy
from .schedule import PAPER_LATE_LOSS_STEP, LossSchedule

NO_DECAY_NAME_PARTS = ("bias", "layernorm", "layer_norm", "rmsnorm", "logit_scale", "local_scale")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class MamaTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus MaMA's optimizer choice.

    `decay_all_parameters`: apply weight decay to scales, norms and biases too (the paper did; the
    default leaves them undecayed, the usual practice for CLIP-style models). `late_loss_step` and
    `gather_with_grad` decide which loss terms run when, and whether CLIP / SLA gather across
    processes (`LossSchedule`, `MamaModel.forward`).
    """

    decay_all_parameters: bool = field(default=False, metadata={"help": "Weight decay on scales/norms/biases too (paper)."})
    late_loss_step: int = field(
        default=PAPER_LATE_LOSS_STEP,
        metadata={"help": "Optimizer step where the multi-view, symmetric-CLIP and local terms start (paper 8000)."},
    )
    gather_with_grad: bool = field(
        default=False, metadata={"help": "CLIP / SLA over the batch of every process (paper: off; NT-Xent always gathers)."},
    )
    acknowledge_data_license: bool = field(
        default=False, metadata={"help": "You hold written permission to release weights trained on data whose "
                                         "licence needs it (EMBED, a hospital's own images)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={"help": "DDP's find_unused_parameters (default True: late loss terms leave heads unused until "
                          "their step; see modeling_mama.training.trainer)."},
    )

    def __post_init__(self):
        check_max_steps(self.max_steps)
        super().__post_init__()


def check_max_steps(max_steps: int) -> None:
    """`--max_steps 0` would still run one optimizer step and save a "trained" model: refuse it."""
    if max_steps == 0:
        raise ValueError("--max_steps 0 trains nothing: give a positive number of optimizer steps, or leave it out "
                         "(-1) to train for --num_train_epochs epochs.")


def _check_checkpointing_under_ddp(args: TrainingArguments) -> None:
    """Refuse reentrant activation checkpointing with DDP's find_unused_parameters (see module docstring)."""
    reentrant = (args.activation_checkpointing_kwargs or {}).get("use_reentrant", False)
    if (args.activation_checkpointing and reentrant and args.ddp_find_unused_parameters
            and args.parallel_mode == ParallelMode.DISTRIBUTED):
        raise ValueError(
            "activation_checkpointing_kwargs={'use_reentrant': True} does not work with DDP's "
            "find_unused_parameters=True, which the late-starting loss terms need: keep the default non-reentrant "
            "checkpointing (drop use_reentrant)."
        )


class _EpochCallback(TrainerCallback):
    """Tells the dataset the epoch, so per-item randomness is reproducible across a resume."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch or 0))


class ConvertedCheckpointsTrainer(Trainer):
    """The `Trainer` both MaMA trainers build on (pre-training, probe / fine-tune): checkpoints and the Hub.

    Checkpoints: transformers 5.23's Trainer restores checkpoints (resume, `load_best_model_at_end`)
    with a raw `load_state_dict(strict=False)`, but `save_pretrained` writes some towers (DINOv2)
    under their legacy key names: the image tower's attention weights silently keep their current
    values (only a warning is logged). Loading through `from_pretrained` applies the key
    conversions; the copy is strict, so any other mismatch fails loudly.

    The Hub: the Trainer uploads through its own paths (`push_to_hub=True` creates the repository
    in `__init__`, checkpoints are pushed on save, `trainer.push_to_hub()` uploads the output
    folder), not through the model's. Each of them first checks the model's
    `config.training_datasets` with `hub.check_release_allowed` (the training arguments'
    `acknowledge_data_license` is the acknowledgement), and the card uploaded is this package's
    (training data, terms, attribution), not the Trainer's generic one.
    """

    def check_release_allowed(self) -> None:
        """Raise `hub.DatasetLicenseError` when the model's training data forbids uploading it."""
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        check_release_allowed(getattr(getattr(model, "config", None), "training_datasets", None),
                              getattr(self.args, "acknowledge_data_license", False))

    def init_hf_repo(self, *args, **kwargs) -> None:
        self.check_release_allowed()
        return super().init_hf_repo(*args, **kwargs)

    def push_to_hub(self, *args, **kwargs):
        self.check_release_allowed()
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        self.check_release_allowed()
        return super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args, **kwargs) -> None:
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        if not self.is_world_process_zero() or getattr(config, "model_type", None) != "mama":
            return super().create_model_card(*args, **kwargs)
        write_model_card(self.args.output_dir, config, training_args=self.args.to_dict(), repo_id=self.hub_model_id)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        has_weights = any(os.path.isfile(os.path.join(resume_from_checkpoint, name))
                          for name in ("model.safetensors", "model.safetensors.index.json"))
        if self.is_fsdp_enabled or not has_weights or not isinstance(target, PreTrainedModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        reloaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(reloaded.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or checkpoint is None:
            return super()._load_best_model()
        self._load_from_checkpoint(checkpoint)


class MamaTrainer(ConvertedCheckpointsTrainer):
    """A `Trainer` for `MamaModel` pre-training; see the module docstring."""

    def __init__(self, model=None, args: TrainingArguments | None = None, *positional, **kwargs):
        args = args if args is not None else MamaTrainingArguments(output_dir="trainer_output")
        # A copy, settled before super().__init__ builds the accelerator from it. Items are the
        # collator's input (two views + report sentences), not forward() kwargs; late-starting terms
        # leave their heads unused for a while (see module docstring).
        changes = {"remove_unused_columns": False}
        if args.ddp_find_unused_parameters is None:
            changes["ddp_find_unused_parameters"] = True
        args = dataclasses.replace(args, **changes)
        _check_checkpointing_under_ddp(args)
        super().__init__(model, args, *positional, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochCallback(self.train_dataset))
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_count = 0

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if getattr(self.args, "decay_all_parameters", False):
            return [name for name, _ in model.named_parameters()]
        names = get_parameter_names(model, list(NORM_TYPES), list(NO_DECAY_NAME_PARTS))
        return [name for name in names if not name.endswith(NO_DECAY_NAME_PARTS)]

    @property
    def loss_schedule(self) -> LossSchedule:
        return LossSchedule.late(getattr(self.args, "late_loss_step", PAPER_LATE_LOSS_STEP))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, return_loss=True, loss_terms=self.loss_schedule.active_terms(self.state.global_step),
                        gather_with_grad=getattr(self.args, "gather_with_grad", False))
        if model.training:
            self._record(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _record(self, outputs) -> None:
        values = {f"loss_{name}": value.detach() for name, value in outputs.loss_terms.items()}
        for k in (1, 5):
            image_to_text, text_to_image = retrieval_accuracy(outputs.logits_per_image.detach(), k)
            values[f"retrieval_i2t_top{k}"] = image_to_text
            values[f"retrieval_t2i_top{k}"] = text_to_image
        values["logit_scale"] = outputs.logits_per_image.new_tensor(0.0) + self._scale()
        for name, value in values.items():
            self._log_sums[name] = self._log_sums.get(name, 0.0) + value.float()
        self._log_count += 1

    def _scale(self) -> float:
        model = self.accelerator.unwrap_model(self.model)
        return float(model.clamped_scales()[0].detach().exp())

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._log_count:
            names = sorted(self._log_sums)
            means = torch.stack([self._log_sums[name] / self._log_count for name in names])
            # Every process logs at the same steps, so this collective is matched on all ranks.
            means = self.accelerator.reduce(means, reduction="mean") if self.accelerator.num_processes > 1 else means
            logs.update({name: round(float(value), 4) for name, value in zip(names, means)})
            self._log_sums, self._log_count = {}, 0
        super().log(logs, *args, **kwargs)


__all__ = ["ConvertedCheckpointsTrainer", "MamaTrainer", "MamaTrainingArguments", "check_max_steps",
           "retrieval_accuracy"]
