"""transformers' common model, config and image-processor checks, for a model that lives outside the library.

transformers runs the same battery of checks on every model it ships (`tests/test_modeling_common.py`'s
`ModelTesterMixin`, `tests/test_configuration_common.py`'s `ConfigTester`, the image-processing test
mixin); those test files are not installed with the library. This module writes out the checks that
say something about a model defined elsewhere (save / load, initialisation, batching, output flags,
tuple / dict outputs, training and checkpointing, attention implementations, embeddings), against the
transformers 5 API, under the same names, so a per-model test file wires them the way
`tests/models/clip/test_modeling_clip.py` wires CLIP: a model tester building tiny configs, class
attributes, and one-line skips for what does not apply. Checks of transformers itself (loading
machinery with dummy models, GPU offload, flash attention, compilation) are left out.
"""

from __future__ import annotations

import collections
import copy
import inspect
import json
import os
import re
import tempfile
import warnings

import numpy as np
import torch
from safetensors.torch import load_file as safe_load_file
from safetensors.torch import save_file as safe_save_file
from torch import nn
from transformers import AutoImageProcessor, PreTrainedConfig
from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME, ModelOutput

_rng = np.random.default_rng(0)


def ids_tensor(shape, vocab_size: int, low: int = 0) -> torch.Tensor:
    """Random token ids in [low, vocab_size)."""
    return torch.from_numpy(_rng.integers(low, vocab_size, size=shape)).long()


def floats_tensor(shape, scale: float = 1.0) -> torch.Tensor:
    """Random float32 values in [0, scale)."""
    return torch.from_numpy(_rng.random(shape, dtype=np.float32) * scale)


def config_zero_init(config: PreTrainedConfig) -> PreTrainedConfig:
    """A copy whose init ranges / stds are ~0, so every initialised parameter has mean 0 or 1."""
    config = copy.deepcopy(config)
    for key in list(config.__dict__):
        if any(part in key for part in ("_range", "_std", "initializer_factor", "layer_scale")):
            setattr(config, key, 1e-10)
        value = getattr(config, key, None)
        if isinstance(value, PreTrainedConfig):
            setattr(config, key, config_zero_init(value))
    return config


def _tensors_close(test, first, second, atol: float, what: str) -> None:
    """`first` and `second` (tensors, tuples / dicts / ModelOutputs of them) are equal up to `atol`."""
    if isinstance(first, ModelOutput):
        first, second = first.to_tuple(), second.to_tuple()
    if isinstance(first, dict):
        test.assertEqual(list(first), list(second), what)
        first, second = list(first.values()), list(second.values())
    if isinstance(first, (list, tuple)):
        test.assertEqual(len(first), len(second), what)
        for index, (a, b) in enumerate(zip(first, second)):
            _tensors_close(test, a, b, atol, f"{what}[{index}]")
    elif isinstance(first, torch.Tensor):
        a, b = torch.nan_to_num(first.float()), torch.nan_to_num(second.float())
        test.assertEqual(a.shape, b.shape, what)
        difference = (a - b).abs().max().item() if a.numel() else 0.0
        test.assertLessEqual(difference, atol, f"{what}: max difference {difference}")
    else:
        test.assertEqual(first, second, what)


