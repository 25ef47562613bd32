"""MaMA as a transformers model: image tower + text tower + global, local and multi-view heads.

`MamaModel` follows `CLIPModel`: `get_image_features` / `get_text_features` give the projected global
features, `forward` returns `logits_per_image` / `logits_per_text` (so the stock zero-shot pipeline
works) and, with `return_loss=True`, the MaMA loss and each of its named terms.

>>> import torch
>>> from modeling_mama import MamaConfig, MamaModel
>>> model = MamaModel(MamaConfig.tiny(vocab_size=64, sentence_separator_token_id=3)).eval()
>>> input_ids = torch.tensor([[1, 5, 6, 3, 7, 3, 2], [1, 8, 3, 2, 0, 0, 0]])
>>> attention_mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()
>>> out = model(input_ids=input_ids, attention_mask=attention_mask,
...             pixel_values=torch.randn(2, 3, 56, 56), return_loss=True)
>>> out.logits_per_image.shape, sorted(out.loss_terms)
(torch.Size([2, 2]), ['clip', 'local'])
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils import ModelOutput
from transformers.utils.generic import TransformersKwargs, can_return_tuple

from .configuration_mama import LOSS_TERMS, MamaConfig
from .hub import (
    ReleaseGuardMixin,
    check_pretrained_location,
    corrupt_weights_error,
    normalize_datasets,
    write_model_card,
)
from .losses import contrastive_loss, local_alignment_loss, nt_xent_loss


class MamaTowerKwargs(TypedDict, total=False):
    """Keyword arguments the MaMA models pass on to their towers.

    `output_hidden_states` / `output_attentions` default to the MaMA config's values (then the tower's).
    Attention weights need the eager attention implementation (`from_pretrained(...,
    attn_implementation="eager")` or `model.set_attn_implementation("eager")`): under SDPA,
    transformers warns and returns no weights.
    """

    output_hidden_states: bool | None
    output_attentions: bool | None


def _reject_unknown_kwargs(method: Callable, kwargs: dict[str, Any], accepted: Collection[str]) -> None:
    """Raise the `TypeError` Python raises for an unexpected keyword argument, with a spelling hint."""
    unknown = [name for name in kwargs if name not in accepted]
    if not unknown:
        return
    known = [*inspect.signature(method).parameters, *accepted]
    hint = difflib.get_close_matches(unknown[0], known, n=1)
    raise TypeError(
        f"{method.__qualname__}() got an unexpected keyword argument {unknown[0]!r}"
        + (f"; did you mean {hint[0]!r}?" if hint else f"; it takes its named arguments and {sorted(accepted)}.")
    )


def _tower_output(outputs, pooler_output: torch.Tensor) -> BaseModelOutputWithPooling:
    """A tower's output with `pooler_output` replaced by the projected features, as `CLIPModel` does."""
    return BaseModelOutputWithPooling(
        last_hidden_state=outputs.last_hidden_state, pooler_output=pooler_output,
        hidden_states=getattr(outputs, "hidden_states", None), attentions=getattr(outputs, "attentions", None),
    )


@dataclass
class MamaOutput(ModelOutput):
    """Output of [`MamaModel`].

    Args:
        loss: the weighted sum of the loss terms that ran (with `return_loss=True`).
        logits_per_image: `[n_images, n_texts]` scaled cosine similarities.
        logits_per_text: its transpose.
        text_embeds, image_embeds: L2-normalised global embeddings.
        loss_clip, loss_multiview, loss_symmetric_clip, loss_local: each term that ran, unweighted
            (`loss_terms` gives them as a dict by name).
        patch_embeds, sentence_embeds: the L2-normalised local embeddings used by SLA (when the local
            term ran or `output_local_embeds=True`).
        sentence_mask: long `[B, S]`, 1 for the real sentences of `sentence_embeds`.
        text_model_output, vision_model_output: the towers' outputs (`BaseModelOutputWithPooling`, with
            `pooler_output` the projected features, and hidden states / attentions when asked), as
            `CLIPOutput` keeps them. `vision_model_output` covers `pixel_values` only, not the extra view.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    loss_clip: torch.FloatTensor | None = None
    loss_multiview: torch.FloatTensor | None = None
    loss_symmetric_clip: torch.FloatTensor | None = None
    loss_local: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    sentence_embeds: torch.FloatTensor | None = None
    sentence_mask: torch.LongTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    @property
    def loss_terms(self) -> dict[str, torch.Tensor]:
        """The loss terms that ran, unweighted, by name (`clip`, `multiview`, `symmetric_clip`, `local`)."""
        terms = {term: getattr(self, f"loss_{term}") for term in LOSS_TERMS}
        return {term: value for term, value in terms.items() if value is not None}

    def to_tuple(self) -> tuple[Any, ...]:
        # The towers' outputs become tuples too, so the tuple holds only tensors (and tuples of them).
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())


class MamaBatchNorm1d(nn.BatchNorm1d):
    """`BatchNorm1d` that also runs when its affine parameters arrive in a lower precision than its fp32
    running statistics, as FSDP2 mixed precision hands them over (it casts parameters, not buffers, and
    `batch_norm` rejects the mix): it then normalises in fp32 and returns the input's dtype."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        statistics = self.running_mean
        if self.weight is None or statistics is None or self.weight.dtype == statistics.dtype:
            return super().forward(input)
        if self.training:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        output = F.batch_norm(input.to(statistics.dtype), self.running_mean, self.running_var,
                              self.weight.to(statistics.dtype), self.bias.to(statistics.dtype),
                              self.training, momentum, self.eps)
        return output.to(input.dtype)


