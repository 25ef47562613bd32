"""Configuration of a MaMA model: an image tower, a text tower, their heads and the loss recipe.

A `MamaConfig` holds two sub-configs (any transformers vision model that returns token states, and
any causal or BERT-like text model) plus the values the MaMA heads and losses read. Presets are
named sets of values: `MamaConfig.paper()` is the published recipe (METHOD.md), `MamaConfig.tiny()`
a few-thousand-parameter model for tests and the offline demo.

>>> from modeling_mama import MamaConfig
>>> config = MamaConfig.tiny()
>>> config.vision_config.model_type, config.text_config.model_type
('dinov2_with_registers', 'gpt2')
>>> round(MamaConfig.paper().logit_scale_init_value, 4)
2.6593
"""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers import __version__ as transformers_version
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.configuration_utils import SubConfigSpec

from .hub import normalize_datasets

# ln(1 / 0.07): CLIP's initial temperature, used for both the global and the local scale.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
# ln(100): the scales are clamped here so the softmax temperature never drops below 0.01.
MAX_LOGIT_SCALE = math.log(100.0)

# The paper's LoRA (METHOD.md section 1). Its target, GPT-2's fused QKV `c_attn` (a Conv1D, weight
# [in, out]: fan_in_fan_out), is BioMedLM's; `lora` without `target_modules` takes the text tower's
# own default from peft's table, so another tower needs no GPT-2 names (see `resolve_lora_config`).
PAPER_LORA = {
    "r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "target_modules": ["c_attn"],
    "bias": "none",
    "fan_in_fan_out": True,
}

IMAGE_POOLINGS = ("mean_pre_norm", "cls", "mean_patches")
TEXT_POOLINGS = ("masked_mean", "mean", "last")
SENTENCE_POOLINGS = ("auto", "separator", "mean")
LOSS_TERMS = ("clip", "multiview", "symmetric_clip", "local")


