"""The one zero-shot scorer: the paper's formula, tiles aggregated per image, the pipeline on top of it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_mama import MamaConfig, MamaModel, MamaProcessor
from modeling_mama.image_processing_mama import MamaImageProcessor
from modeling_mama.pipelines import MammographyZeroShotPipeline
from modeling_mama.reports import ReportFields, zero_shot_prompts
from modeling_mama.zero_shot_scoring import (
    TILE_AGGREGATION,
    aggregate_scores,
    zero_shot_batch,
    zero_shot_classify,
    zero_shot_logits,
)

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


def class_embeddings(model, processor, task, fields):
    text = processor(text=zero_shot_prompts(task, fields))
    with torch.no_grad():
        return F.normalize(model.get_text_features(text["input_ids"], text["attention_mask"]).pooler_output, dim=-1)


def test_global_scores_are_the_paper_formula(model_and_processor):
    model, processor = model_and_processor
    images = [breast(110, 70, 1), breast(90, 80, 2)]
    logits = zero_shot_classify(model, processor, images, "density", fields=FIELDS)
    assert logits.shape == (2, 4)
    for index, (image, fields) in enumerate(zip(images, FIELDS)):
        text = processor(text=zero_shot_prompts("density", fields))
        with torch.no_grad():
            expected = model(pixel_values=processor(images=image)["pixel_values"], **text).logits_per_image[0]
        torch.testing.assert_close(logits[index], expected, rtol=1e-4, atol=1e-4)
    # Without metadata every image shares the class-only prompts.
    shared = zero_shot_batch(processor, images, "density", fields=FIELDS, use_metadata=False)
    assert shared.inputs["input_ids"].shape[0] == 4 and not shared.per_image_prompts


@pytest.mark.parametrize("task", ["cancer", "density"])
def test_tiles_are_scored_and_aggregated_per_image(model_and_processor, task):
    model, processor = model_and_processor
    images = [breast(110, 70, 3), breast(60, 40, 4)]  # 4 and 2 tiles of 28 px hold breast
    logits = zero_shot_classify(model, processor, images, task, fields=FIELDS, tiles=True)
    tiles = processor(images=images, mode="tiles")
    scale = model.clamped_scales()[0].exp()
    for index, fields in enumerate(FIELDS):
        mask = tiles["tile_mask"][index]
        assert mask.sum() >= 2
        with torch.no_grad():
            tile_embeds = F.normalize(model.get_image_features(tiles["tile_pixel_values"][index][mask]).pooler_output,
                                      dim=-1)
        probabilities = (scale * tile_embeds @ class_embeddings(model, processor, task, fields).t()).softmax(-1)
        if TILE_AGGREGATION[task] == "max":  # the most suspicious tile decides
            positive = probabilities[:, 1].max()
            expected = torch.stack([1 - positive, positive])
        else:
            expected = probabilities.mean(dim=0)
        torch.testing.assert_close(logits[index].softmax(-1), expected, rtol=1e-4, atol=1e-5)


def test_tile_aggregation_is_an_explicit_option(model_and_processor):
    model, processor = model_and_processor
    images = [breast(110, 70, 5)]
    batch = zero_shot_batch(processor, images, "cancer", tiles=True)
    by_max = zero_shot_logits(model, batch).softmax(-1)
    by_mean = zero_shot_logits(model, batch, tile_aggregation="mean").softmax(-1)
    assert by_max[0, 1] >= by_mean[0, 1] - 1e-6 and not torch.allclose(by_max, by_mean)
    with pytest.raises(ValueError, match="tile_aggregation='max' is for finding-present"):
        zero_shot_classify(model, processor, images, "density", tiles=True, tile_aggregation="max")
    with pytest.raises(ValueError, match="tile_aggregation must be one of"):
        zero_shot_logits(model, batch, tile_aggregation="median")


def test_an_image_without_breast_tiles_keeps_its_global_score(model_and_processor):
    model, processor = model_and_processor
    speck = np.zeros((120, 120), dtype=np.uint16)
    speck[60:63, 60:63] = 50000  # no tile holds 5% breast
    images = [speck, breast(110, 70, 6)]
    assert processor(images=images, mode="tiles")["tile_mask"][0].sum() == 0
    tiled = zero_shot_classify(model, processor, images, "birads", tiles=True)
    plain = zero_shot_classify(model, processor, images, "birads")
    torch.testing.assert_close(tiled[0], plain[0])
    assert not torch.allclose(tiled[1], plain[1])


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
    direct = processor(images=[image], text=zero_shot_prompts("birads", FIELDS[0]), laterality=["L"])
    assert set(prepared["batch"].inputs) == set(direct)
    for key, value in direct.items():
        assert torch.equal(prepared["batch"].inputs[key], value), key
    for tiles in (False, True):
        scores = classifier(item, task="cancer", tiles=tiles)
        expected = zero_shot_classify(model, processor, [image], "cancer", fields=[FIELDS[0]], tiles=tiles,
                                      laterality=["L"])[0].softmax(-1)
        by_label = {entry["label"]: entry["score"] for entry in scores}
        assert by_label["positive"] == pytest.approx(float(expected[1]), abs=1e-5)
    # The saved budget is the default; a caller's budget too small for a prompt is an error, not a cut.
    assert classifier.preprocess(item, task="birads")["batch"].inputs["input_ids"].shape[1] <= processor.max_length
    with pytest.raises(ValueError, match="more than max_length=20"):
        classifier(item, task="birads", max_length=20)
    with pytest.warns(UserWarning, match="more than max_length=20"):
        classifier(item, task="birads", max_length=20, truncation="warn")
