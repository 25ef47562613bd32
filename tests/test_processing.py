"""MamaProcessor: images + reports -> model inputs, text-only prompts, serialisation round trips."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from modeling_mama import MamaConfig, MamaModel
from modeling_mama.image_processing_mama import MamaImageProcessor
from modeling_mama.processing_mama import TEXT_INPUT_NAMES, MamaProcessor
from modeling_mama.reports import ReportFields, build_report, zero_shot_prompts
from modeling_mama.tokenization import batch_tokenize_reports, split_sentences, train_report_tokenizer

SIZE = 56


def sample_fields(count, seed=0):
    rng = np.random.default_rng(seed)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    return [ReportFields(
        procedure=pick(["MG Screening Bilateral", "MG Diagnostic Mammo Left"]), race=pick(["Asian", None]),
        ethnicity=pick(["Non-Hispanic or Latino", "Hispanic or Latino", None]), age=int(rng.integers(35, 90)),
        image_type="2D", laterality=pick(["L", "R"]), view=pick(["CC", "MLO"]), density=int(rng.integers(1, 5)),
        birads=int(rng.integers(0, 7)), mass_shape=pick(["Oval", None]), mass_density=pick(["Isodense", None]),
    ) for _ in range(count)]


def breast(height=90, width=70, laterality="L", seed=0):
    """A bright half-disc against the chest wall, 16-bit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    wall = 0 if laterality == "L" else width - 1
    inside = ((yy - height / 2) / (0.45 * height)) ** 2 + ((xx - wall) / (0.8 * width)) ** 2 < 1
    return (inside * (30000 + rng.integers(0, 2000, size=(height, width)))).astype(np.uint16)


@pytest.fixture(scope="module")
def tokenizer():
    sentences = [sentence for fields in sample_fields(300) for sentence in build_report(fields)]
    for task in ("birads", "density", "cancer"):
        sentences += [sentence for prompt in zero_shot_prompts(task) for sentence in prompt] * 5
    return train_report_tokenizer(sentences, vocab_size=600)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MamaProcessor(MamaImageProcessor(size=SIZE), tokenizer)


def test_images_and_reports_give_every_model_input(processor, tokenizer):
    fields = sample_fields(3, seed=4)
    images = [breast(seed=i, laterality=f.laterality) for i, f in enumerate(fields)]
    inputs = processor(images=images, reports=fields, laterality=[f.laterality for f in fields])
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "sentence_positions", "sentence_mask"}
    assert inputs["pixel_values"].shape == (3, 3, SIZE, SIZE)
    # the same as the two halves on their own
    alone = processor.image_processor(images, laterality=[f.laterality for f in fields])["pixel_values"]
    assert torch.equal(inputs["pixel_values"], alone)
    text = batch_tokenize_reports([build_report(f) for f in fields], tokenizer)
    for key in ("input_ids", "attention_mask", "sentence_positions", "sentence_mask"):
        assert torch.equal(inputs[key], text[key]), key
    counts = [len(build_report(f)) for f in fields]
    assert inputs["sentence_mask"].sum(dim=1).tolist() == counts
    assert inputs["sentence_positions"].shape == (3, max(counts))


def test_processor_outputs_drive_the_model(processor, tokenizer):
    fields = sample_fields(2, seed=8)
    inputs = processor(images=[breast(seed=1), breast(seed=2)], reports=fields)
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=SIZE, sentence_separator_token_id=tokenizer.sep_token_id)
    output = MamaModel(config)(**inputs, extra_pixel_values=inputs["pixel_values"], return_loss=True)
    assert torch.isfinite(output.loss) and output.logits_per_image.shape == (2, 2)
    assert set(output.loss_terms) >= {"clip", "local"}


def test_text_forms(processor, tokenizer):
    report = build_report(sample_fields(1, seed=2)[0])
    expected = batch_tokenize_reports([report], tokenizer)["input_ids"]
    as_string = processor(text=" ".join(report))
    assert torch.equal(as_string["input_ids"], expected) and "pixel_values" not in as_string
    assert torch.equal(processor(text=[report])["input_ids"], expected)
    assert torch.equal(processor(text=report, is_split_into_sentences=True)["input_ids"], expected)
    # a list of strings is a batch, one report per string
    batch = processor(text=["Overall Assessment: Negative.", " ".join(report)])
    assert batch["input_ids"].shape[0] == 2 and batch["sentence_mask"].sum(dim=1).tolist() == [1, len(report)]
    mixed = processor(text=[["Overall Assessment: Negative."], " ".join(report)])
    assert torch.equal(mixed["input_ids"], batch["input_ids"])


