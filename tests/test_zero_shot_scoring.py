"""The one zero-shot scorer (ZeroShotScorer): the paper's formula, tiles aggregated per image, the pipeline on it.

The prompt cache and batch use are in test_pipelines.py (the scorer is re-exported there)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_mama import MamaConfig, MamaModel, MamaProcessor
from modeling_mama.image_processing_mama import MamaImageProcessor
from modeling_mama.pipelines import MammographyZeroShotPipeline
from modeling_mama.reports import ReportFields, zero_shot_prompts
from modeling_mama.zero_shot_scoring import ZeroShotScorer, aggregate_scores, default_tile_aggregation

SIZE = 56


def breast(height, width, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (0.45 * height)) ** 2 + (xx / (0.8 * width)) ** 2 < 1
    return (inside * rng.integers(20000, 60000, size=(height, width))).astype(np.uint16)


@pytest.fixture(scope="module")
def model_and_processor(report_tokenizer):
    torch.manual_seed(0)
    config = MamaConfig.tiny(vocab_size=len(report_tokenizer), image_size=SIZE,
                             sentence_separator_token_id=report_tokenizer.sep_token_id)
    processor = MamaProcessor(MamaImageProcessor(size=SIZE, tile_size=28, tile_grid=[4, 3]), report_tokenizer)
    return MamaModel(config).eval(), processor


FIELDS = [ReportFields(age=61, laterality="L", view="CC"), ReportFields(age=47, laterality="R", view="MLO")]


def class_embeddings(model, processor, task, fields, variant=0):
    """Normalised embeddings of the task's class prompts (variant 0: the standard ones)."""
    from modeling_mama.reports import zero_shot_prompt_variants

    prompts = zero_shot_prompts(task, fields) if variant == 0 else zero_shot_prompt_variants(task, fields, variant)[-1]
    text = processor(text=prompts)
    with torch.no_grad():
        return F.normalize(model.get_text_features(text["input_ids"], text["attention_mask"]).pooler_output, dim=-1)