class MamaConfig(PreTrainedConfig):
    r"""
    Configuration of [`MamaModel`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): the image tower (DINOv2 with registers by default;
            Dinov2, ViT and `timm_wrapper` towers work too).
        text_config (`dict` or `PreTrainedConfig`): the text tower (GPT-2 by default; any causal LM or
            BERT-like encoder).
        projection_dim: size of the shared global embedding space.
        local_hidden_dim, local_projection_dim: the token-wise MLP of the patch / sentence heads (SLA).
        multiview_hidden_dim, multiview_projection_dim: the SimCLR head of the image-image loss
            (`multiview_hidden_dim=None` means the image tower's width).
        logit_scale_init_value, local_scale_init_value: initial log inverse temperatures.
        max_logit_scale: both scales are clamped at this value in the forward pass (ln 100).
        image_pooling: `"mean_pre_norm"` (paper: mean of every output token, CLS and registers included,
            before the final LayerNorm), `"cls"` or `"mean_patches"`.
        text_pooling: `"masked_mean"` (mean over real tokens; the paper averaged padding too, which is
            `"mean"`), or `"last"` (the last real token).
        sentence_pooling: how a sentence becomes one vector for SLA: `"separator"` (the hidden state at
            the sentence's separator token, right for causal towers), `"mean"` (mean over the
            sentence's tokens, right for bidirectional towers) or `"auto"` (picks by tower type).
        freeze_vision_final_norm: freeze the affine of the image tower's final LayerNorm (paper).
        freeze_text_tower: freeze the text tower except LoRA adapters (paper).
        lora: peft `LoraConfig` arguments as a plain dict, or `None` for no adapters. Without
            `target_modules` the text tower's default target modules (peft's table for its model type)
            are used, and `fan_in_fan_out` follows the target layer type; the resolved values are
            written back into the config when the model is built.
        {clip,multiview,symmetric_clip,local}_loss_weight: weight of each loss term (0 switches it off).
            *When* each term runs (the paper's late start at step 8000) and whether CLIP / SLA gather
            across processes are training decisions, passed to `forward` by the trainer
            (`training.schedule.LossSchedule`, `MamaTrainingArguments`), not model properties.
        local_loss_symmetric: add the image->text direction of SLA (paper: on).
        nt_xent_temperature: temperature of the image-image NT-Xent loss.
        activation_checkpointing: turn on gradient checkpointing in both towers when the model is built.
        sentence_separator_token_id: the tokenizer's sentence separator; used to find sentence ends when
            `sentence_positions` are not given.
        training_datasets: the datasets the weights were trained on (`hub.normalize_datasets`: "Emory
            EMBED" is recorded as `embed`); every upload path reads it to respect licences that forbid
            releasing weights (EMBED) and the model card shows their terms and attribution.
    """

    model_type = "mama"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2_with_registers"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    local_hidden_dim: int = 2048
    local_projection_dim: int = 512
    multiview_hidden_dim: int | None = None
    multiview_projection_dim: int = 512
    logit_scale_init_value: float | int = CLIP_LOGIT_SCALE_INIT
    local_scale_init_value: float | int = CLIP_LOGIT_SCALE_INIT
    max_logit_scale: float | int = MAX_LOGIT_SCALE
    image_pooling: str = "mean_pre_norm"
    text_pooling: str = "masked_mean"
    sentence_pooling: str = "auto"
    freeze_vision_final_norm: bool = True
    freeze_text_tower: bool = True
    lora: dict | None = None
    clip_loss_weight: float | int = 1.0
    multiview_loss_weight: float | int = 1.0
    symmetric_clip_loss_weight: float | int = 1.0
    local_loss_weight: float | int = 1.0
    local_loss_symmetric: bool = True
    nt_xent_temperature: float | int = 0.5
    activation_checkpointing: bool = False
    sentence_separator_token_id: int | None = None
    training_datasets: list | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in self.sub_configs_defaults:
            value = getattr(self, name)
            model_type = value.get("model_type") if isinstance(value, dict) else None
            if model_type is not None and model_type not in CONFIG_MAPPING:
                # transformers would list its ~400 known types; say which tower and what to do.
                raise ValueError(
                    f"MamaConfig.{name} has model_type {model_type!r}, which transformers {transformers_version} "
                    "does not know: upgrade transformers (pip install -U transformers) if that model is newer, or "
                    "fix the model_type in config.json.")
        super().__post_init__(**kwargs)
        # A single name is one dataset, never its letters; known names become DATASET_TERMS keys.
        self.training_datasets = normalize_datasets(self.training_datasets)
        for name, value, allowed in (
            ("image_pooling", self.image_pooling, IMAGE_POOLINGS),
            ("text_pooling", self.text_pooling, TEXT_POOLINGS),
            ("sentence_pooling", self.sentence_pooling, SENTENCE_POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"MamaConfig.{name}={value!r} is not one of {allowed}.")

    def loss_weight(self, term: str) -> float:
        """Weight of a loss term (`"clip"`, `"multiview"`, `"symmetric_clip"` or `"local"`)."""
        return float(getattr(self, f"{term}_loss_weight"))

    def weighted_loss_terms(self) -> tuple[str, ...]:
        """The loss terms with a non-zero weight, in `LOSS_TERMS` order."""
        return tuple(term for term in LOSS_TERMS if self.loss_weight(term) != 0.0)

    @classmethod
    def paper(cls, **kwargs) -> "MamaConfig":
        """The published MaMA recipe: DINOv2-reg ViT-B/14 at 518 and a BioMedLM-shaped GPT-2 with LoRA.

        The text vocabulary is BioMedLM's 28,896 tokens plus the 5 special tokens MaMA adds
        (bos, pad, sentence separator, mask, unk).
        """
        from transformers import Dinov2WithRegistersConfig, GPT2Config

        vision = Dinov2WithRegistersConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
            patch_size=14, image_size=518, num_register_tokens=4,
        )
        text = GPT2Config(
            vocab_size=28896 + 5, n_positions=1024, n_embd=2560, n_layer=32, n_head=20,
            bos_token_id=None, eos_token_id=None,
        )
        values = dict(
            vision_config=vision.to_dict(), text_config=text.to_dict(), lora=dict(PAPER_LORA),
            activation_checkpointing=True,
        )
        values.update(kwargs)
        return cls(**values)

    @classmethod
    def tiny(cls, *, vocab_size: int = 512, image_size: int = 56, hidden_size: int = 32, **kwargs) -> "MamaConfig":
        """A tiny model (tens of thousands of parameters) for tests and the offline demo."""
        from transformers import Dinov2WithRegistersConfig, GPT2Config

        vision = Dinov2WithRegistersConfig(
            hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
            patch_size=14, image_size=image_size, num_register_tokens=4,
        )
        text = GPT2Config(
            vocab_size=vocab_size, n_positions=256, n_embd=hidden_size, n_layer=2, n_head=2,
            bos_token_id=None, eos_token_id=None,
        )
        values = dict(
            vision_config=vision.to_dict(), text_config=text.to_dict(),
            projection_dim=hidden_size, local_hidden_dim=2 * hidden_size, local_projection_dim=hidden_size,
            multiview_projection_dim=hidden_size,
            lora={**PAPER_LORA, "r": 4, "lora_alpha": 16, "lora_dropout": 0.0},
        )
        values.update(kwargs)
        return cls(**values)


__all__ = ["MamaConfig", "CLIP_LOGIT_SCALE_INIT", "LOSS_TERMS", "MAX_LOGIT_SCALE", "PAPER_LORA"]
