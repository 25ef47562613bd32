"""Zero-shot: the stock transformers pipeline, the mammography pipeline, the paper protocol and its script."""

import json
import re

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk
from transformers import pipeline

from conftest import load_example
from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.reports import CLASS_NAMES, ReportFields, zero_shot_prompts
from modeling_mama.training.zero_shot import evaluate_zero_shot, label_to_class, zero_shot_logits


def test_label_to_class():
    assert [label_to_class("density", d) for d in (1, 4, 5, None)] == [0, 3, None, None]
    assert [label_to_class("birads", b) for b in (0, 6, 7)] == [0, 6, None]
    assert label_to_class("cancer", float("nan")) is None
    with pytest.raises(ValueError, match="Unknown task"):
        label_to_class("mass", 1)


def test_pretraining_learned_density(pretrained_tiny_mama):
    results = json.loads((pretrained_tiny_mama / "results.json").read_text())
    density = results["zero_shot"]["density"]
    # 4 classes: chance is 0.25 balanced accuracy. The tiny run (56 px, 30 epochs, 44 test images) is a smoke
    # test of learning: its macro AUC lands anywhere in 0.5-0.6 with input changes of 2/65535 (window-tag
    # rounding, measured), while its predictions stay well above chance. What the method learns is measured
    # by the demo (bench/bench_demo_seeds.py: density AUC 0.90-0.94 over seeds 42, 0, 1).
    assert density["balanced_accuracy"] > 0.3, density


def test_stock_zero_shot_pipeline(pretrained_tiny_mama, synthetic_embed_dataset):
    classifier = pipeline("zero-shot-image-classification", model=str(pretrained_tiny_mama))
    image = load_from_disk(str(synthetic_embed_dataset))["test"][0]["image"]
    labels = ["almost entirely fat", "scattered fibroglandular densities", "heterogeneously dense", "extremely dense"]
    out = classifier(image, candidate_labels=labels)
    assert sorted(entry["label"] for entry in out) == sorted(labels)
    assert sum(entry["score"] for entry in out) == pytest.approx(1.0, abs=1e-5)
    # The same numbers straight from the model (8-bit RGB, as the stock pipeline loads images).
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    text = processor.tokenizer([f"This is a photo of {label}." for label in labels], padding=True, return_tensors="pt")
    pixels = processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels, **text).logits_per_image[0]
    expected = dict(zip(labels, logits.softmax(-1).tolist()))
    for entry in out:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-5)


def test_paper_protocol_matches_manual_computation(pretrained_tiny_mama, synthetic_embed_dataset):
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    split = load_from_disk(str(synthetic_embed_dataset))["test"].select(range(6))
    logits, labels, rows = zero_shot_logits(model, processor, split, "density", progress=False, batch_size=4)
    assert logits.shape == (len(rows), 4)
    # Row by row: this image's own metadata + each class's sentences, s * image . prompt.
    from modeling_mama.training.multiview import report_fields_from_row

    row = split[rows[2]]
    prompts = zero_shot_prompts("density", report_fields_from_row(row))
    assert prompts[0][0].startswith("Procedure reported:") and "Breast composition" in prompts[0][-1]
    text = processor(text=prompts)
    # The converter stored the image oriented and cropped (conversion.json): neither is done again.
    pixels = processor(images=row["image"], do_orient=False, do_crop_to_breast=False)["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels, input_ids=text["input_ids"],
                         attention_mask=text["attention_mask"]).logits_per_image[0]
    np.testing.assert_allclose(logits[2], expected.numpy(), rtol=1e-4, atol=1e-4)
    assert labels[2] == label_to_class("density", row["density"])


def test_prompt_ensembling_and_class_only(pretrained_tiny_mama, synthetic_embed_dataset):
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    split = load_from_disk(str(synthetic_embed_dataset))["test"].select(range(4))
    plain = evaluate_zero_shot(model, processor, split, "birads", use_metadata=False, progress=False)
    ensembled = evaluate_zero_shot(model, processor, split, "birads", prompt_variants=2, progress=False)
    assert plain["num_images"] == ensembled["num_images"] > 0
    assert len(plain["per_class_accuracy"]) == 7


