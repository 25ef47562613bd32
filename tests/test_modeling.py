"""MamaConfig / MamaModel: presets, shapes, loss gating, LoRA under checkpointing, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from modeling_mama import MamaConfig, MamaForImageClassification, MamaModel
from modeling_mama.losses import contrastive_loss
from modeling_mama.modeling_mama import sentence_positions_from_ids

SEP = 3
VOCAB = 64


def tiny_model(**overrides):
    config = MamaConfig.tiny(vocab_size=VOCAB, sentence_separator_token_id=SEP, **overrides)
    return MamaModel(config)


def tiny_batch(batch=4, image_size=56, extra=True):
    """Reports of 1-3 sentences: bos=1, words 5.., one SEP after each sentence, eos=2, pad=0."""
    rows = []
    for i in range(batch):
        sentences = [[5 + i, 6 + i], [7 + i], [8, 9 + i, 10]][: 1 + i % 3]
        ids = [1]
        for sentence in sentences:
            ids += sentence + [SEP]
        rows.append(ids + [2])
    length = max(map(len, rows))
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  pixel_values=torch.randn(batch, 3, image_size, image_size))
    if extra:
        inputs["extra_pixel_values"] = torch.randn(batch, 3, image_size, image_size)
    return inputs


# ------------------------------------------------------------------------------------------- presets
def dinov2_reg_base_params():
    """Parameter count of DINOv2-reg ViT-B/14 at 518, from its architecture."""
    d, layers, patches = 768, 12, (518 // 14) ** 2
    embeddings = d + d + 4 * d + (patches + 1) * d + (3 * 14 * 14 * d + d)  # cls, mask, registers, pos, patch conv
    block = 2 * (2 * d) + 3 * (d * d + d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return embeddings + layers * block + 2 * d


def test_paper_preset_parameter_counts_on_meta():
    with torch.device("meta"):
        model = MamaModel(MamaConfig.paper())
    count = lambda module, trainable=False: sum(  # noqa: E731
        p.numel() for p in module.parameters() if p.requires_grad or not trainable
    )
    assert model.vision_model.config.image_size == 518
    assert count(model.vision_model) == dinov2_reg_base_params() == 86_583_552
    lora = sum(p.numel() for n, p in model.text_model.named_parameters() if "lora_" in n)
    assert lora == 2_621_440  # 32 layers x 8 x (2560 + 7680)
    assert count(model.visual_projection) == 768 * 512 + 512
    assert count(model.text_projection) == 2560 * 512 + 512
    assert count(model.patch_projection) == 768 * 2048 + 2048 + 2 * 2048 + 2048 * 512 + 512
    assert count(model.sentence_projection) == 2560 * 2048 + 2048 + 2 * 2048 + 2048 * 512 + 512
    assert count(model.multiview_head) == 768 * 768 + 2 * 768 + 768 * 512 + 2 * 512
    total, trainable = count(model), count(model, trainable=True)
    assert abs(total - 2.695e9) < 0.005e9, total
    assert abs(trainable - 100.8e6) < 0.1e6, trainable
    # Only the LoRA adapters of the text tower train; the final LayerNorm affine is frozen.
    assert count(model.text_model, trainable=True) == lora
    assert not model.vision_model.layernorm.weight.requires_grad
    assert model.config.lora["r"] == 8 and model.config.lora["lora_alpha"] == 32
    assert math.isclose(model.config.logit_scale_init_value, math.log(1 / 0.07))


def test_config_validation_and_weighted_terms():
    with pytest.raises(ValueError, match="image_pooling"):
        MamaConfig(image_pooling="max")
    config = MamaConfig.tiny()
    assert config.weighted_loss_terms() == ("clip", "multiview", "symmetric_clip", "local")
    config.multiview_loss_weight = 0.0
    assert config.weighted_loss_terms() == ("clip", "symmetric_clip", "local")
    # The schedule is a training decision, not a config value.
    assert not hasattr(MamaConfig.paper(), "local_loss_start_step")


def test_loss_schedule():
    from modeling_mama.training.schedule import LossSchedule

    schedule = LossSchedule.late(10)
    assert schedule.active_terms(0) == ("clip",) and schedule.active_terms(9) == ("clip",)
    assert schedule.active_terms(10) == ("clip", "multiview", "symmetric_clip", "local")
    with pytest.raises(ValueError, match="Unknown loss term"):
        LossSchedule({"bogus": 1})


# --------------------------------------------------------------------------------------------- model
def test_forward_shapes_and_logits():
    model = tiny_model().eval()
    inputs = tiny_batch(extra=False)
    out = model(**inputs)
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert out.loss is None
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    expected = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.t()
    torch.testing.assert_close(out.logits_per_image, expected)
    features = model.get_image_features(inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(F.normalize(features, dim=-1), out.image_embeds)


def test_image_pooling_is_mean_of_pre_norm_tokens():
    model = tiny_model().eval()
    pixel_values = torch.randn(2, 3, 56, 56)
    pooled, patches = model.encode_image_tokens(pixel_values)
    reference = model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    torch.testing.assert_close(pooled, reference.hidden_states[-1].mean(dim=1))
    # Patch tokens: after the final LayerNorm, CLS and 4 registers dropped; 56/14 = 4x4 patches.
    torch.testing.assert_close(patches, reference.last_hidden_state[:, 5:])
    assert patches.shape == (2, 16, 32)


def test_text_pooling_masked_mean_ignores_padding():
    model = tiny_model().eval()
    ids = torch.tensor([[1, 5, 6, SEP, 2]])
    padded = torch.tensor([[1, 5, 6, SEP, 2, 0, 0, 0]])
    a = model.get_text_features(ids, torch.ones_like(ids)).pooler_output
    b = model.get_text_features(padded, (padded != 0).long() | (torch.arange(8) < 5).long()).pooler_output
    mask = (torch.arange(8) < 5).long()[None]
    b = model.get_text_features(padded, mask).pooler_output
    torch.testing.assert_close(a, b)


def test_loss_terms_are_chosen_by_the_caller():
    model = tiny_model().train()
    inputs = tiny_batch()
    early = model(**inputs, return_loss=True, loss_terms=("clip",))
    assert set(early.loss_terms) == {"clip"}
    torch.testing.assert_close(early.loss, early.loss_terms["clip"])
    with pytest.raises(ValueError, match="Unknown loss term"):
        model(**inputs, return_loss=True, loss_terms=("clip", "bogus"))
    late = model(**inputs, return_loss=True)  # None: every term with a non-zero weight
    assert set(late.loss_terms) == {"clip", "multiview", "symmetric_clip", "local"}
    total = sum(late.loss_terms.values())
    torch.testing.assert_close(late.loss, total)
    assert all(torch.isfinite(v) for v in late.loss_terms.values())
    # Before the switch the local / multi-view heads get no gradient at all (not a zero one), so the
    # optimizer leaves them alone (no weight decay either).
    model.zero_grad(set_to_none=True)
    early = model(**inputs, return_loss=True, loss_terms=("clip",))
    early.loss.backward()
    assert model.patch_projection.fc1.weight.grad is None
    assert model.multiview_head[0].weight.grad is None
    assert model.local_scale.grad is None
    assert model.visual_projection.weight.grad.abs().sum() > 0


def test_clip_term_matches_loss_function():
    model = tiny_model().eval()
    out = model(**tiny_batch(extra=False), return_loss=True)
    expected = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale)
    torch.testing.assert_close(out.loss_terms["clip"], expected)


def test_scales_are_clamped_at_ln_100():
    model = tiny_model().eval()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model(**tiny_batch(extra=False))
    ratio = out.logits_per_image / (out.image_embeds @ out.text_embeds.t())
    torch.testing.assert_close(ratio, torch.full_like(ratio, 100.0), rtol=1e-4, atol=0)


def test_sentence_positions_and_padded_sentences_do_not_count():
    ids = torch.tensor([[1, 5, SEP, 6, SEP, 2], [1, 7, SEP, 2, 0, 0]])
    positions, mask = sentence_positions_from_ids(ids, SEP)
    assert positions.tolist() == [[2, 4], [2, 0]] and mask.tolist() == [[True, True], [True, False]]
    model = tiny_model().eval()
    inputs = tiny_batch(extra=False)
    positions, mask = sentence_positions_from_ids(inputs["input_ids"], SEP)
    a = model(**inputs, sentence_positions=positions, sentence_mask=mask, return_loss=True)
    # Extra padded sentence slots pointing anywhere must not change anything.
    padded_positions = torch.cat([positions, torch.full((4, 2), 1)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    b = model(**inputs, sentence_positions=padded_positions, sentence_mask=padded_mask, return_loss=True)
    torch.testing.assert_close(a.loss_terms["local"], b.loss_terms["local"])
    # Derived from the separator id when not given.
    c = model(**inputs, return_loss=True)
    torch.testing.assert_close(a.loss_terms["local"], c.loss_terms["local"])


def test_sentence_features_separator_and_mean():
    model = tiny_model().eval()
    ids = torch.tensor([[1, 5, 6, SEP, 7, SEP, 2]])
    mask = torch.ones_like(ids)
    positions, sentence_mask = sentence_positions_from_ids(ids, SEP)
    _, hidden = model.encode_text_tokens(ids, mask)
    separator = model._sentence_features(hidden, mask, positions, sentence_mask)
    torch.testing.assert_close(separator[0], hidden[0, [3, 5]])
    model._sentence_pooling = "mean"
    mean = model._sentence_features(hidden, mask, positions, sentence_mask)
    torch.testing.assert_close(mean[0, 0], hidden[0, 0:4].mean(dim=0))
    torch.testing.assert_close(mean[0, 1], hidden[0, 4:6].mean(dim=0))


def test_bidirectional_text_tower_uses_mean_sentence_pooling():
    from transformers import BertConfig

    text = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)
    config = MamaConfig.tiny(vocab_size=VOCAB, sentence_separator_token_id=SEP, text_config=text.to_dict(), lora=None)
    model = MamaModel(config).train()
    assert model._sentence_pooling == "mean"
    out = model(**tiny_batch(), return_loss=True)
    assert torch.isfinite(out.loss)


def test_tiles_feed_sla_and_masked_tiles_do_not_count():
    model = tiny_model().eval()
    inputs = tiny_batch(extra=False)
    tiles = torch.randn(4, 3, 3, 28, 28)
    tile_mask = torch.tensor([[True, True, False]] * 4)
    out = model(**inputs, tile_pixel_values=tiles, tile_mask=tile_mask, return_loss=True)
    assert out.patch_embeds.shape == (4, 3 * 4, 32)  # 28/14 = 2x2 patches per tile
    assert (out.patch_embeds[:, 8:] == 0).all()
    changed = tiles.clone()
    changed[:, 2] = torch.randn(4, 3, 28, 28)
    again = model(**inputs, tile_pixel_values=changed, tile_mask=tile_mask, return_loss=True)
    torch.testing.assert_close(out.loss_terms["local"], again.loss_terms["local"])
    # The global embedding comes from the global view only.
    torch.testing.assert_close(out.image_embeds, model(**inputs).image_embeds)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_lora_gets_gradients_with_checkpointing(use_reentrant):
    model = tiny_model().train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.text_model.h[0].gradient_checkpointing
    out = model(**tiny_batch(), return_loss=True)
    out.loss.backward()
    lora_grads = [p.grad for n, p in model.text_model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert sum(g.abs().sum() for g in lora_grads) > 0
    frozen = [p for n, p in model.text_model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_multiview_head_batch_norm_under_bf16_autocast():
    """Under bf16 autocast (the paper's mixed precision) the multi-view head's BatchNorm keeps fp32
    running statistics, and its outputs and statistics stay close to fp32. Stated tolerances (bf16
    rounds to 2**-9 relative): output and running mean within 2% in norm (seen 0.6%), running
    variance within 0.1% (seen 0.01%)."""
    from modeling_mama.modeling_mama import MamaMultiViewHead

    head = MamaMultiViewHead(32, 32, 32).train()
    low = MamaMultiViewHead(32, 32, 32).train()
    low.load_state_dict(head.state_dict())
    features = torch.randn(16, 32)
    expected = head(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = low(features)
    assert output.dtype == torch.bfloat16  # autocast was really on
    assert torch.isfinite(output).all()
    assert (output.float() - expected).norm() <= 2e-2 * expected.norm()
    for index in (1, 4):
        norm, reference = low[index], head[index]
        assert norm.running_mean.dtype == norm.running_var.dtype == torch.float32
        assert (norm.running_mean - reference.running_mean).norm() <= 2e-2 * reference.running_mean.norm()
        assert (norm.running_var - reference.running_var).norm() <= 1e-3 * reference.running_var.norm()


def test_lora_starts_as_identity():
    model = tiny_model()
    for name, parameter in model.text_model.named_parameters():
        if "lora_B" in name:
            assert (parameter == 0).all(), name
        if "lora_A" in name:
            assert parameter.abs().sum() > 0, name


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_text_tower_means_what_it_says_with_lora(freeze):
    # peft marks only the adapters trainable when it injects them; the config decides.
    model = tiny_model(freeze_text_tower=freeze)
    trainable = {name for name, parameter in model.text_model.named_parameters() if parameter.requires_grad}
    adapters = {name for name, _ in model.text_model.named_parameters() if "lora_" in name}
    assert adapters and adapters <= trainable
    assert (trainable == adapters) is freeze
    if not freeze:
        assert trainable == {name for name, _ in model.text_model.named_parameters()}


def test_save_and_auto_load_round_trip_bit_exact(tmp_path):
    model = tiny_model().train()
    # Make LoRA non-trivial, then save.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    model(**tiny_batch(), return_loss=True)  # updates BatchNorm running statistics
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "mama"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, MamaModel)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == \
        [n for n, p in model.named_parameters() if p.requires_grad]
    inputs = tiny_batch(extra=False)
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(**inputs).logits_per_image, loaded(**inputs).logits_per_image, rtol=0, atol=0)
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path)
    assert isinstance(zero_shot, MamaModel)


def test_scales_are_vectors_in_memory_and_scalars_on_disk(tmp_path):
    """FSDP2 cannot shard 0-dim parameters, so the scales are one-element vectors; checkpoints keep
    CLIP's 0-dim layout, which folders saved before the change also have."""
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    assert model.logit_scale.shape == model.local_scale.shape == (1,)
    assert model.clamped_scales()[0].shape == ()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["logit_scale"].shape == stored["local_scale"].shape == ()
    assert stored["logit_scale"].item() == 2.5
    stored["logit_scale"] = torch.tensor(3.0)  # as an older folder would hold it
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = MamaModel.from_pretrained(tmp_path)
    assert reloaded.logit_scale.shape == (1,) and reloaded.logit_scale.item() == 3.0


def test_batch_norm_with_bf16_weights_and_fp32_statistics():
    """What FSDP2 mixed precision hands a BatchNorm: bf16 weights, fp32 running statistics."""
    from modeling_mama.modeling_mama import MamaBatchNorm1d

    reference, mixed = MamaBatchNorm1d(8).train(), MamaBatchNorm1d(8).train()
    with torch.no_grad():
        reference.weight.normal_(), reference.bias.normal_()
    mixed.load_state_dict(reference.state_dict())
    mixed.weight.data, mixed.bias.data = mixed.weight.data.bfloat16(), mixed.bias.data.bfloat16()
    features = torch.randn(16, 8)
    expected = reference(features)
    output = mixed(features.bfloat16())
    assert output.dtype == torch.bfloat16 and mixed.running_mean.dtype == torch.float32
    torch.testing.assert_close(output.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mixed.running_mean, reference.running_mean, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(mixed.running_var, reference.running_var, rtol=1e-2, atol=1e-2)
    assert mixed.num_batches_tracked.item() == reference.num_batches_tracked.item() == 1


def test_image_classifier_from_mama_folder_keeps_image_tower(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    classifier = MamaForImageClassification.from_pretrained(tmp_path, num_labels=4)
    for key, value in model.vision_model.state_dict().items():
        assert torch.equal(value, classifier.vision_model.state_dict()[key]), key
    assert not hasattr(classifier, "text_model")
    out = classifier(pixel_values=torch.randn(3, 3, 56, 56), labels=torch.tensor([0, 1, 3]))
    assert out.logits.shape == (3, 4) and torch.isfinite(out.loss)
    pooled, _ = model.encode_image_tokens(torch.ones(1, 3, 56, 56))
    torch.testing.assert_close(classifier.encode_image_tokens(torch.ones(1, 3, 56, 56))[0], pooled)


def test_from_backbones_with_local_checkpoints(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, GPT2Config, GPT2Model

    vision = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=56))
    text = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    base = MamaConfig.tiny(vocab_size=VOCAB, sentence_separator_token_id=SEP)
    model = MamaModel.from_backbones(str(tmp_path / "vision"), str(tmp_path / "text"), config=base)
    for key, value in vision.state_dict().items():
        assert torch.equal(value, model.vision_model.state_dict()[key]), key
    # LoRA wraps c_attn: the pretrained weight becomes the base layer, untouched.
    torch.testing.assert_close(model.text_model.h[0].attn.c_attn.base_layer.weight, text.h[0].attn.c_attn.weight)
    assert model.config.lora == base.lora
    out = model(**tiny_batch(), return_loss=True)
    assert torch.isfinite(out.loss)


def test_a_bert_text_tower_gets_its_own_lora_targets_and_mean_sentence_pooling():
    """Swapping the text tower needs no GPT-2 names: LoRA targets come from the tower's type."""
    from transformers import BertConfig

    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    model = MamaModel(MamaConfig.tiny(text_config=bert.to_dict(), sentence_separator_token_id=SEP,
                                      lora={"r": 4, "lora_alpha": 8}))
    assert model.config.lora["target_modules"] == ["query", "value"] and model.config.lora["fan_in_fan_out"] is False
    trainable = {name for name, p in model.text_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert model._sentence_pooling == "mean"
    out = model(**tiny_batch(), return_loss=True)
    assert torch.isfinite(out.loss)
    from types import SimpleNamespace

    from modeling_mama.modeling_mama import resolve_lora_config

    with pytest.raises(ValueError, match="No default LoRA target modules for a 'my_tower' text tower"):
        resolve_lora_config({"r": 4}, SimpleNamespace(config=SimpleNamespace(model_type="my_tower")))


def test_loading_errors_name_the_folder_or_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in (tmp_path / "nowhere" / "model", "./nope", "runs/mama", "runs/mama/checkpoint-5"):
        with pytest.raises(FileNotFoundError, match="No model folder .*Pass the folder that save_pretrained"):
            MamaModel.from_pretrained(missing)
    folder = tmp_path / "saved"
    MamaModel(MamaConfig.tiny(vocab_size=64)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy that stopped early
    with pytest.raises(OSError, match=f"^{weights} is truncated or corrupt .*copy, download or save the model again"):
        MamaModel.from_pretrained(folder)


def test_unknown_tower_type_is_one_sentence():
    with pytest.raises(ValueError, match=r"^MamaConfig.vision_config has model_type 'dinov9', which transformers "
                                         r"\S+ does not know: upgrade transformers"):
        MamaConfig(vision_config={"model_type": "dinov9"})