class MamaLocalProjection(nn.Module):
    """Token-wise MLP of the SLA heads: Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm(affine=False).

    Only real tokens (where `mask` is True) are projected, so padding never enters the BatchNorm
    statistics; padded positions come back as zeros.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm1 = MamaBatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.norm2 = MamaBatchNorm1d(out_dim, affine=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = tokens.shape
        selected = tokens.reshape(batch * length, -1) if mask is None else tokens[mask]
        projected = self.norm2(self.fc2(F.relu(self.norm1(self.fc1(selected)))))
        if mask is None:
            return projected.reshape(batch, length, -1)
        out = projected.new_zeros(batch, length, projected.shape[-1])
        out[mask] = projected
        return out


class MamaMultiViewHead(nn.Sequential):
    """SimCLR projection head for the image-image loss (bias-free linears, BatchNorm after each)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            MamaBatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim, bias=False),
            MamaBatchNorm1d(out_dim),
        )


def _final_norm(vision_model: nn.Module) -> nn.Module | None:
    """The image tower's final norm (transformers ViT family: `layernorm`; timm: `timm_model.norm`)."""
    if isinstance(getattr(vision_model, "layernorm", None), nn.Module):
        return vision_model.layernorm
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None and isinstance(getattr(timm_model, "norm", None), nn.Module):
        return timm_model.norm
    return None


def _num_prefix_tokens(vision_model: nn.Module) -> int:
    """CLS + register tokens in front of the patch tokens."""
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        return int(getattr(timm_model, "num_prefix_tokens", 1))
    return 1 + int(getattr(vision_model.config, "num_register_tokens", 0) or 0)


def _is_adapter_parameter(name: str) -> bool:
    """Whether a parameter belongs to a LoRA adapter, by peft's own names for its adapter layers."""
    from peft.tuners.lora import LoraLayer

    return any(f"{layer}." in name or name.endswith(layer) for layer in LoraLayer.adapter_layer_names)


def resolve_lora_config(lora: dict, text_model: nn.Module):
    """A peft `LoraConfig` for `text_model` from the config's `lora` dict.

    Missing `target_modules` come from peft's default table for the tower's model type (GPT-2 /
    BioMedLM: `c_attn`; BERT: `query`, `value`; Llama: `q_proj`, `v_proj`); missing `fan_in_fan_out`
    is True exactly when the targets are transformers' `Conv1D` (weight stored [in, out], GPT-2 style).
    """
    from peft import LoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers.pytorch_utils import Conv1D

    values = dict(lora)
    if not values.get("target_modules"):
        model_type = getattr(text_model.config, "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ValueError(f"No default LoRA target modules for a {model_type!r} text tower: set "
                             f"MamaConfig.lora['target_modules'] (e.g. the attention projections' names).")
        values["target_modules"] = list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    if "fan_in_fan_out" not in values:
        targets = set(values["target_modules"])
        layers = [module for name, module in text_model.named_modules() if name.split(".")[-1] in targets]
        values["fan_in_fan_out"] = bool(layers) and all(isinstance(layer, Conv1D) for layer in layers)
    return LoraConfig(**values)