class ModelTesterMixin:
    """The common model checks. The test class sets `model_tester` (in `setUp`), `all_model_classes`,
    and may set the flags below and `parameters_without_gradient` (regexes of parameters that get no
    gradient by design, e.g. a mask token the model never uses)."""

    model_tester = None
    all_model_classes: tuple = ()
    test_resize_embeddings = True
    has_attentions = True
    parameters_without_gradient: tuple[str, ...] = ()

    # ---------------------------------------------------------------------------------------- helpers
    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = copy.deepcopy(inputs_dict)
        if return_labels and hasattr(self.model_tester, "labels_for"):
            inputs.update(self.model_tester.labels_for(model_class))
        return inputs

    def _eager_config(self):
        """Config and inputs with eager attention: SDPA returns no attention weights."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config._attn_implementation = "eager"
        return config, inputs

    def _without_gradient(self, name: str) -> bool:
        return any(re.search(pattern, name) for pattern in self.parameters_without_gradient)

    # ------------------------------------------------------------------------------ save / load / init
    def test_save_load(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                first = model(**self._prepare_for_class(inputs, model_class))[0]
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                self.assertTrue(os.path.exists(os.path.join(folder, CONFIG_NAME)))
                self.assertEqual(model.can_generate(), os.path.exists(os.path.join(folder, GENERATION_CONFIG_NAME)))
                reloaded = model_class.from_pretrained(folder).eval()
            with torch.no_grad():
                second = reloaded(**self._prepare_for_class(inputs, model_class))[0]
            _tensors_close(self, first, second, 1e-5, f"{model_class.__name__} output 0 after save / load")

    def test_from_pretrained_no_checkpoint(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            rebuilt = model_class.from_pretrained(None, config=config, state_dict=model.state_dict())
            for (name, a), b in zip(model.named_parameters(), rebuilt.parameters()):
                self.assertTrue(torch.equal(a, b), name)

    def test_keep_in_fp32_modules(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            kept = model_class._keep_in_fp32_modules
            if not kept:
                self.skipTest(reason="no _keep_in_fp32_modules")
            with tempfile.TemporaryDirectory() as folder:
                model_class(config).save_pretrained(folder)
                model = model_class.from_pretrained(folder, dtype=torch.float16)
            for name, parameter in model.named_parameters():
                in_fp32 = any(part in kept for part in name.split("."))
                self.assertEqual(parameter.dtype, torch.float32 if in_fp32 else torch.float16, name)

    def test_save_load_keys_to_ignore_on_save(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            ignored = getattr(model_class, "_keys_to_ignore_on_save", None)
            if not ignored:
                self.skipTest(reason="no _keys_to_ignore_on_save")
            model = model_class(config)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                saved = safe_load_file(os.path.join(folder, SAFE_WEIGHTS_NAME))
            for key in ignored:
                self.assertIn(key, model.state_dict())
                self.assertNotIn(key, saved)

    def test_torch_save_load(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            state_dict = model_class(config).state_dict()
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "pytorch_model.bin")
                torch.save(state_dict, path)
                loaded = torch.load(path, weights_only=True)
            self.assertEqual(list(loaded), list(state_dict))
            for key, value in state_dict.items():
                self.assertTrue(torch.equal(value, loaded[key]), key)

    def test_can_use_safetensors(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                self.assertTrue(os.path.exists(os.path.join(folder, SAFE_WEIGHTS_NAME)))
                reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
            reloaded_state = reloaded.state_dict()
            for key, value in model.state_dict().items():
                self.assertIn(key, reloaded_state)
                torch.testing.assert_close(value, reloaded_state[key], rtol=0, atol=0, msg=key)
            self.assertFalse(info["missing_keys"])
            self.assertFalse(info["unexpected_keys"])

    def test_load_save_without_tied_weights(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        config.tie_word_embeddings = False
        for model_class in self.all_model_classes:
            model = model_class(config)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
            self.assertFalse(info["missing_keys"])
            for key, value in model.state_dict().items():
                torch.testing.assert_close(value, reloaded.state_dict()[key], rtol=0, atol=0, msg=key)

    def test_tied_weights_keys(self):
        """Tensors that share storage are declared in `_tied_weights_keys` (all but one of a group)."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            storages = collections.defaultdict(list)
            for name, tensor in model.state_dict().items():
                storages[(tensor.untyped_storage().data_ptr(), tensor.device)].append(name)
            shared = [names for names in storages.values() if len(names) > 1]
            declared = model._tied_weights_keys or {}
            undeclared = [names for names in shared if sum(name not in declared for name in names) > 1]
            self.assertEqual(undeclared, [], f"{model_class.__name__}: shared tensors not in _tied_weights_keys")

    def test_model_weights_reload_no_missing_tied_weights(self):
        """Loading a checkpoint without any weight reports every weight as missing, nothing more."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                safe_save_file({"tensor": torch.tensor([1, 2])}, os.path.join(folder, SAFE_WEIGHTS_NAME),
                               metadata={"format": "pt"})
                reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
            expected = set(reloaded.state_dict()) - set(model_class._keys_to_ignore_on_load_missing or ())
            self.assertEqual(set(info["missing_keys"]), expected)
            # Missing weights are initialised, not left as uninitialised memory.
            for name, tensor in reloaded.state_dict().items():
                if tensor.is_floating_point():
                    self.assertTrue(torch.isfinite(tensor).all() and tensor.abs().max() < 1e3, name)

    def test_initialization(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config=config_zero_init(config))
            for name, parameter in model.named_parameters():
                if not parameter.requires_grad:
                    continue
                expected = self.expected_initial_mean(name)
                mean = ((parameter.data.mean() * 1e9).round() / 1e9).item()
                if expected is None:
                    self.assertIn(mean, [0.0, 1.0], f"{name} of {model_class.__name__} seems not initialised")
                elif expected is not ...:
                    self.assertAlmostEqual(mean, expected, delta=1e-3, msg=name)

    def expected_initial_mean(self, name: str):
        """`None`: 0 or 1 (the rule); a number: that value; `...`: not checked (override per model)."""
        return None


    def test_can_be_initialized_on_meta(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with torch.device("meta"):
                model = model_class(config)
            self.assertEqual({tensor.device.type for tensor in model.state_dict().values()}, {"meta"})

    def test_all_tensors_are_parameter_or_buffer(self):
        """No module keeps a bare tensor attribute (it would not follow `.to()` or be saved)."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            for module_name, module in model_class(config).named_modules():
                for attribute, value in vars(module).items():
                    if isinstance(value, torch.Tensor) and not attribute.startswith("_"):
                        self.fail(f"{module_name}.{attribute} is a tensor but neither a parameter nor a buffer")

    def test_model_is_small(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            self.assertLess(model_class(config).num_parameters(), 1_000_000, f"{model_class.__name__} is too big")

    # ---------------------------------------------------------------------------------------- outputs
    def test_determinism(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                first = model(**self._prepare_for_class(inputs, model_class))[0]
                second = model(**self._prepare_for_class(inputs, model_class))[0]
            _tensors_close(self, first, second, 1e-5, f"{model_class.__name__} output 0")

    def test_batching_equivalence(self):
        """Each row of a batched forward equals the forward of that row alone (first rows of every output)."""
        config, batched = self.model_tester.prepare_config_and_inputs_for_common()
        config.output_hidden_states = True
        batch_size = self.model_tester.batch_size

        def check(batched_value, single_value, where):
            if isinstance(batched_value, ModelOutput):
                batched_value, single_value = batched_value.to_tuple(), single_value.to_tuple()
            if isinstance(batched_value, (list, tuple)):
                for index, (a, b) in enumerate(zip(batched_value, single_value)):
                    check(a, b, f"{where}[{index}]")
            elif isinstance(batched_value, torch.Tensor) and batched_value.dim() > 0:
                rows = batched_value[tuple(slice(0, size) for size in single_value.shape)]
                for value, label in ((rows, "batched"), (single_value, "single row")):
                    self.assertFalse(torch.isnan(value).any() or torch.isinf(value).any(), f"{label} {where}")
                difference = (rows.float() - single_value.float()).abs().max().item()
                self.assertLessEqual(difference, 1e-3, f"batched and single-row {where} differ by {difference}")

        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(batched, model_class)
            single = {key: value[: value.shape[0] // batch_size]
                      if isinstance(value, torch.Tensor) and value.shape[0] % batch_size == 0 else value
                      for key, value in inputs.items()}
            with torch.no_grad():
                batched_output, single_output = model(**inputs), model(**single)
            for key in batched_output:
                check(batched_output[key], single_output[key], f"{model_class.__name__}.{key}")

    def test_model_outputs_equivalence(self):
        """`return_dict=False` gives `to_tuple()` of the dict output, for every output flag."""
        for model_class in self.all_model_classes:
            config, inputs = self._eager_config()
            model = model_class(config).eval()
            for return_labels in (False, True) if hasattr(self.model_tester, "labels_for") else (False,):
                for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True},
                              {"output_hidden_states": True, "output_attentions": True}):
                    prepared = self._prepare_for_class(inputs, model_class, return_labels=return_labels)
                    with torch.no_grad():
                        as_tuple = model(**prepared, return_dict=False, **flags)
                        as_dict = model(**prepared, return_dict=True, **flags)
                    self.assertIsInstance(as_tuple, tuple)
                    self.assert_only_tensors(as_tuple)
                    _tensors_close(self, as_tuple, as_dict.to_tuple(), 1e-5, f"{model_class.__name__} {flags}")

    def assert_only_tensors(self, value):
        if isinstance(value, tuple):
            for item in value:
                self.assert_only_tensors(item)
        else:
            self.assertIsInstance(value, torch.Tensor)

    def test_attention_outputs(self):
        tester = self.model_tester
        for model_class in self.all_model_classes:
            config, inputs = self._eager_config()
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs, model_class), output_attentions=True)
            self.assertEqual(len(outputs.attentions), tester.num_hidden_layers)
            self.assertEqual(list(outputs.attentions[0].shape[-3:]),
                             [tester.num_attention_heads, tester.seq_length, tester.seq_length])
            out_len = len(outputs)
            # ... and when the config asks for them
            config.output_attentions = True
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs, model_class))
            self.assertEqual(len(outputs.attentions), tester.num_hidden_layers)
            # hidden states come before the attentions, which stay last
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs, model_class), output_hidden_states=True)
            self.assertEqual(len(outputs), out_len + 1)
            self.assertIs(outputs.to_tuple()[-1], outputs.attentions)

    def test_hidden_states_output(self):
        tester = self.model_tester
        for model_class in self.all_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            for through_config in (False, True):
                if through_config:
                    config.output_hidden_states = True
                model = model_class(config).eval()
                flags = {} if through_config else {"output_hidden_states": True}
                with torch.no_grad():
                    hidden_states = model(**self._prepare_for_class(inputs, model_class), **flags).hidden_states
                self.assertEqual(len(hidden_states), tester.num_hidden_layers + 1)
                self.assertEqual(list(hidden_states[0].shape[-2:]), [tester.seq_length, tester.hidden_size])

    def test_retain_grad_hidden_states_attentions(self):
        config, inputs = self._eager_config()
        config.output_hidden_states = True
        config.output_attentions = self.has_attentions
        model_class = self.all_model_classes[0]
        outputs = model_class(config)(**self._prepare_for_class(inputs, model_class))
        hidden_states = outputs.hidden_states[0]
        hidden_states.retain_grad()
        attentions = outputs.attentions[0]
        attentions.retain_grad()
        outputs[0].flatten()[0].backward(retain_graph=True)
        self.assertIsNotNone(hidden_states.grad)
        self.assertIsNotNone(attentions.grad)

    # ---------------------------------------------------------------------------------------- training
    def test_training(self):
        if not self.model_tester.is_training:
            self.skipTest(reason="the model tester is not set up for training")
        for model_class in self.all_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(config).train()
            loss = model(**self._prepare_for_class(inputs, model_class, return_labels=True)).loss
            loss.backward()
            self.assertTrue(torch.isfinite(loss))

    def check_training_gradient_checkpointing(self, activation_checkpointing_kwargs=None):
        if not self.model_tester.is_training:
            self.skipTest(reason="the model tester is not set up for training")
        for model_class in self.all_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(config)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)
            model.train()
            for parameter in model.parameters():  # unfreeze what the config freezes
                parameter.requires_grad_(True)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            model(**self._prepare_for_class(inputs, model_class, return_labels=True)).loss.backward()
            optimizer.step()
            for name, parameter in model.named_parameters():
                if self._without_gradient(name):
                    self.assertIsNone(parameter.grad, f"{name} is listed as unused but got a gradient")
                else:
                    self.assertIsNotNone(parameter.grad, f"{name} in {model_class.__name__} has no gradient")

    def test_training_gradient_checkpointing(self):
        self.check_training_gradient_checkpointing()

    def test_training_gradient_checkpointing_use_reentrant(self):
        self.check_training_gradient_checkpointing({"use_reentrant": True})

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self.check_training_gradient_checkpointing({"use_reentrant": False})

    def test_gradient_checkpointing_backward_compatibility(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        config.gradient_checkpointing = True
        for model_class in self.all_model_classes:
            self.assertTrue(model_class(config).is_activation_checkpointing)

    def test_gradient_checkpointing_enable_disable(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertFalse(model.is_activation_checkpointing)
            model.activation_checkpointing_enable()
            self.assertTrue(model.is_activation_checkpointing)
            flagged = [(name, module.gradient_checkpointing) for name, module in model.named_modules()
                       if hasattr(module, "gradient_checkpointing")]
            self.assertTrue(flagged and all(on for _, on in flagged), flagged)
            model.activation_checkpointing_disable()
            self.assertFalse(model.is_activation_checkpointing)
            self.assertFalse(any(module.gradient_checkpointing for module in model.modules()
                                 if hasattr(module, "gradient_checkpointing")))

    def test_peft_gradient_checkpointing_enable_disable(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            model._hf_peft_config_loaded = True
            model.activation_checkpointing_enable()
            self.assertTrue(model.is_activation_checkpointing)
            model.activation_checkpointing_disable()
            self.assertFalse(model.is_activation_checkpointing)

    def test_enable_input_require_grads(self):
        """Frozen weights, trainable adapters: the input embeddings' output can be made to carry grad."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            model.requires_grad_(False)
            model.enable_input_require_grads()
            captured: list[torch.Tensor] = []
            handle = model.get_input_embeddings().register_forward_hook(
                lambda _module, _inputs, output, sink=captured: sink.append(output))
            try:
                model(**self._prepare_for_class(inputs, model_class))
            finally:
                handle.remove()
            self.assertTrue(captured and all(output.requires_grad for output in captured))

    # -------------------------------------------------------------------------------------- embeddings
    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Embedding)
            replacement = nn.Embedding(10, 10)
            model.set_input_embeddings(replacement)
            self.assertIs(model.get_input_embeddings(), replacement)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    def test_resize_tokens_embeddings(self):
        if not self.test_resize_embeddings:
            self.skipTest(reason="test_resize_embeddings is False")
        original_config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            config = copy.deepcopy(original_config)
            model = model_class(config)
            vocab_size = config.get_text_config().vocab_size
            kind = type(model.get_input_embeddings())
            before = model.resize_token_embeddings(vocab_size).weight.clone()
            grown = model.resize_token_embeddings(vocab_size + 10)
            self.assertEqual(model.config.get_text_config().vocab_size, vocab_size + 10)
            self.assertEqual(grown.weight.shape[0], before.shape[0] + 10)
            self.assertIs(type(grown), kind)
            # New rows start near the mean of the old ones.
            torch.testing.assert_close(grown.weight[:-10].mean(0), grown.weight[-10:].mean(0), atol=1e-3, rtol=1e-1)
            model(**self._prepare_for_class(inputs, model_class))
            shrunk = model.resize_token_embeddings(vocab_size - 15)
            self.assertEqual(model.config.get_text_config().vocab_size, vocab_size - 15)
            self.assertEqual(shrunk.weight.shape[0], vocab_size - 15)
            clamped = self._prepare_for_class(inputs, model_class)
            clamped["input_ids"] = clamped["input_ids"].clamp(max=vocab_size - 15 - 1)
            model(**clamped)
            self.assertTrue(torch.equal(shrunk.weight, before[: vocab_size - 15]))
            padded = model.resize_token_embeddings(vocab_size + 13, pad_to_multiple_of=64)
            self.assertEqual(padded.weight.shape[0] % 64, 0)
            with self.assertRaisesRegex(ValueError, "not and integer|not an integer"):
                model.resize_token_embeddings(vocab_size, pad_to_multiple_of=1.3)

    def test_model_main_input_name(self):
        for model_class in self.all_model_classes:
            first_argument = list(inspect.signature(model_class.forward).parameters)[1]
            self.assertEqual(model_class.main_input_name, first_argument)

    # ------------------------------------------------------------------------------- attention backends
    def test_sdpa_can_dispatch_composite_models(self):
        """Loading with the default picks SDPA in every tower; `attn_implementation="eager"` reaches them all."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with tempfile.TemporaryDirectory() as folder:
                model_class(config).save_pretrained(folder)
                sdpa = model_class.from_pretrained(folder)
                eager = model_class.from_pretrained(folder, attn_implementation="eager")
            for model, expected in ((sdpa, "sdpa"), (eager, "eager")):
                self.assertEqual(model.config._attn_implementation, expected)
                for tower in self.model_tester.towers(model):
                    self.assertEqual(tower.config._attn_implementation, expected)

    def test_eager_matches_sdpa_inference(self):
        """float32 on CPU: eager and SDPA attention give the same outputs."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with tempfile.TemporaryDirectory() as folder:
                model_class(config).save_pretrained(folder)
                sdpa = model_class.from_pretrained(folder, attn_implementation="sdpa").eval()
                eager = model_class.from_pretrained(folder, attn_implementation="eager").eval()
            prepared = self._prepare_for_class(inputs, model_class)
            with torch.no_grad():
                expected = eager(**prepared, output_hidden_states=True)
                actual = sdpa(**prepared, output_hidden_states=True)
            for key in self.model_tester.compared_output_keys:
                if key in expected:
                    torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)

    def test_can_set_attention_dynamically(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            prepared = self._prepare_for_class(inputs, model_class)
            with torch.no_grad():
                before = model(**prepared)
            model.set_attn_implementation("eager")
            self.assertEqual(model.config._attn_implementation, "eager")
            for tower in self.model_tester.towers(model):
                self.assertEqual(tower.config._attn_implementation, "eager")
            with torch.no_grad():
                after = model(**prepared)
            for key in self.model_tester.compared_output_keys:
                if key in before:
                    torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=1e-4, msg=key)


class ConfigTester:
    """The common config checks (`tests/test_configuration_common.py`)."""

    def __init__(self, parent, config_class, has_text_modality: bool = True, common_properties=None, **kwargs):
        self.parent = parent
        self.config_class = config_class
        self.has_text_modality = has_text_modality
        self.inputs_dict = kwargs
        self.common_properties = common_properties

    def create_and_test_config_common_properties(self):
        config = self.config_class(**self.inputs_dict)
        properties = list(self.common_properties or [])
        if self.has_text_modality:
            properties += ["vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers"]
        for name in properties:
            self.parent.assertTrue(hasattr(config, name), f"{self.config_class.__name__} has no {name}")
        # Each can be set through the constructor.
        for value, name in enumerate(properties, start=1):
            config = self.config_class(**{**self.inputs_dict, name: value})
            self.parent.assertEqual(getattr(config, name), value, name)

    def create_and_test_config_to_json_string(self):
        config = self.config_class(**self.inputs_dict)
        stored = json.loads(config.to_json_string())
        for key, value in self.inputs_dict.items():
            expected = value.to_dict() if isinstance(value, PreTrainedConfig) else value
            if isinstance(expected, dict) and isinstance(stored[key], dict):
                expected = {name: item for name, item in expected.items() if name in stored[key]}
                stored[key] = {name: stored[key][name] for name in expected}
            self.parent.assertEqual(stored[key], expected, key)

    def create_and_test_config_to_json_file(self):
        first = self.config_class(**self.inputs_dict)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "config.json")
            first.to_json_file(path)
            second = self.config_class.from_json_file(path)
        self.parent.assertEqual(second.to_dict(), first.to_dict())

    def create_and_test_config_from_and_save_pretrained(self, subfolder: str = ""):
        first = self.config_class(**self.inputs_dict)
        with tempfile.TemporaryDirectory() as folder:
            first.save_pretrained(os.path.join(folder, subfolder))
            second = self.config_class.from_pretrained(folder, subfolder=subfolder)
        self.parent.assertEqual(second.to_dict(), first.to_dict())

    def create_and_test_config_from_and_save_pretrained_composite(self):
        """Every sub-config comes back as its own class with the same values."""
        first = self.config_class(**self.inputs_dict)
        with tempfile.TemporaryDirectory() as folder:
            first.save_pretrained(folder)
            second = self.config_class.from_pretrained(folder)
        for key in self.config_class.sub_configs:
            original, loaded = getattr(first, key), getattr(second, key)
            self.parent.assertIs(type(loaded), type(original), key)
            self.parent.assertEqual(loaded.to_dict(), original.to_dict(), key)

    def create_and_test_config_with_num_labels(self):
        config = self.config_class(**self.inputs_dict, num_labels=5)
        self.parent.assertEqual(len(config.id2label), 5)
        self.parent.assertEqual(len(config.label2id), 5)
        config.num_labels = 3
        self.parent.assertEqual(len(config.id2label), 3)
        self.parent.assertEqual(len(config.label2id), 3)

    def check_config_can_be_init_without_params(self):
        self.parent.assertIsNotNone(self.config_class())

    def check_config_arguments_init(self):
        common = {"return_dict": False, "output_hidden_states": True, "dtype": "float16", "chunk_size_feed_forward": 5,
                  "architectures": ["MamaModel"], "id2label": {0: "negative", 1: "positive"},
                  "label2id": {"negative": 0, "positive": 1}, "problem_type": "regression"}
        config = self.config_class(**self.inputs_dict, **common)
        for key, value in common.items():
            actual = getattr(config, key)
            self.parent.assertEqual(actual, getattr(torch, value) if key == "dtype" else value, key)

    def run_common_tests(self):
        self.create_and_test_config_common_properties()
        self.create_and_test_config_to_json_string()
        self.create_and_test_config_to_json_file()
        self.create_and_test_config_from_and_save_pretrained()
        self.create_and_test_config_from_and_save_pretrained(subfolder="test")
        if self.config_class.sub_configs:
            self.create_and_test_config_from_and_save_pretrained_composite()
        self.create_and_test_config_with_num_labels()
        self.check_config_can_be_init_without_params()
        self.check_config_arguments_init()


def prepare_image_inputs(batch_size, min_resolution, max_resolution, num_channels=3, equal_resolution=False,
                         numpify=False, torchify=False):
    """Random uint8 images: PIL (default), numpy channels-last or torch channels-first."""
    from PIL import Image

    images = []
    for _ in range(batch_size):
        height, width = ((max_resolution, max_resolution) if equal_resolution
                         else _rng.integers(min_resolution, max_resolution, size=2))
        images.append(_rng.integers(0, 255, size=(num_channels, height, width), dtype=np.uint8))
    if torchify:
        return [torch.from_numpy(image) for image in images]
    if numpify:
        return [image.transpose(1, 2, 0) for image in images]
    return [Image.fromarray(np.moveaxis(image, 0, -1)) for image in images]


class ImageProcessingTestMixin:
    """The common image-processor checks. The test class sets `image_processing_class`,
    `image_processor_dict` and `image_processor_tester` (`prepare_image_inputs`,
    `expected_output_image_shape`, `batch_size`)."""

    image_processing_class = None

    def test_image_processor_to_json_string(self):
        processor = self.image_processing_class(**self.image_processor_dict)
        stored = json.loads(processor.to_json_string())
        for key, value in self.image_processor_dict.items():
            self.assertEqual(stored[key], value, key)

    def test_image_processor_to_json_file(self):
        first = self.image_processing_class(**self.image_processor_dict)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "image_processor.json")
            first.to_json_file(path)
            second = self.image_processing_class.from_json_file(path)
        self.assertEqual(second.to_dict(), first.to_dict())

    def test_image_processor_from_and_save_pretrained(self):
        first = self.image_processing_class(**self.image_processor_dict)
        with tempfile.TemporaryDirectory() as folder:
            saved = first.save_pretrained(folder)[0]
            with open(saved) as stream:
                json.load(stream)  # a well-formed JSON file
            second = self.image_processing_class.from_pretrained(folder)
        self.assertEqual(second.to_dict(), first.to_dict())

    def test_image_processor_save_load_with_autoimageprocessor(self):
        first = self.image_processing_class(**self.image_processor_dict)
        with tempfile.TemporaryDirectory() as folder:
            first.save_pretrained(folder)
            second = AutoImageProcessor.from_pretrained(folder)
        self.assertIs(type(second), self.image_processing_class)
        self.assertEqual(second.to_dict(), first.to_dict())

    def test_init_without_params(self):
        self.assertIsNotNone(self.image_processing_class())

    def test_cast_dtype_device(self):
        processor = self.image_processing_class(**self.image_processor_dict)
        images = self.image_processor_tester.prepare_image_inputs(torchify=True)
        encoding = processor(images, return_tensors="pt")
        self.assertEqual((encoding.pixel_values.device.type, encoding.pixel_values.dtype), ("cpu", torch.float32))
        self.assertEqual(encoding.to(torch.float16).pixel_values.dtype, torch.float16)
        self.assertEqual(processor(images, return_tensors="pt").to("cpu", torch.bfloat16).pixel_values.dtype,
                         torch.bfloat16)
        with self.assertRaises(TypeError):
            processor(images, return_tensors="pt").to(torch.bfloat16, "cpu")
        encoding = processor(images, return_tensors="pt")
        encoding.update({"input_ids": torch.LongTensor([[1, 2, 3], [4, 5, 6]])})
        encoding = encoding.to(torch.float16)
        self.assertEqual((encoding.pixel_values.dtype, encoding.input_ids.dtype), (torch.float16, torch.long))

    def _check_call(self, images, **kwargs):
        processor = self.image_processing_class(**self.image_processor_dict)
        tester = self.image_processor_tester
        single = processor(images[0], return_tensors="pt", **kwargs).pixel_values
        self.assertEqual(tuple(single.shape), (1, *tester.expected_output_image_shape(images[:1])))
        batched = processor(images, return_tensors="pt", **kwargs).pixel_values
        self.assertEqual(tuple(batched.shape), (tester.batch_size, *tester.expected_output_image_shape(images)))

    def test_call_pil(self):
        self._check_call(self.image_processor_tester.prepare_image_inputs())

    def test_call_numpy(self):
        self._check_call(self.image_processor_tester.prepare_image_inputs(numpify=True))

    def test_call_pytorch(self):
        self._check_call(self.image_processor_tester.prepare_image_inputs(torchify=True))

    def test_call_numpy_4_channels(self):
        images = self.image_processor_tester.prepare_image_inputs(numpify=True, num_channels=4)
        self._check_call(images, input_data_format="channels_last", image_mean=0, image_std=1)

    def test_image_processor_preprocess_arguments(self):
        """An argument `preprocess` does not take is refused, naming it."""
        processor = self.image_processing_class(**self.image_processor_dict)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither a warning nor silence
            with self.assertRaisesRegex(TypeError, "extra_argument"):
                processor(self.image_processor_tester.prepare_image_inputs(), extra_argument=True)


__all__ = [
    "ConfigTester", "ImageProcessingTestMixin", "ModelTesterMixin", "config_zero_init", "floats_tensor",
    "ids_tensor", "prepare_image_inputs",
]