def test_global_scores_are_the_paper_formula(model_and_processor):
    model, processor = model_and_processor
    images = [breast(110, 70, 1), breast(90, 80, 2)]
    scorer = ZeroShotScorer(model, processor, "density")
    logits = scorer.logits(scorer.preprocess(images, FIELDS), FIELDS)
    assert logits.shape == (2, 4)
    for index, (image, fields) in enumerate(zip(images, FIELDS)):
        text = processor(text=zero_shot_prompts("density", fields))
        pixel_values = processor(images=image, laterality=fields.laterality)["pixel_values"]
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, **text).logits_per_image[0]
        torch.testing.assert_close(logits[index], expected, rtol=1e-4, atol=1e-4)
    # Without metadata every image shares the class-only prompts (one cache entry).
    class_only = ZeroShotScorer(model, processor, "density", use_metadata=False)
    class_only(images, FIELDS)
    assert list(class_only._prompt_embeddings) == [None]
    # Prompt variants are averaged in embedding space.
    ensembled = ZeroShotScorer(model, processor, "birads", prompt_variants=2)
    expected = torch.stack([class_embeddings(model, processor, "birads", FIELDS[0], variant) for variant in range(3)])
    torch.testing.assert_close(ensembled.prompt_embeddings(FIELDS[:1])[0],
                               F.normalize(expected.mean(dim=0), dim=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["cancer", "density"])
def test_tiles_are_scored_and_aggregated_per_image(model_and_processor, task):
    model, processor = model_and_processor
    images = [breast(110, 70, 3), breast(60, 40, 4)]  # 4 and 2 tiles of 28 px hold breast
    scorer = ZeroShotScorer(model, processor, task, tiles=True)
    logits = scorer.logits(scorer.preprocess(images, FIELDS), FIELDS)
    tiles = processor(images=images, mode="tiles", laterality=[fields.laterality for fields in FIELDS])
    scale = model.clamped_scales()[0].exp()
    for index, fields in enumerate(FIELDS):
        mask = tiles["tile_mask"][index]
        assert mask.sum() >= 2
        with torch.no_grad():
            tile_embeds = F.normalize(model.get_image_features(tiles["tile_pixel_values"][index][mask]).pooler_output,
                                      dim=-1)
        probabilities = (scale * tile_embeds @ class_embeddings(model, processor, task, fields).t()).softmax(-1)
        if default_tile_aggregation(task) == "max":  # the most suspicious tile decides
            positive = probabilities[:, 1].max()
            expected = torch.stack([1 - positive, positive])
        else:
            expected = probabilities.mean(dim=0)
        torch.testing.assert_close(logits[index].softmax(-1), expected, rtol=1e-4, atol=1e-5)


def test_tile_aggregation_is_an_explicit_option(model_and_processor):
    model, processor = model_and_processor
    images = [breast(110, 70, 5)]
    by_max = ZeroShotScorer(model, processor, "cancer", tiles=True)(images)
    by_mean = ZeroShotScorer(model, processor, "cancer", tiles=True, tile_aggregation="mean")(images)
    assert by_max[0, 1] >= by_mean[0, 1] - 1e-6 and not np.allclose(by_max, by_mean)
    with pytest.raises(ValueError, match="tile_aggregation='max' is for finding-present"):
        ZeroShotScorer(model, processor, "density", tiles=True, tile_aggregation="max")
    with pytest.raises(ValueError, match="tile_aggregation must be one of"):
        ZeroShotScorer(model, processor, "cancer", tiles=True, tile_aggregation="median")


def test_an_image_without_breast_tiles_keeps_its_global_score(model_and_processor):
    model, processor = model_and_processor
    speck = np.zeros((120, 120), dtype=np.uint16)
    speck[60:63, 60:63] = 50000  # no tile holds 5% breast
    images = [speck, breast(110, 70, 6)]
    assert processor(images=images, mode="tiles")["tile_mask"][0].sum() == 0
    tiled = ZeroShotScorer(model, processor, "birads", tiles=True)(images)
    plain = ZeroShotScorer(model, processor, "birads")(images)
    np.testing.assert_allclose(tiled[0], plain[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(tiled[1], plain[1])


def test_aggregate_scores():
    ids, scores = aggregate_scores(np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]]), [0, 0, 1], how="max")
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [[0.4, 0.6], [0.9, 0.1]])
    _, means = aggregate_scores(np.array([[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]), ["a", "a"])
    np.testing.assert_allclose(means, [[0.3, 0.35, 0.35]])
    with pytest.raises(ValueError, match="use how='mean' for multiclass"):
        aggregate_scores(np.ones((2, 3)) / 3, [0, 0], how="max")


def test_the_pipeline_is_the_processor_and_the_scorer(model_and_processor):
    model, processor = model_and_processor
    classifier = MammographyZeroShotPipeline(model=model, processor=processor, device="cpu")
    image = breast(110, 70, 7)
    item = {"image": image, "laterality": "L", "view": "CC", "fields": {"age": 61}}
    prepared = classifier.preprocess(item, task="birads")
    assert prepared["fields"] == [FIELDS[0]]
    direct = processor(images=[image], laterality=["L"])
    assert set(prepared["inputs"]) == set(direct)
    for key, value in direct.items():
        assert torch.equal(prepared["inputs"][key], value), key
    for tiles in (False, True):
        scores = classifier(item, task="cancer", tiles=tiles)
        expected = ZeroShotScorer(model, processor, "cancer", tiles=tiles)([image], [FIELDS[0]])[0]
        by_label = {entry["label"]: entry["score"] for entry in scores}
        assert by_label["positive"] == pytest.approx(float(expected[1]), abs=1e-5)
    # The saved budget is the default; a caller's budget too small for a prompt is an error, not a cut.
    with pytest.raises(ValueError, match="more than max_length=20"):
        classifier(item, task="birads", max_length=20)
    with pytest.warns(UserWarning, match="more than max_length=20"):
        classifier(item, task="birads", max_length=20, truncation="warn")