def _is_causal_text_config(text_config) -> bool:
    model_type = text_config.model_type
    if getattr(text_config, "is_decoder", False):
        return True
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def sentence_positions_from_ids(input_ids: torch.Tensor, separator_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the separator tokens in each row, padded with 0, and the matching mask.

    >>> sentence_positions_from_ids(torch.tensor([[1, 5, 3, 6, 3, 2], [1, 7, 3, 2, 0, 0]]), 3)
    (tensor([[2, 4],
            [2, 0]]), tensor([[ True,  True],
            [ True, False]]))
    """
    is_separator = input_ids == separator_id
    counts = is_separator.sum(dim=1)
    num_sentences = max(int(counts.max()) if counts.numel() else 0, 1)
    # A stable sort puts separator positions first, in order.
    order = torch.argsort((~is_separator).to(torch.int8), dim=1, stable=True)[:, :num_sentences]
    mask = torch.arange(num_sentences, device=input_ids.device)[None, :] < counts[:, None]
    return torch.where(mask, order, torch.zeros_like(order)), mask


def _unsharded_class(cls: type) -> type:
    """The model class under FSDP2's dynamic `FSDP<Model>(FSDPModule, <Model>)` subclass (else `cls`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return cls
    if not issubclass(cls, FSDPModule):
        return cls
    return next(base for base in cls.__bases__ if not issubclass(base, FSDPModule))


class MamaPreTrainedModel(ReleaseGuardMixin, PreTrainedModel):
    """Base class of the MaMA models: loading, saving (with the model card) and the licence guard.

    Every upload path (`push_to_hub`, `save_pretrained(..., push_to_hub=True)`) first checks
    `config.training_datasets` with `hub.check_release_allowed` (EMBED and a hospital's own data
    need `acknowledge_data_license=True`), and uploads this package's model card (with the
    attribution CC BY data asks for) rather than a generic one.
    """

    config_class = MamaConfig
    config: MamaConfig
    base_model_prefix = "mama"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # The losses are means over the batch and take no `num_items_in_batch`: the Trainer must scale them
    # for gradient accumulation itself (a forward with **kwargs would otherwise tell it not to).
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_pretrained_location(pretrained_model_name_or_path)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            corrupt = corrupt_weights_error(pretrained_model_name_or_path, error)
            if corrupt is None:
                raise
            raise corrupt from error
        # Loading replaces parameters (and their requires_grad flags): re-apply what the config freezes.
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_frozen_parameters()
        return loaded

    def release_training_datasets(self) -> list[str]:
        return normalize_datasets(self.config.training_datasets)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the rendered model card as README.md.

        When the classes are registered for auto classes (importing `modeling_mama` does it), the
        folder also carries the code, and `auto_map` names every Auto class that can load it.
        With `push_to_hub=True` the licence guard runs first (see the class docstring).
        """
        model_class = _unsharded_class(type(self))
        if model_class is not type(self):
            # FSDP2 turns the model into a subclass defined in torch (`FSDPMamaModel`); the folder must
            # carry this package's code and name its class, so save as the class it wraps.
            sharded_class, self.__class__ = type(self), model_class
            try:
                return self.save_pretrained(save_directory, *args, **kwargs)
            finally:
                self.__class__ = sharded_class
        if getattr(type(self), "_auto_class", None) is not None:
            # transformers records one Auto class per model class; add the others.
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_mama.MamaModel",
                "AutoModelForZeroShotImageClassification": "modeling_mama.MamaModel",
                "AutoModelForImageClassification": "modeling_mama.MamaForImageClassification",
            }
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(save_directory, self.config)
        return result

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        # Both upload paths end here, after transformers wrote a generic card (or the Hub's) into the
        # folder: upload this package's card instead, with the training data's terms and attribution.
        write_model_card(working_dir, self.config, repo_id=repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def apply_frozen_parameters(self) -> None:
        """Freeze what the config says: the text tower except LoRA, the image tower's final-norm affine."""
        text_model = getattr(self, "text_model", None)
        if text_model is not None and self.config.freeze_text_tower:
            for name, parameter in text_model.named_parameters():
                parameter.requires_grad_(_is_adapter_parameter(name))
        final_norm = _final_norm(self.vision_model)
        if self.config.freeze_vision_final_norm and final_norm is not None:
            final_norm.requires_grad_(False)

    def _tower_kwargs(self, method: Callable, kwargs: dict[str, Any], accepted: Collection[str]) -> dict[str, Any]:
        """`kwargs` checked against `accepted`, with the output flags this model's config switches on."""
        _reject_unknown_kwargs(method, kwargs, accepted)
        kwargs = dict(kwargs)
        for name in MamaTowerKwargs.__annotations__:
            if kwargs.get(name) is None and getattr(self.config, name, None):
                kwargs[name] = getattr(self.config, name)
        return kwargs

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MamaModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.constant_(module.local_scale, self.config.local_scale_init_value)
            # The text tower's own init treats LoRA's linears like any other linear; restore LoRA's
            # init (A random, B zero: the adapted tower starts equal to the pretrained one).
            for lora_module in module.text_model.modules():
                lora_a, lora_b = getattr(lora_module, "lora_A", None), getattr(lora_module, "lora_B", None)
                if isinstance(lora_a, nn.ModuleDict) and isinstance(lora_b, nn.ModuleDict):
                    for name in lora_a:
                        init.kaiming_uniform_(lora_a[name].weight, a=math.sqrt(5))
                        init.zeros_(lora_b[name].weight)


class MamaModel(MamaPreTrainedModel):
    """MaMA: an image tower and a text tower aligned globally (CLIP), across views (NT-Xent and
    symmetric CLIP) and locally (symmetric patch-sentence alignment). See METHOD.md."""

    def __init__(self, config: MamaConfig, vision_model: PreTrainedModel | None = None,
                 text_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.vision_model = vision_model if vision_model is not None else AutoModel.from_config(config.vision_config)
        self.text_model = text_model if text_model is not None else AutoModel.from_config(config.text_config)
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config

        vision_dim = config.vision_config.hidden_size
        text_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(vision_dim, config.projection_dim)
        self.text_projection = nn.Linear(text_dim, config.projection_dim)
        self.patch_projection = MamaLocalProjection(vision_dim, config.local_hidden_dim, config.local_projection_dim)
        self.sentence_projection = MamaLocalProjection(text_dim, config.local_hidden_dim, config.local_projection_dim)
        self.multiview_head = MamaMultiViewHead(
            vision_dim, config.multiview_hidden_dim or vision_dim, config.multiview_projection_dim
        )
        # One-element vectors rather than CLIP's 0-dim scalars: FSDP2 (`fully_shard`) cannot shard a
        # 0-dim parameter. Checkpoints keep the 0-dim layout (`_SCALE_LAYOUT` reshapes on load and save).
        self.logit_scale = nn.Parameter(torch.tensor([float(config.logit_scale_init_value)]))
        self.local_scale = nn.Parameter(torch.tensor([float(config.local_scale_init_value)]))

        self._num_prefix_tokens = _num_prefix_tokens(self.vision_model)
        self._sentence_pooling = config.sentence_pooling
        if self._sentence_pooling == "auto":
            self._sentence_pooling = "separator" if _is_causal_text_config(config.text_config) else "mean"

        if config.lora:
            from peft import inject_adapter_in_model

            lora_config = resolve_lora_config(config.lora, self.text_model)
            config.lora = {**config.lora, "target_modules": sorted(lora_config.target_modules),
                           "fan_in_fan_out": lora_config.fan_in_fan_out}
            inject_adapter_in_model(lora_config, self.text_model)
            if not config.freeze_text_tower:
                # peft leaves only the adapters trainable; freeze_text_tower=False means the whole tower trains.
                self.text_model.requires_grad_(True)
        self.apply_frozen_parameters()
        self.post_init()
        if config.activation_checkpointing:
            self.activation_checkpointing_enable()

    # ----------------------------------------------------------------------------------------- towers
    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        # With reentrant checkpointing and frozen embeddings no input of a checkpointed block requires
        # grad, and the LoRA adapters would get none (the reference's bug): make the embeddings' output
        # require grad whatever checkpointing flavour the caller picks.
        if enable and self.config.freeze_text_tower:
            self.text_model.enable_input_require_grads()

    def encode_image_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the image tower: (pooled feature [B, C], patch tokens after the final norm [B, P, C])."""
        pooled, outputs = self._run_vision_tower(pixel_values)
        return pooled, outputs.last_hidden_state[:, self._num_prefix_tokens:]

    def _run_vision_tower(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, Any]:
        """The tower's output object and the pooled feature `config.image_pooling` asks for."""
        final_norm = _final_norm(self.vision_model)
        captured: list[torch.Tensor] = []
        handle = None
        if final_norm is not None and self.config.image_pooling == "mean_pre_norm":
            handle = final_norm.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        tokens = outputs.last_hidden_state
        if self.config.image_pooling == "mean_pre_norm":
            pooled = (captured[-1] if captured else tokens).mean(dim=1)
        elif self.config.image_pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self._num_prefix_tokens:].mean(dim=1)
        return pooled, outputs

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the text tower: (pooled feature [B, C], hidden states [B, L, C])."""
        pooled, outputs = self._run_text_tower(input_ids, attention_mask)
        return pooled, outputs.last_hidden_state

    def _run_text_tower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        **kwargs) -> tuple[torch.Tensor, Any]:
        """The tower's output object and the pooled feature `config.text_pooling` asks for."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        if self.config.text_pooling == "mean":
            pooled = hidden.mean(dim=1)
        elif self.config.text_pooling == "last":
            last = attention_mask.sum(dim=1).clamp(min=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooled, outputs

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor,
                           **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling | tuple:
        """The image tower's output, with `pooler_output` holding the projected (not normalised) global
        image features [B, projection_dim], as `CLIPModel.get_image_features` returns them.

        Keyword arguments (`output_hidden_states`, `output_attentions`, `return_dict`) work as for any
        transformers model and go to the image tower; an unknown one raises `TypeError`.

        >>> model = MamaModel(MamaConfig.tiny(vocab_size=64))
        >>> out = model.get_image_features(torch.randn(2, 3, 56, 56), output_hidden_states=True)
        >>> out.pooler_output.shape, len(out.hidden_states)  # embeddings + 2 layers
        (torch.Size([2, 32]), 3)
        """
        kwargs = self._tower_kwargs(self.get_image_features, kwargs, TransformersKwargs.__annotations__)
        pooled, outputs = self._run_vision_tower(pixel_values, **kwargs)
        return _tower_output(outputs, self.visual_projection(pooled))

    @can_return_tuple
    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output, with `pooler_output` holding the projected (not normalised) global
        text features [B, projection_dim]. Keyword arguments go to the text tower, as for
        `get_image_features`."""
        kwargs = self._tower_kwargs(self.get_text_features, kwargs, TransformersKwargs.__annotations__)
        pooled, outputs = self._run_text_tower(input_ids, attention_mask, **kwargs)
        return _tower_output(outputs, self.text_projection(pooled))

    # ------------------------------------------------------------------------------------------ local
    def _patch_tokens_for_sla(self, patches: torch.Tensor, tile_pixel_values: torch.Tensor | None,
                              tile_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch tokens SLA aligns: the global view's, or every real tile's when tiles are given."""
        if tile_pixel_values is None:
            return patches, None
        batch, num_tiles = tile_pixel_values.shape[:2]
        if tile_mask is None:
            tile_mask = torch.ones(batch, num_tiles, dtype=torch.bool, device=tile_pixel_values.device)
        _, tile_patches = self.encode_image_tokens(tile_pixel_values[tile_mask])
        per_tile = tile_patches.shape[1]
        tokens = tile_patches.new_zeros(batch, num_tiles, per_tile, tile_patches.shape[-1])
        tokens[tile_mask] = tile_patches
        patch_mask = tile_mask[:, :, None].expand(batch, num_tiles, per_tile)
        return tokens.reshape(batch, num_tiles * per_tile, -1), patch_mask.reshape(batch, num_tiles * per_tile)

    def _sentence_features(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                           sentence_positions: torch.Tensor, sentence_mask: torch.Tensor) -> torch.Tensor:
        if self._sentence_pooling == "separator":
            index = sentence_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            return hidden.gather(1, index)
        # Mean over each sentence's tokens: token t belongs to the sentence whose separator is the
        # first one at or after t.
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        ends = torch.where(sentence_mask, sentence_positions, torch.full_like(sentence_positions, -1))
        starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1] + 1], dim=1)
        member = (positions[None, None, :] >= starts[:, :, None]) & (positions[None, None, :] <= ends[:, :, None])
        member = member & attention_mask.bool()[:, None, :] & sentence_mask[:, :, None]
        weights = member.to(hidden.dtype)
        return weights @ hidden / weights.sum(dim=-1, keepdim=True).clamp(min=1.0)

    def get_patch_embeddings(self, pixel_values: torch.Tensor, tile_pixel_values: torch.Tensor | None = None,
                             tile_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """L2-normalised local patch embeddings [B, P, local_projection_dim] and the patch mask."""
        _, patches = self.encode_image_tokens(pixel_values)
        tokens, patch_mask = self._patch_tokens_for_sla(patches, tile_pixel_values, tile_mask)
        return F.normalize(self.patch_projection(tokens, patch_mask), dim=-1), patch_mask

    def get_sentence_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                sentence_positions: torch.Tensor | None = None,
                                sentence_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised local sentence embeddings [B, S, local_projection_dim] and the sentence mask."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _, hidden = self.encode_text_tokens(input_ids, attention_mask)
        sentence_positions, sentence_mask = self._resolve_sentences(input_ids, sentence_positions, sentence_mask)
        features = self._sentence_features(hidden, attention_mask, sentence_positions, sentence_mask)
        return F.normalize(self.sentence_projection(features, sentence_mask), dim=-1), sentence_mask

    def _resolve_sentences(self, input_ids, sentence_positions, sentence_mask):
        if sentence_positions is None:
            separator = self.config.sentence_separator_token_id
            if separator is None:
                raise ValueError(
                    "The local (SLA) loss needs `sentence_positions`, or `config.sentence_separator_token_id` "
                    "to find them; MamaProcessor returns both."
                )
            return sentence_positions_from_ids(input_ids, separator)
        if sentence_mask is None:
            sentence_mask = torch.ones_like(sentence_positions, dtype=torch.bool)
        return sentence_positions, sentence_mask.bool()

    # ---------------------------------------------------------------------------------------- forward
    def clamped_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`logit_scale` and `local_scale`, clamped at `config.max_logit_scale` (ln 100)."""
        limit = float(self.config.max_logit_scale)
        return self.logit_scale.clamp(max=limit).reshape(()), self.local_scale.clamp(max=limit).reshape(())

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        extra_pixel_values: torch.FloatTensor | None = None,
        tile_pixel_values: torch.FloatTensor | None = None,
        tile_mask: torch.BoolTensor | None = None,
        sentence_positions: torch.LongTensor | None = None,
        sentence_mask: torch.BoolTensor | None = None,
        return_loss: bool | None = None,
        loss_terms: Collection[str] | None = None,
        gather_with_grad: bool = False,
        output_local_embeds: bool = False,
        **kwargs: Unpack[MamaTowerKwargs],
    ) -> MamaOutput | tuple:
        r"""
        Args:
            input_ids, attention_mask: the reports (or prompts), `[B, L]`.
            pixel_values: the global view of each image, `[B, 3, H, W]`.
            extra_pixel_values: a second view of the same exam (multi-view terms), `[B, 3, H, W]`.
            tile_pixel_values, tile_mask: full-resolution tiles `[B, T, 3, h, w]` and which are real;
                when given, SLA aligns the tiles' patches instead of the global view's.
            sentence_positions, sentence_mask: index of each sentence's separator token `[B, S]`, and
                which sentences are real; derived from `config.sentence_separator_token_id` if absent.
            return_loss: compute the MaMA loss.
            loss_terms: which terms to compute (names from `LOSS_TERMS`); `None` means every term with a
                non-zero weight. The trainer passes the terms its schedule has switched on
                (`training.schedule.LossSchedule`); terms with weight 0 never run. Terms needing a second
                view are skipped without `extra_pixel_values`.
            gather_with_grad: compute CLIP and SLA over the batch of every process (off in the paper).
                NT-Xent always takes its negatives from every process (METHOD.md section 2).
            output_local_embeds: also return patch / sentence embeddings when the local term did not run.
            output_hidden_states, output_attentions: passed to both towers; the results are in
                `vision_model_output` / `text_model_output` (see `MamaTowerKwargs`).
            return_dict: `False` returns `MamaOutput.to_tuple()`.

        An unknown keyword argument raises `TypeError`.
        """
        tower_kwargs = self._tower_kwargs(self.forward, kwargs, MamaTowerKwargs.__annotations__)
        if pixel_values is None:
            raise ValueError("MamaModel.forward needs `pixel_values` (the images); for text alone use "
                             "`get_text_features`.")
        config = self.config
        logit_scale, local_scale = self.clamped_scales()
        requested = config.weighted_loss_terms() if loss_terms is None else tuple(loss_terms)
        unknown = set(requested) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"Unknown loss term(s) {sorted(unknown)}; expected some of {LOSS_TERMS}.")
        want = {term: bool(return_loss) and term in requested and config.loss_weight(term) != 0.0
                for term in LOSS_TERMS}
        has_extra = extra_pixel_values is not None
        need_extra = has_extra and (want["multiview"] or want["symmetric_clip"])

        batch = pixel_values.shape[0]
        if need_extra and not any(tower_kwargs.get(name) for name in MamaTowerKwargs.__annotations__):
            # One tower pass over both views (the ViT has no batch statistics, so this is exact).
            pooled_both, both = self._run_vision_tower(torch.cat([pixel_values, extra_pixel_values]))
            pooled, extra_pooled = pooled_both[:batch], pooled_both[batch:]
            vision_outputs = BaseModelOutput(last_hidden_state=both.last_hidden_state[:batch])
        else:
            # Hidden states / attentions are returned for `pixel_values`, and must be the tensors the loss
            # is computed from (so that their gradients mean something): the extra view runs on its own.
            pooled, vision_outputs = self._run_vision_tower(pixel_values, **tower_kwargs)
            extra_pooled = self._run_vision_tower(extra_pixel_values)[0] if need_extra else None
        patches = vision_outputs.last_hidden_state[:, self._num_prefix_tokens:]
        image_features = self.visual_projection(pooled)
        image_embeds = F.normalize(image_features, dim=-1)

        text_embeds = logits_per_text = logits_per_image = hidden = text_model_output = None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_pooled, text_outputs = self._run_text_tower(input_ids, attention_mask, **tower_kwargs)
            hidden = text_outputs.last_hidden_state
            text_features = self.text_projection(text_pooled)
            text_model_output = _tower_output(text_outputs, text_features)
            text_embeds = F.normalize(text_features, dim=-1)
            logits_per_text = logit_scale.exp() * text_embeds @ image_embeds.t()
            logits_per_image = logits_per_text.t()

        terms: dict[str, torch.Tensor] = {}
        patch_embeds = sentence_embeds = None
        if return_loss:
            if text_embeds is None:
                raise ValueError("return_loss=True needs `input_ids` (the reports) as well as `pixel_values`.")
            if want["clip"]:
                terms["clip"] = contrastive_loss(image_embeds, text_embeds, logit_scale, gather=gather_with_grad)
            if need_extra:
                if want["multiview"]:
                    terms["multiview"] = nt_xent_loss(self.multiview_head(extra_pooled), self.multiview_head(pooled),
                                                      temperature=float(config.nt_xent_temperature), gather=True)
                if want["symmetric_clip"]:
                    extra_embeds = F.normalize(self.visual_projection(extra_pooled), dim=-1)
                    terms["symmetric_clip"] = contrastive_loss(extra_embeds, text_embeds, logit_scale,
                                                               gather=gather_with_grad)

        if want["local"] or output_local_embeds:
            if input_ids is None:
                raise ValueError("Local embeddings need `input_ids` (the reports).")
            sentence_positions, sentence_mask = self._resolve_sentences(input_ids, sentence_positions, sentence_mask)
            tokens, patch_mask = self._patch_tokens_for_sla(patches, tile_pixel_values, tile_mask)
            patch_embeds = F.normalize(self.patch_projection(tokens, patch_mask), dim=-1)
            features = self._sentence_features(hidden, attention_mask, sentence_positions, sentence_mask)
            sentence_embeds = F.normalize(self.sentence_projection(features, sentence_mask), dim=-1)
            if want["local"]:
                terms["local"] = local_alignment_loss(
                    patch_embeds, sentence_embeds, sentence_mask, local_scale,
                    symmetric=config.local_loss_symmetric, patch_mask=patch_mask, gather=gather_with_grad,
                )

        loss = None
        if return_loss:
            loss = sum(config.loss_weight(name) * value for name, value in terms.items())
            if not terms:
                loss = logit_scale * 0.0
        return MamaOutput(
            loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text,
            text_embeds=text_embeds, image_embeds=image_embeds,
            **{f"loss_{name}": value for name, value in terms.items()},
            patch_embeds=patch_embeds, sentence_embeds=sentence_embeds,
            # An integer mask (like `attention_mask`), so the output tuple holds only float / long tensors.
            sentence_mask=sentence_mask.long() if sentence_embeds is not None else None,
            text_model_output=text_model_output,
            vision_model_output=_tower_output(vision_outputs, image_features),
        )

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_backbones(cls, vision: str = "facebook/dinov2-with-registers-base",
                       text: str = "stanford-crfm/BioMedLM", *, tokenizer=None, config: MamaConfig | None = None,
                       **from_pretrained_kwargs) -> "MamaModel":
        """Build MaMA around pretrained towers (Hub ids or local folders).

        The text tower is loaded with `AutoModel` (for BioMedLM, GPT-2 without its LM head). With a
        `tokenizer`, MaMA's special tokens are added to it and the embeddings resized. `config` gives
        the head / loss / LoRA values (default: `MamaConfig.paper()`); the tower configs come from the
        checkpoints. Needs the Hub for Hub ids:

            model = MamaModel.from_backbones(tokenizer=AutoTokenizer.from_pretrained("stanford-crfm/BioMedLM"))
        """
        vision_model = AutoModel.from_pretrained(vision, **from_pretrained_kwargs)
        text_model = AutoModel.from_pretrained(text, **from_pretrained_kwargs)
        base = (config or MamaConfig.paper()).to_dict()
        for key in ("vision_config", "text_config", "model_type", "transformers_version", "architectures"):
            base.pop(key, None)
        if tokenizer is not None:
            from .tokenization import add_special_tokens

            add_special_tokens(tokenizer)
            if len(tokenizer) != text_model.get_input_embeddings().num_embeddings:
                text_model.resize_token_embeddings(len(tokenizer))
            base["sentence_separator_token_id"] = tokenizer.sep_token_id
        merged = MamaConfig(vision_config=vision_model.config.to_dict(), text_config=text_model.config.to_dict(), **base)
        return cls(merged, vision_model=vision_model, text_model=text_model)


class MamaForImageClassification(MamaPreTrainedModel):
    """MaMA's image tower with a linear head on the pooled feature (linear probe and fine-tune).

    `from_pretrained` of a saved `MamaModel` keeps the image tower (and its pooling) and drops the
    text tower and the contrastive heads; the classifier is new.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a per-batch mean that ignores `num_items_in_batch`: the Trainer must divide it by the
    # gradient-accumulation steps itself (it would not, seeing `**kwargs` in forward).
    accepts_loss_kwargs = False
    _keys_to_ignore_on_load_unexpected = [
        r"text_model\..*", r"text_projection\..*", r"visual_projection\..*", r"patch_projection\..*",
        r"sentence_projection\..*", r"multiview_head\..*", r"logit_scale", r"local_scale",
    ]

    def __init__(self, config: MamaConfig, vision_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = vision_model if vision_model is not None else AutoModel.from_config(config.vision_config)
        self.vision_model.config = config.vision_config
        self._num_prefix_tokens = _num_prefix_tokens(self.vision_model)
        self.classifier = nn.Linear(config.vision_config.hidden_size, config.num_labels)
        self.apply_frozen_parameters()
        self.post_init()

    encode_image_tokens = MamaModel.encode_image_tokens
    _run_vision_tower = MamaModel._run_vision_tower

    def get_input_embeddings(self) -> nn.Module | None:
        """The image tower's patch embeddings, as ViT-family classifiers return them."""
        embeddings = self.vision_model.get_input_embeddings()
        if embeddings is None:  # TimmWrapperModel exposes none; timm ViTs keep theirs in `patch_embed`
            embeddings = getattr(getattr(self.vision_model, "timm_model", None), "patch_embed", None)
        return embeddings

    def freeze_image_tower(self) -> None:
        """Linear probing: only the classifier trains."""
        self.vision_model.requires_grad_(False)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs: Unpack[MamaTowerKwargs]) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values: `[B, 3, H, W]`.
            labels: class indices `[B]` (single-label), or float targets for `config.problem_type`
                "regression" / "multi_label_classification" (transformers' classification loss).
            output_hidden_states, output_attentions: passed to the image tower (see `MamaTowerKwargs`).
            return_dict: `False` returns a tuple.

        An unknown keyword argument raises `TypeError`.
        """
        tower_kwargs = self._tower_kwargs(self.forward, kwargs, MamaTowerKwargs.__annotations__)
        pooled, outputs = self._run_vision_tower(pixel_values, **tower_kwargs)
        logits = self.classifier(pooled)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(outputs, "hidden_states", None),
                                     attentions=getattr(outputs, "attentions", None))


class _ScaleLayout(ConversionOps):
    """Reshape a scale between the checkpoint's 0-dim layout and the model's one-element vector."""

    def __init__(self, to_model: bool = True):
        self.to_model = to_model

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        return {target_patterns[0]: tensor.reshape(1) if self.to_model else tensor.reshape(())}

    @property
    def reverse_op(self) -> ConversionOps:
        return _ScaleLayout(not self.to_model)


_SCALE_LAYOUT = [WeightConverter(name, name, operations=[_ScaleLayout()]) for name in ("logit_scale", "local_scale")]
register_checkpoint_conversion_mapping("MamaModel", _SCALE_LAYOUT, overwrite=True)


__all__ = [
    "MamaForImageClassification",
    "MamaModel",
    "MamaOutput",
    "MamaPreTrainedModel",
    "MamaTowerKwargs",
    "resolve_lora_config",
    "sentence_positions_from_ids",
]
