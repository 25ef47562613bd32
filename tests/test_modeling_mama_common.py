"""transformers' common checks for MaMA, wired the way `tests/models/clip/test_modeling_clip.py` wires CLIP.

A model tester builds tiny configs and inputs (the paper's combination: DINOv2-with-registers and a
GPT-2 text tower with LoRA, a second view, report sentences); `common_checks` holds the checks. A check
that does not apply is skipped with a one-line reason, as CLIP's file does.
"""

import copy
import inspect
import tempfile
import unittest

import numpy as np
import torch
from common_checks import (
    ConfigTester,
    ImageProcessingTestMixin,
    ModelTesterMixin,
    config_zero_init,
    floats_tensor,
    ids_tensor,
    prepare_image_inputs,
)
from transformers import Dinov2WithRegistersConfig, GPT2Config
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_mama import MamaConfig, MamaForImageClassification, MamaImageProcessor, MamaModel
from modeling_mama.configuration_mama import CLIP_LOGIT_SCALE_INIT

SEPARATOR = 3  # the sentence separator token; 0 is padding, 1 / 2 begin / end a report


class MamaVisionTester:
    """The image tower's tiny config: 28x28 images, 14-pixel patches, 2 registers -> 1 + 2 + 4 tokens."""

    def __init__(self, batch_size=4, image_size=28, patch_size=14, num_register_tokens=2, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4):
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.seq_length = 1 + num_register_tokens + (image_size // patch_size) ** 2

    def get_config(self):
        return Dinov2WithRegistersConfig(
            image_size=self.image_size, patch_size=self.patch_size, num_register_tokens=self.num_register_tokens,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, mlp_ratio=2)

    def pixel_values(self):
        return floats_tensor([self.batch_size, 3, self.image_size, self.image_size])


class MamaTextTester:
    """The text tower's tiny config (GPT-2, narrower than the image tower) and one report per image:
    bos, 1-3 sentences each closed by the separator, eos, right padding."""

    def __init__(self, batch_size=4, vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=4):
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.seq_length = 1 + 3 * 3 + 1  # the longest report: 3 sentences of 2 words + separator

    def get_config(self):
        return GPT2Config(vocab_size=self.vocab_size, n_positions=32, n_embd=self.hidden_size,
                          n_layer=self.num_hidden_layers, n_head=self.num_attention_heads,
                          bos_token_id=None, eos_token_id=None)

    def reports(self):
        input_ids = torch.zeros(self.batch_size, self.seq_length, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row in range(self.batch_size):
            sentences = 3 if row == 0 else 1 + row % 2  # the first report is the longest: no padding
            ids = [1]
            for words in ids_tensor([sentences, 2], self.vocab_size, low=4).tolist():
                ids += words + [SEPARATOR]
            ids.append(2)
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


class MamaModelTester:
    def __init__(self, parent, batch_size=4, projection_dim=16, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.projection_dim = projection_dim
        self.is_training = is_training
        self.vision_tester = MamaVisionTester(batch_size=batch_size)
        self.text_tester = MamaTextTester(batch_size=batch_size)
        self.compared_output_keys = ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds",
                                     "patch_embeds", "sentence_embeds")

    def get_config(self):
        return MamaConfig(
            vision_config=self.vision_tester.get_config().to_dict(),
            text_config=self.text_tester.get_config().to_dict(),
            projection_dim=self.projection_dim, local_hidden_dim=20, local_projection_dim=12,
            multiview_projection_dim=12, sentence_separator_token_id=SEPARATOR,
            lora={"r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["c_attn"], "bias": "none",
                  "fan_in_fan_out": True},
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids, attention_mask = self.text_tester.reports()
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": self.vision_tester.pixel_values(),
            "extra_pixel_values": self.vision_tester.pixel_values(),
            "return_loss": True,
        }
        return self.get_config(), inputs

    @staticmethod
    def towers(model):
        return [model.vision_model, model.text_model]

    def create_and_check_model(self, config, inputs):
        model = MamaModel(config).eval()
        with torch.no_grad():
            result = model(**inputs)
        batch = self.batch_size
        self.parent.assertEqual(result.logits_per_image.shape, (batch, batch))
        self.parent.assertEqual(result.logits_per_text.shape, (batch, batch))
        self.parent.assertEqual(result.image_embeds.shape, (batch, self.projection_dim))
        self.parent.assertEqual(set(result.loss_terms), {"clip", "multiview", "symmetric_clip", "local"})
        patches = (self.vision_tester.image_size // self.vision_tester.patch_size) ** 2
        self.parent.assertEqual(result.patch_embeds.shape, (batch, patches, 12))
        self.parent.assertEqual(result.sentence_embeds.shape, (batch, 3, 12))
        self.parent.assertEqual(result.sentence_mask.sum(dim=1).tolist(), [3, 2, 1, 2])
        self.parent.assertEqual(result.vision_model_output.last_hidden_state.shape[0], batch)  # not the extra view


class MamaModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MamaModel,)
    # DINOv2 keeps a mask token for masked-image pre-training; MaMA never masks patches.
    parameters_without_gradient = (r"^vision_model\.embeddings\.mask_token$",)

    def setUp(self):
        self.model_tester = MamaModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MamaConfig, has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value", "local_projection_dim",
                               "multiview_projection_dim", "local_scale_init_value"],
            projection_dim=24, image_pooling="cls", clip_loss_weight=0.5, lora=None,
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs_for_common())

    def test_forward_signature(self):
        arguments = list(inspect.signature(MamaModel.forward).parameters)
        self.assertEqual(arguments[1:4], ["input_ids", "pixel_values", "attention_mask"])

    def expected_initial_mean(self, name):
        if name in ("logit_scale", "local_scale"):
            return CLIP_LOGIT_SCALE_INIT  # CLIP's temperature, as CLIP's own test_initialization checks
        if "lora_A" in name:
            return ...  # peft's kaiming-uniform rule (B is zero, so the adapted tower starts as the base)
        return None

    # The dual encoder keeps its towers' outputs apart (as CLIPOutput): the checks look inside each tower.
    def test_hidden_states_output(self):
        vision, text = self.model_tester.vision_tester, self.model_tester.text_tester
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for through_config in (False, True):
            config.output_hidden_states = through_config
            model = MamaModel(config).eval()
            with torch.no_grad():
                outputs = model(**inputs, **({} if through_config else {"output_hidden_states": True}))
            for tower, tester in ((outputs.vision_model_output, vision), (outputs.text_model_output, text)):
                self.assertEqual(len(tower.hidden_states), tester.num_hidden_layers + 1)
                self.assertEqual(list(tower.hidden_states[0].shape), [self.model_tester.batch_size,
                                                                      tester.seq_length, tester.hidden_size])
        with torch.no_grad():
            self.assertIsNone(MamaModel(self.model_tester.get_config())(**inputs).vision_model_output.hidden_states)

    def test_attention_outputs(self):
        vision, text = self.model_tester.vision_tester, self.model_tester.text_tester
        config, inputs = self._eager_config()
        for through_config in (False, True):
            config.output_attentions = through_config
            model = MamaModel(config).eval()
            with torch.no_grad():
                outputs = model(**inputs, **({} if through_config else {"output_attentions": True}))
            for tower, tester in ((outputs.vision_model_output, vision), (outputs.text_model_output, text)):
                self.assertEqual(len(tower.attentions), tester.num_hidden_layers)
                self.assertEqual(list(tower.attentions[0].shape[-3:]),
                                 [tester.num_attention_heads, tester.seq_length, tester.seq_length])
                self.assertIs(tower.to_tuple()[-1], tower.attentions)

    def test_retain_grad_hidden_states_attentions(self):
        config, inputs = self._eager_config()
        model = MamaModel(config)
        # The paper freezes the text tower (LoRA): its embedding output would carry no gradient to retain.
        model.requires_grad_(True)
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        retained = []
        for tower in (outputs.vision_model_output, outputs.text_model_output):
            for tensor in (tower.hidden_states[0], tower.attentions[0]):
                tensor.retain_grad()
                retained.append(tensor)
        outputs.loss.backward()
        self.assertTrue(all(tensor.grad is not None for tensor in retained))

    def test_get_image_features(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaModel(config).eval()
        vision = self.model_tester.vision_tester
        with torch.no_grad():
            out = model.get_image_features(inputs["pixel_values"], output_hidden_states=True)
            as_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
            forward = model(**inputs)
        self.assertIsInstance(out, BaseModelOutputWithPooling)
        self.assertEqual(out.pooler_output.shape, (self.model_tester.batch_size, self.model_tester.projection_dim))
        self.assertEqual(out.last_hidden_state.shape, (self.model_tester.batch_size, vision.seq_length,
                                                       vision.hidden_size))
        self.assertEqual(len(out.hidden_states), vision.num_hidden_layers + 1)
        self.assertIsInstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[1], out.pooler_output)
        torch.testing.assert_close(forward.vision_model_output.pooler_output, out.pooler_output)
        torch.testing.assert_close(torch.nn.functional.normalize(out.pooler_output, dim=-1), forward.image_embeds)

    def test_get_text_features(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaModel(config).eval()
        text = self.model_tester.text_tester
        with torch.no_grad():
            out = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True)
            forward = model(**inputs)
        self.assertEqual(out.pooler_output.shape, (self.model_tester.batch_size, self.model_tester.projection_dim))
        self.assertEqual(len(out.hidden_states), text.num_hidden_layers + 1)
        torch.testing.assert_close(forward.text_model_output.pooler_output, out.pooler_output)
        torch.testing.assert_close(torch.nn.functional.normalize(out.pooler_output, dim=-1), forward.text_embeds)

    def test_unknown_keyword_arguments_raise(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaModel(config).eval()
        for call, name in ((lambda **kw: model(**inputs, **kw), "output_hiden_states"),
                           (lambda **kw: model.get_image_features(inputs["pixel_values"], **kw), "output_hiden_states"),
                           (lambda **kw: model.get_text_features(inputs["input_ids"], **kw), "bogus")):
            with self.assertRaisesRegex(TypeError, f"unexpected keyword argument '{name}'"):
                call(**{name: True})
        with self.assertRaisesRegex(TypeError, "did you mean 'output_hidden_states'"):
            model(**inputs, output_hiden_states=True)

    def test_loss_terms_live_in_their_own_fields(self):
        """The Trainer logs `loss_terms`; the tuple form holds each term as a tensor."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaModel(config).eval()
        with torch.no_grad():
            out = model(**inputs)
        self.assertEqual(out.loss_terms, {name: out[f"loss_{name}"] for name in out.loss_terms})
        torch.testing.assert_close(out.loss, sum(out.loss_terms.values()))
        self.assertNotIn("loss_terms", out.keys())
        self.assertEqual(out.sentence_mask.dtype, torch.long)
        with torch.no_grad():
            clip_only = model(**inputs, loss_terms=("clip",))
        self.assertEqual(list(clip_only.loss_terms), ["clip"])
        self.assertIsNone(clip_only.loss_multiview)

    def test_tower_outputs_do_not_change_the_results(self):
        """Asking for hidden states runs the extra view in its own tower pass: same loss, same embeddings."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaModel(config).eval()
        with torch.no_grad():
            plain, detailed = model(**inputs), model(**inputs, output_hidden_states=True)
        for key in ("loss", "loss_multiview", "loss_symmetric_clip", "loss_local", "image_embeds", "patch_embeds"):
            torch.testing.assert_close(detailed[key], plain[key], atol=1e-5, rtol=1e-4, msg=key)
        torch.testing.assert_close(detailed.vision_model_output.hidden_states[-1].mean(dim=1),
                                   model.encode_image_tokens(inputs["pixel_values"])[0])

    @unittest.skip(reason="MaMA does not take inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="MamaModel is the base model: there is no head to be missing")
    def test_correct_missing_keys(self):
        pass

    @unittest.skip(reason="MaMA has no output embeddings (no language-model head) to tie or untie")
    def test_tie_model_weights(self):
        pass

    @unittest.skip(reason="MaMA has no output embeddings (no language-model head) to tie or untie")
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip(reason="neither DINOv2 nor GPT-2 chunks its feed-forward layers")
    def test_feed_forward_chunking(self):
        pass

    @unittest.skip(reason="problem types apply to classification heads (MamaForImageClassificationTest)")
    def test_problem_types(self):
        pass


class MamaForImageClassificationTester:
    def __init__(self, parent, batch_size=4, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_labels = num_labels
        self.is_training = is_training
        self.mama_tester = MamaModelTester(parent, batch_size=batch_size)
        vision = self.mama_tester.vision_tester
        self.seq_length = vision.seq_length
        self.hidden_size = vision.hidden_size
        self.num_hidden_layers = vision.num_hidden_layers
        self.num_attention_heads = vision.num_attention_heads
        self.compared_output_keys = ("logits",)

    def get_config(self):
        config = self.mama_tester.get_config()
        config.num_labels = self.num_labels
        return config

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), {"pixel_values": self.mama_tester.vision_tester.pixel_values()}

    def labels_for(self, model_class):
        return {"labels": torch.zeros(self.batch_size, dtype=torch.long)}

    @staticmethod
    def towers(model):
        return [model.vision_model]


class MamaForImageClassificationTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MamaForImageClassification,)
    # The pooled feature is the mean of the tokens *before* the final LayerNorm (paper), so the norm and
    # DINOv2's mask token (MaMA never masks patches) take no part in classification.
    parameters_without_gradient = (r"^vision_model\.embeddings\.mask_token$", r"^vision_model\.layernorm\.")

    def setUp(self):
        self.model_tester = MamaForImageClassificationTester(self)

    def test_forward_signature(self):
        arguments = list(inspect.signature(MamaForImageClassification.forward).parameters)
        self.assertEqual(arguments[1:3], ["pixel_values", "labels"])
        # No num_items_in_batch: the Trainer must scale the loss for gradient accumulation itself.
        self.assertFalse(MamaForImageClassification.accepts_loss_kwargs)
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'num_items_in_batch'"):
            MamaForImageClassification(config)(**inputs, num_items_in_batch=torch.tensor(4))

    def test_model_get_set_embeddings(self):
        """As ViT-family classifiers: the input embeddings are the patch embeddings."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = MamaForImageClassification(config)
        embeddings = model.get_input_embeddings()
        self.assertIs(embeddings, model.vision_model.embeddings.patch_embeddings)
        self.assertIsNone(model.get_output_embeddings())

    def test_problem_types(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for problem_type, num_labels, dtype in (("multi_label_classification", 2, torch.float),
                                                ("single_label_classification", 2, torch.long),
                                                ("regression", 1, torch.float)):
            with self.subTest(problem_type):
                config = copy.deepcopy(config)
                config.problem_type, config.num_labels = problem_type, num_labels
                model = MamaForImageClassification(config).train()
                labels = self.model_tester.labels_for(MamaForImageClassification)["labels"]
                if num_labels > 1 and problem_type == "multi_label_classification":
                    labels = labels.unsqueeze(1).repeat(1, num_labels)
                loss = model(**inputs, labels=labels.to(dtype)).loss
                loss.backward()
                self.assertTrue(torch.isfinite(loss))

    def test_mismatched_shapes_have_properly_initialized_weights(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        with tempfile.TemporaryDirectory() as folder:
            MamaForImageClassification(config_zero_init(config)).save_pretrained(folder)
            with self.assertRaises(RuntimeError):
                MamaForImageClassification.from_pretrained(folder, num_labels=42)
            model, info = MamaForImageClassification.from_pretrained(
                folder, num_labels=42, ignore_mismatched_sizes=True, output_loading_info=True)
        self.assertEqual({key for key, *_ in info["mismatched_keys"]}, {"classifier.weight", "classifier.bias"})
        self.assertEqual(model(**inputs).logits.shape, (self.model_tester.batch_size, 42))
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                mean = ((parameter.data.mean() * 1e9).round() / 1e9).item()
                self.assertIn(mean, [0.0, 1.0], name)

    def test_correct_missing_keys(self):
        """Built from a saved MamaModel: only the new classifier is missing, the text tower is dropped quietly."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        with tempfile.TemporaryDirectory() as folder:
            MamaModel(config).save_pretrained(folder)
            model, info = MamaForImageClassification.from_pretrained(folder, output_loading_info=True)
        self.assertEqual(set(info["missing_keys"]), {"classifier.weight", "classifier.bias"})
        self.assertFalse(info["unexpected_keys"])
        self.assertFalse(hasattr(model, "text_model"))

    def test_unknown_keyword_arguments_raise(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'output_hiden_states'"):
            MamaForImageClassification(config)(**inputs, output_hiden_states=True)

    @unittest.skip(reason="the classifier is image-only: no token embeddings to resize")
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(reason="the classifier is image-only: no token embeddings to resize")
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip(reason="MaMA does not take inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="MaMA has no output embeddings to tie")
    def test_tie_model_weights(self):
        pass

    @unittest.skip(reason="DINOv2 does not chunk its feed-forward layers")
    def test_feed_forward_chunking(self):
        pass


class MamaImageProcessingTester:
    def __init__(self, batch_size=3, min_resolution=30, max_resolution=60, size=28):
        self.batch_size = batch_size
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.size = size

    def prepare_image_processor_dict(self):
        return {"size": {"height": self.size, "width": self.size}, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "do_normalize": True, "mode": "global"}

    def expected_output_image_shape(self, images):
        return 3, self.size, self.size

    def prepare_image_inputs(self, numpify=False, torchify=False, num_channels=3, equal_resolution=False):
        return prepare_image_inputs(self.batch_size, self.min_resolution, self.max_resolution, num_channels,
                                    equal_resolution=equal_resolution, numpify=numpify, torchify=torchify)


class MamaImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processing_class = MamaImageProcessor

    def setUp(self):
        self.image_processor_tester = MamaImageProcessingTester()
        self.image_processor_dict = self.image_processor_tester.prepare_image_processor_dict()

    def test_mismatched_mean_or_std_length_is_a_value_error(self):
        images = self.image_processor_tester.prepare_image_inputs()
        for arguments in ({"image_mean": [0.5, 0.5]}, {"image_std": [0.5] * 4}):
            with self.assertRaisesRegex(ValueError, "give one value per channel"):
                MamaImageProcessor(**arguments)
            with self.assertRaisesRegex(ValueError, "give one value per channel"):
                MamaImageProcessor()(images, **arguments)

    def test_one_channel_without_rgb_conversion(self):
        processor = MamaImageProcessor(size=28, do_convert_rgb=False)
        images = self.image_processor_tester.prepare_image_inputs()
        grey = processor(images).pixel_values
        self.assertEqual(tuple(grey.shape), (3, 1, 28, 28))
        rgb = MamaImageProcessor(size=28)(images).pixel_values
        torch.testing.assert_close(rgb, grey.expand(-1, 3, -1, -1))
        self.assertEqual(tuple(processor(images, augment=True, seed=0).pixel_values.shape), (3, 1, 28, 28))

    def test_resize_rescale_and_data_format_arguments(self):
        image = np.zeros((3, 50, 40), dtype=np.uint8)
        image[:, 5:45, :30] = 180
        processor = MamaImageProcessor(size=28, do_normalize=False)
        channels_first = processor(image, input_data_format="channels_first").pixel_values
        channels_last = processor(image.transpose(1, 2, 0), input_data_format="channels_last").pixel_values
        torch.testing.assert_close(channels_first, channels_last)
        as_unit = processor(image[0].astype(np.float32) / 255, do_rescale=False).pixel_values
        torch.testing.assert_close(as_unit, channels_first)
        crop = processor(image, do_resize=False).pixel_values
        self.assertEqual(tuple(crop.shape), (1, 3, 40, 30))
        torch.testing.assert_close(crop, torch.full_like(crop, 180 / 255))
        with self.assertRaisesRegex(ValueError, "resample=1 is not supported"):
            processor(image, resample=1)
        with self.assertRaisesRegex(TypeError, "crops to the breast"):
            processor(image, do_center_crop=True)

    @unittest.skip(reason="one processor class serves both backends: there is no slow / fast pair to compare")
    def test_slow_fast_equivalence(self):
        pass


if __name__ == "__main__":
    unittest.main()