def test_mammography_pipeline_on_dicom_and_exam(pretrained_tiny_mama, synthetic_embed_dataset):
    import modeling_mama  # noqa: F401  (registers the pipeline)

    raw = synthetic_embed_dataset.parent / "raw"
    files = sorted(raw.glob("cohort_*/*/*/*.dcm"))[:4]
    classifier = pipeline("mammography-zero-shot", model=str(pretrained_tiny_mama))
    single = classifier(str(files[0]), task="density")
    assert [entry["label"] for entry in sorted(single, key=lambda e: e["label"])] == CLASS_NAMES["density"]
    assert sum(entry["score"] for entry in single) == pytest.approx(1.0, abs=1e-5)

    exam = classifier({"views": [str(f) for f in files], "fields": {"age": 61}}, task="birads")
    assert len(exam["images"]) == 4 and all(len(view["scores"]) == 7 for view in exam["images"])
    assert set(exam["breasts"]) <= {"L", "R"}
    # Documented rule: a breast's scores are the mean of its views', the exam's the mean of all views'.
    by_side: dict = {}
    for view in exam["images"]:
        scores = {entry["label"]: entry["score"] for entry in view["scores"]}
        by_side.setdefault(view["laterality"], []).append([scores[name] for name in CLASS_NAMES["birads"]])
    for side, rows in by_side.items():
        breast = {entry["label"]: entry["score"] for entry in exam["breasts"][side]}
        np.testing.assert_allclose([breast[name] for name in CLASS_NAMES["birads"]], np.mean(rows, axis=0), atol=1e-6)
    all_rows = [row for rows in by_side.values() for row in rows]
    exam_scores = {entry["label"]: entry["score"] for entry in exam["exam"]}
    np.testing.assert_allclose([exam_scores[name] for name in CLASS_NAMES["birads"]], np.mean(all_rows, axis=0),
                               atol=1e-6)
    # An array with explicit fields works too; the prompt uses the caller's metadata.
    array = np.random.default_rng(0).integers(0, 4000, (96, 80)).astype(np.uint16)
    out = classifier({"image": array, "laterality": "R", "view": "MLO"}, task="cancer")
    assert {entry["label"] for entry in out} == {"negative", "positive"}
    with pytest.raises(ValueError, match="task must be one of"):
        classifier(array, task="mass")
    assert isinstance(ReportFields(laterality="L"), ReportFields)


def test_zero_shot_script_writes_json_and_plots(pretrained_tiny_mama, synthetic_embed_dataset, tmp_path):
    results = load_example("zero_shot").main([
        "--model", str(pretrained_tiny_mama), "--dataset", str(synthetic_embed_dataset), "--task", "cancer",
        "--breast_level", "--output_dir", str(tmp_path),
    ])
    saved = json.loads((tmp_path / "zero_shot_cancer.json").read_text())
    assert saved["image_level"]["balanced_accuracy"] == pytest.approx(results["image_level"]["balanced_accuracy"])
    assert "pf1" in saved["image_level"] and "specificity_at_80_sensitivity" in saved["image_level"]
    assert saved["breast_level"]["num_breasts"] <= saved["num_images"]
    for name in ("zero_shot_cancer_confusion.png", "zero_shot_cancer_roc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_shot_script_json_is_strict_and_missing_labels_are_named(pretrained_tiny_mama, synthetic_embed_dataset,
                                                                      tmp_path):
    script = load_example("zero_shot")
    script.main(["--model", str(pretrained_tiny_mama), "--dataset", str(synthetic_embed_dataset), "--task", "birads",
                 "--split", "validation", "--output_dir", str(tmp_path)])

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the JSON")

    saved = json.loads((tmp_path / "zero_shot_birads.json").read_text(), parse_constant=refuse)
    assert None in saved["image_level"]["auc_per_class"]  # BI-RADS classes absent from the split: null, not NaN

    unlabelled = tmp_path / "unlabelled"
    test = load_from_disk(str(synthetic_embed_dataset))["test"]
    DatasetDict(test=test.select(range(4)).map(lambda row: {"cancer": None})).save_to_disk(str(unlabelled))
    with pytest.raises(SystemExit, match=re.escape(f"the 'test' split of {unlabelled} has an empty 'cancer' column")):
        script.main(["--model", str(pretrained_tiny_mama), "--dataset", str(unlabelled), "--task", "cancer"])


def test_pipeline_names_an_image_without_a_breast(pretrained_tiny_mama):
    import modeling_mama  # noqa: F401  (registers the pipeline)
    from modeling_mama.image_processing_mama import NoBreastFoundError, NoBreastWarning

    classifier = pipeline("mammography-zero-shot", model=str(pretrained_tiny_mama))
    blank = np.zeros((96, 80), dtype=np.uint16)
    with pytest.warns(NoBreastWarning, match="no breast found"):
        scores = classifier(blank, task="density")
    assert len(scores) == 4
    with pytest.raises(NoBreastFoundError, match="no breast found"):
        classifier(blank, task="density", no_breast="error")
