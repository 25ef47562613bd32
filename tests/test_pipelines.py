"""The batch zero-shot scorer (modeling_mama.pipelines.ZeroShotScorer) against the pipeline it batches."""

import numpy as np
import pytest
from transformers import pipeline

from dicom_factory import write_mammogram
from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.dicom import read_dicom
from modeling_mama.pipelines import ZeroShotScorer
from modeling_mama.reports import ReportFields


@pytest.fixture(scope="module")
def exam_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("exam")
    return [write_mammogram(root / f"{side}-{view}.dcm", laterality=side, view_position=view, seed=seed)
            for seed, (side, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")])]


def test_scorer_gives_the_pipelines_scores_for_a_batch(tiny_mama_folder, exam_files):
    classifier = pipeline("mammography-zero-shot", model=str(tiny_mama_folder))
    exam = classifier({"views": [str(path) for path in exam_files], "fields": {"age": 58}}, task="birads")
    model, processor = MamaModel.from_pretrained(tiny_mama_folder), MamaProcessor.from_pretrained(tiny_mama_folder)
    scorer = ZeroShotScorer(model, processor, "birads")
    images = [read_dicom(path) for path in exam_files]
    fields = [ReportFields(age=58, laterality=image.laterality, view=image.view_position) for image in images]
    probabilities = scorer(images, fields)
    assert probabilities.shape == (4, 7) and probabilities.dtype == np.float32
    for row, view in zip(probabilities, exam["images"]):
        expected = {entry["label"]: entry["score"] for entry in view["scores"]}
        np.testing.assert_allclose(row, [expected[name] for name in scorer.class_names], atol=1e-6)


def test_prompts_are_encoded_once_per_metadata_prefix(tiny_mama_folder, exam_files, monkeypatch):
    model = MamaModel.from_pretrained(tiny_mama_folder)
    scorer = ZeroShotScorer(model, MamaProcessor.from_pretrained(tiny_mama_folder), "density", cache_size=3)
    encoded = []
    original = model.get_text_features

    def counting(input_ids, attention_mask=None):
        encoded.append(len(input_ids))
        return original(input_ids, attention_mask)

    monkeypatch.setattr(model, "get_text_features", counting)
    images = [read_dicom(path) for path in exam_files]
    left = ReportFields(laterality="L", view="CC")
    first = scorer(images[:2], [left, left])
    assert encoded == [4]  # one prefix, four density prompts
    second = scorer(images[:2], [left, ReportFields(laterality="L", view="MLO")])
    assert encoded == [4, 4]
    np.testing.assert_allclose(second[0], first[0], atol=1e-6)
    scorer(images, [ReportFields(laterality=side, view=view) for side in "LR" for view in ("CC", "MLO")])
    assert encoded == [4, 4, 8] and len(scorer._prompt_embeddings) == 4  # a batch's prefixes are kept together
    scorer(images[:1], [ReportFields(laterality="R", view="XCCL")])
    assert len(scorer._prompt_embeddings) == 3  # then the least recently used are dropped
    with pytest.raises(ValueError, match="Got 2 images but 1 report fields"):
        scorer.logits(scorer.preprocess(images[:2], [left, left]), [left])
    with pytest.raises(ValueError, match="task must be one of"):
        ZeroShotScorer(model, scorer.processor, "calcification")