def test_a_period_inside_a_value_needs_a_sentence_list(processor):
    fields = ReportFields(procedure="MG Dx. Bilat", birads=1)
    from_fields = processor(reports=fields)
    assert from_fields["sentence_mask"].sum().item() == len(build_report(fields)) == 7
    as_string = processor(text=" ".join(build_report(fields)))  # running text splits at "Dx. "
    assert as_string["sentence_mask"].sum().item() == 8
    assert split_sentences(" ".join(build_report(fields)))[0] == "Procedure reported: MG Dx."


def test_zero_shot_prompts_without_images(processor):
    for task, classes in (("birads", 7), ("density", 4), ("cancer", 2)):
        prompts = zero_shot_prompts(task, sample_fields(1)[0])
        inputs = processor(text=prompts)
        assert set(inputs) == {"input_ids", "attention_mask", "sentence_positions", "sentence_mask"}
        assert inputs["input_ids"].shape[0] == classes
        assert inputs["sentence_mask"].sum(dim=1).tolist() == [len(prompt) for prompt in prompts]
    # a prompt that does not fit raises instead of being cut (the reference silently truncated at 72)
    longest = int(processor(text=zero_shot_prompts("cancer"))["attention_mask"].sum(dim=1).max())
    assert processor(text=zero_shot_prompts("cancer"), max_length=longest)["input_ids"].shape[1] == longest
    with pytest.raises(ValueError, match=rf"Report 1 needs {longest} tokens .* more than max_length={longest - 1}"):
        processor(text=zero_shot_prompts("cancer"), max_length=longest - 1)


def test_mappings_masking_and_padding_options(processor):
    row = {"laterality": "R", "view": "MLO", "age": 61, "birads": None, "report_birads": 2, "density": None,
           "report_density": 5, "image": "ignored"}
    sentences = processor.build_reports(row)[0]
    assert sentences == build_report(ReportFields(laterality="R", view="MLO", age=61, birads=2, density=5))
    masked_a = processor.build_reports([row] * 6, mask_prob=0.5, generator=5)
    masked_b = processor.build_reports([row] * 6, mask_prob=0.5, generator=5)
    assert masked_a == masked_b and len({tuple(r) for r in masked_a}) > 1  # one stream over the batch
    padded = processor(reports=[row, row], padding="max_length", max_length=100)
    assert padded["input_ids"].shape == (2, 100)
    numpy_inputs = processor(images=[breast()], reports=[row], return_tensors="np")
    assert isinstance(numpy_inputs["pixel_values"], np.ndarray) and numpy_inputs["sentence_mask"].dtype == bool


def test_tiles_mode_passes_the_tiles_through(tokenizer):
    processor = MamaProcessor(MamaImageProcessor(mode="tiles", size=28, tile_size=28, tile_grid=[2, 2]), tokenizer)
    inputs = processor(images=[breast(120, 80)], reports=[ReportFields(birads=1)])
    assert inputs["tile_pixel_values"].shape == (1, 4, 3, 28, 28) and inputs["tile_mask"].shape == (1, 4)
    assert inputs["input_ids"].shape[0] == 1


def test_user_errors(processor, tokenizer):
    with pytest.raises(ValueError, match="needs images, text or reports"):
        processor()
    with pytest.raises(ValueError, match="either text= or reports=, not both"):
        processor(text="Negative.", reports=ReportFields())
    with pytest.raises(ValueError, match="Got 2 images but 1 reports; reports= pairs one report with each image"):
        processor(images=[breast(), breast()], reports=[["Overall Assessment: Negative."]])
    with pytest.raises(TypeError, match=r"text\[0\] is a int"):
        processor(text=[3])
    with pytest.raises(TypeError, match=r"reports\[1\] is a str; expected ReportFields, a mapping or a list"):
        processor(reports=[ReportFields(), "Negative."])
    with pytest.raises(TypeError, match=r"Unexpected argument\(s\) \['laterality'\]"):
        processor(text="Negative.", laterality="L")
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or 'np'"):
        processor(text="Negative.", return_tensors="tf")
    with pytest.raises(ValueError, match="needs both an image_processor"):
        MamaProcessor(tokenizer=tokenizer)


