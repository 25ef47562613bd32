"""Image <-> report retrieval on a converted split: the embeddings, the metric and the script."""

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from conftest import load_example
from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.reports import build_report
from modeling_mama.training.converted import stored_image_options
from modeling_mama.training.metrics import retrieval_metrics
from modeling_mama.training.multiview import report_fields_from_row
from modeling_mama.training.retrieval import evaluate_retrieval, retrieval_embeddings


def test_embeddings_match_a_manual_computation(pretrained_tiny_mama, synthetic_embed_dataset):
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    split = load_from_disk(synthetic_embed_dataset)["test"].select(range(10))
    images, reports, report_of_image = retrieval_embeddings(model, processor, split, batch_size=4, progress=False)
    assert images.shape[0] == 10 and reports.shape[0] == len(set(report_of_image)) <= 10
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    # Row 7, by hand: the stored image as the converter left it, its unmasked report.
    row = split[7]
    with torch.no_grad():
        pixels = processor(images=[row["image"]], laterality=[row["laterality"]],
                           **stored_image_options(split))["pixel_values"]
        image = torch.nn.functional.normalize(model.get_image_features(pixels).pooler_output, dim=-1)[0]
        text = processor(reports=[build_report(report_fields_from_row(row))])
        report = torch.nn.functional.normalize(
            model.get_text_features(text["input_ids"], text["attention_mask"]).pooler_output, dim=-1)[0]
    np.testing.assert_allclose(images[7], image.numpy(), atol=1e-5)
    np.testing.assert_allclose(reports[report_of_image[7]], report.numpy(), atol=1e-5)
    # Identical reports share one column.
    texts = [tuple(build_report(report_fields_from_row(split[i]))) for i in range(10)]
    for i in range(10):
        for j in range(10):
            assert (texts[i] == texts[j]) == (report_of_image[i] == report_of_image[j])


def test_pretraining_beats_chance_and_the_script_writes_json(pretrained_tiny_mama, synthetic_embed_dataset, tmp_path):
    results = load_example("retrieval").main([
        "--model", str(pretrained_tiny_mama), "--dataset", str(synthetic_embed_dataset), "--ks", "1,5",
        "--output_dir", str(tmp_path)])
    assert json.loads((tmp_path / "retrieval.json").read_text()) == results
    reports = results["num_reports"]
    assert results["num_images"] > reports > 5
    # The tiny pre-trained model lines up images and reports better than a random ranking (k / R).
    assert results["image_to_report_recall@5"] > 1.5 * 5 / reports
    assert results["report_to_image_recall@5"] > 1.5 * 5 / reports
    with pytest.raises(SystemExit):
        load_example("retrieval").main(["--model", str(pretrained_tiny_mama), "--dataset", str(synthetic_embed_dataset),
                                        "--split", "nope", "--output_dir", str(tmp_path)])


def test_results_are_the_metric_of_the_embeddings(tiny_mama_folder, synthetic_embed_dataset):
    model = MamaModel.from_pretrained(tiny_mama_folder).eval()
    processor = MamaProcessor.from_pretrained(tiny_mama_folder)
    split = load_from_disk(synthetic_embed_dataset)["test"]
    # This folder's tokenizer was trained on other reports: they need more than the default 144 tokens.
    results = evaluate_retrieval(model, processor, split, ks=(1,), max_length=256, progress=False)
    images, reports, report_of_image = retrieval_embeddings(model, processor, split, max_length=256, progress=False)
    assert results == {**retrieval_metrics(images @ reports.T, ks=(1,), groups=report_of_image,
                                           column_groups=np.arange(len(reports))),
                       "num_images": len(images), "num_reports": len(reports)}
    with pytest.raises(ValueError, match="empty"):
        evaluate_retrieval(model, processor, split.select([]))