def test_save_and_load_round_trip(processor, tmp_path):
    processor.max_length = 120
    try:
        processor.save_pretrained(tmp_path)
    finally:
        processor.max_length = 144
    fields = sample_fields(2, seed=6)
    images = [breast(seed=3), breast(seed=4, laterality="R")]
    expected = processor(images=images, reports=fields)
    AutoProcessor.register(MamaConfig, MamaProcessor, exist_ok=True)
    for loaded in (MamaProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MamaProcessor and loaded.max_length == 120
        assert type(loaded.image_processor) is MamaImageProcessor
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        assert len(loaded.tokenizer) == len(processor.tokenizer)
        assert loaded.tokenizer.sep_token_id == processor.tokenizer.sep_token_id
        result = loaded(images=images, reports=fields)
        for key, value in expected.items():
            assert torch.equal(result[key], value), key


# ---------------------------------------------------------------------------------------------
# The CLIP contract and transformers' processor contract


def test_text_is_independent_of_the_images(processor, tokenizer):
    image = breast(seed=5)
    prompts = ["Breast composition: The breast is extremely dense.",
               "Breast composition: The breast is almost entirely fat."]
    inputs = processor(text=prompts, images=image)  # tried as a CLIP user would: N prompts x M images
    assert inputs["pixel_values"].shape == (1, 3, SIZE, SIZE) and inputs["input_ids"].shape[0] == 2
    assert torch.equal(inputs["pixel_values"], processor(images=image)["pixel_values"])
    assert torch.equal(inputs["input_ids"], processor(text=prompts)["input_ids"])
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=SIZE,
                             sentence_separator_token_id=tokenizer.sep_token_id)
    model = MamaModel(config).eval()
    with torch.no_grad():
        assert model(**inputs).logits_per_image.shape == (1, 2)
        three = processor(text=prompts, images=[image, breast(seed=6), breast(seed=7)])
        assert model(**three).logits_per_image.shape == (3, 2)


def test_reports_take_fields_or_sentence_lists(processor):
    fields = sample_fields(2, seed=11)
    sentences = [build_report(f) for f in fields]
    images = [breast(seed=1), breast(seed=2)]
    from_fields = processor(images=images, reports=fields)
    from_sentences = processor(images=images, reports=sentences)
    for key, value in from_fields.items():
        assert torch.equal(from_sentences[key], value), key
    # The sentence positions are the separator tokens the processor wrote: one source for SLA.
    ids, positions, mask = from_sentences["input_ids"], from_sentences["sentence_positions"], from_sentences["sentence_mask"]
    assert (ids.gather(1, positions)[mask] == processor.tokenizer.sep_token_id).all()
    assert ((ids == processor.tokenizer.sep_token_id).sum(dim=1) == mask.sum(dim=1)).all()


def test_processor_contract(processor, tmp_path):
    import json

    # image-only and text-only calls give exactly their half
    assert set(processor(images=breast())) == {"pixel_values"}
    assert set(processor(text="Overall Assessment: Negative.")) == set(TEXT_INPUT_NAMES)
    both = processor(images=breast(), reports=[ReportFields(birads=1)])
    assert set(both) <= set(processor.model_input_names)
    tiled = MamaProcessor(MamaImageProcessor(mode="tiles", size=28, tile_grid=[2, 2]), processor.tokenizer)
    tiled_inputs = tiled(images=breast(120, 80), reports=[ReportFields(birads=1)])
    assert set(tiled_inputs) == set(tiled.model_input_names)  # what MamaModel.forward takes, nothing more
    # decode / batch_decode go to the tokenizer
    text = processor(text=[["Overall Assessment: Negative."], ["Overall Assessment: Benign."]])
    decoded = processor.batch_decode(text["input_ids"], skip_special_tokens=True)
    assert [line.strip() for line in decoded] == ["Overall Assessment: Negative", "Overall Assessment: Benign"]
    assert processor.decode(text["input_ids"][0], skip_special_tokens=True).strip() == decoded[0].strip()
    # the token budget is part of the saved processor; from_pretrained kwargs override saved values
    budget = MamaProcessor(processor.image_processor, processor.tokenizer, max_length=200)
    assert json.loads(budget.to_json_string())["max_length"] == 200
    budget.save_pretrained(tmp_path)
    loaded = MamaProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 200 and loaded.to_dict() == budget.to_dict()
    assert repr(loaded.image_processor) == repr(budget.image_processor)
    assert MamaProcessor.from_pretrained(tmp_path, max_length=100).max_length == 100
    with pytest.raises(ValueError, match="max_length must be a whole number of tokens >= 4"):
        MamaProcessor(processor.image_processor, processor.tokenizer, max_length=2)
    with pytest.raises(ValueError, match="truncation must be one of"):
        processor(text="Overall Assessment: Negative.", truncation="cut")
