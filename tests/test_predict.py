"""examples/predict.py: batch zero-shot prediction over a DICOM folder, resumable, with failures.csv."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import load_example
from dicom_factory import FOLDER_EXAMS, FOLDER_REJECTS, write_dicom_folder
from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.pipelines import ZeroShotScorer
from modeling_mama.reports import CLASS_NAMES, ReportFields, zero_shot_prompts

MAMMOGRAMS = [f"{patient}-{side}-{view}" for patient in FOLDER_EXAMS for side in "LR" for view in ("CC", "MLO")]


@pytest.fixture(scope="module")
def predict():
    return load_example("predict")


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs-export")
    return root, write_dicom_folder(root)


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def assert_same_rows(rows, expected):
    """Same rows in the same order; scores equal up to float noise (a batch's make-up moves the 7th digit)."""
    assert len(rows) == len(expected)
    for row, other in zip(rows, expected):
        assert {k: v for k, v in row.items() if not k.startswith("score_")} == {
            k: v for k, v in other.items() if not k.startswith("score_")}
        scores = [k for k in row if k.startswith("score_")]
        np.testing.assert_allclose([float(row[k]) for k in scores], [float(other[k]) for k in scores], atol=2e-6)


def scores_of(row, task):
    return np.array([float(row[f"score_{name.replace('BI-RADS ', 'BI_RADS_')}"]) for name in CLASS_NAMES[task]])


def direct_probabilities(model_folder, path, task, name):
    """The model's own forward on one file, with the prompts written out from what the file holds."""
    patient, side, view = name.split("-")
    exam = FOLDER_EXAMS[patient]
    fields = ReportFields(procedure=exam["description"], age=exam["age"], laterality=side, view=view)
    model = MamaModel.from_pretrained(model_folder).eval()
    processor = MamaProcessor.from_pretrained(model_folder)
    pixel_values = processor.image_processor.preprocess(str(path), laterality=side, return_tensors="pt")["pixel_values"]
    text = processor(text=zero_shot_prompts(task, fields))
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=text["input_ids"],
                       attention_mask=text["attention_mask"]).logits_per_image
    return logits.softmax(dim=-1)[0].numpy()


def test_rows_match_the_model_and_aggregate_views(predict, tiny_mama_folder, dicom_folder, tmp_path):
    root, written = dicom_folder
    output = tmp_path / "preds.csv"
    summary = predict.main(["--model", str(tiny_mama_folder), "--input", str(root), "--task", "density",
                            "--output", str(output), "--batch_size", "3", "--no_progress"])
    assert (summary["scored"], summary["skipped"], summary["breasts"], summary["exams"]) == (8, 0, 4, 2)
    rows = read_rows(output)
    assert [row["level"] for row in rows] == (["image"] * 4 + ["breast"] * 2 + ["exam"]) * 2
    images = {row["path"]: row for row in rows if row["level"] == "image"}
    direct = {}
    for name in MAMMOGRAMS:
        row = images[str(written[name].resolve())]
        patient, side, view = name.split("-")
        assert (row["patient_id"], row["laterality"], row["view"], row["view_source"]) == (patient, side, view,
                                                                                        "ViewPosition")
        assert row["laterality_source"] == ("pixels" if name == "P2-R-CC" else "ImageLaterality")
        direct[name] = direct_probabilities(tiny_mama_folder, written[name], "density", name)
        np.testing.assert_allclose(scores_of(row, "density"), direct[name], atol=2e-6)
        assert row["prediction"] == CLASS_NAMES["density"][int(np.argmax(direct[name]))]
    for row in rows:
        if row["level"] == "breast":
            members = [name for name in MAMMOGRAMS if name.startswith(f"{row['patient_id']}-{row['laterality']}-")]
            expected = np.mean([direct[name] for name in members], axis=0)
            assert row["num_images"] == "2"
        elif row["level"] == "exam":
            expected = np.mean([direct[name] for name in MAMMOGRAMS if name.startswith(row["patient_id"])], axis=0)
            assert row["num_images"] == "4"
        else:
            continue
        np.testing.assert_allclose(scores_of(row, "density"), expected, atol=2e-6)
        assert row["prediction"] == CLASS_NAMES["density"][int(np.argmax(expected))]
    assert not (tmp_path / "preds.csv.partial").exists()


def test_failures_csv_lists_every_file_left_out(predict, tiny_mama_folder, dicom_folder, tmp_path):
    root, written = dicom_folder
    predict.main(["--model", str(tiny_mama_folder), "--input", str(root), "--task", "birads",
                  "--output", str(tmp_path / "out" / "preds.csv"), "--no_progress"])
    failures = {row["path"]: row["reason"] for row in read_rows(tmp_path / "out" / "failures.csv")}
    assert set(failures) == {str(written[name]) for name in FOLDER_REJECTS}
    for name, reason in FOLDER_REJECTS.items():
        assert reason in failures[str(written[name])], (name, failures[str(written[name])])
    assert "could not decode the pixel data" in failures[str(written["corrupt.dcm"])]
    assert not failures[str(written["corrupt.dcm"])].startswith(str(root))  # the path is its own column


def test_killed_run_resumes_and_skips_scored_images(predict, tiny_mama_folder, dicom_folder, tmp_path, monkeypatch):
    root, _ = dicom_folder
    arguments = ["--model", str(tiny_mama_folder), "--input", str(root), "--task", "density", "--batch_size", "3",
                 "--no_progress"]
    reference = tmp_path / "reference" / "preds.csv"
    predict.main([*arguments, "--output", str(reference)])

    output = tmp_path / "resumed" / "preds.csv"
    original = ZeroShotScorer.logits
    scored_batches = []

    def killed_after_first_batch(self, pixel_values, fields):
        if scored_batches:
            raise KeyboardInterrupt("killed")
        scored_batches.append(len(fields))
        return original(self, pixel_values, fields)

    monkeypatch.setattr(ZeroShotScorer, "logits", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        predict.main([*arguments, "--output", str(output)])
    monkeypatch.undo()
    journal = output.with_name("preds.csv.partial")
    first_batch = scored_batches[0]  # 3 files, of which the corrupt one fails before scoring
    assert first_batch == 2 and not output.exists() and len(journal.read_text().splitlines()) == first_batch
    with open(journal, "a") as stream:
        stream.write('{"level": "image", "exam')  # killed while writing a line: that line is lost, not the run

    summary = predict.main([*arguments, "--output", str(output)])
    assert (summary["skipped"], summary["scored"]) == (first_batch, 8 - first_batch)
    assert_same_rows(read_rows(output), read_rows(reference))
    assert not journal.exists()

    resumed = output.read_text()
    again = predict.main([*arguments, "--output", str(output)])
    assert (again["skipped"], again["scored"]) == (8, 0)
    assert output.read_text() == resumed


def test_json_format_and_max_aggregation(predict, tiny_mama_folder, dicom_folder, tmp_path):
    root, _ = dicom_folder
    arguments = ["--model", str(tiny_mama_folder), "--input", str(root), "--task", "cancer", "--no_progress"]
    predict.main([*arguments, "--output", str(tmp_path / "preds.csv")])
    predict.main([*arguments, "--output", str(tmp_path / "preds.json"), "--aggregate", "max"])
    document = json.loads((tmp_path / "preds.json").read_text())
    assert (document["task"], document["class_names"]) == ("cancer", ["negative", "positive"])
    assert (len(document["images"]), len(document["breasts"]), len(document["exams"])) == (8, 4, 2)
    by_path = {row["path"]: row for row in read_rows(tmp_path / "preds.csv") if row["level"] == "image"}
    for image in document["images"]:
        assert image["scores"]["positive"] == pytest.approx(float(by_path[image["path"]]["score_positive"]))
    for breast in document["breasts"]:
        views = [image for image in document["images"]
                 if (image["exam_id"], image["laterality"]) == (breast["exam_id"], breast["laterality"])]
        highest = max(image["scores"]["positive"] for image in views)
        assert breast["aggregate"] == "max" and breast["scores"]["positive"] == pytest.approx(highest)
        assert breast["scores"]["negative"] == pytest.approx(1 - highest)


def test_bad_arguments_and_mixed_tasks(predict, tiny_mama_folder, dicom_folder, tmp_path, capsys):
    root, _ = dicom_folder
    arguments = ["--model", str(tiny_mama_folder), "--input", str(root), "--output", str(tmp_path / "preds.csv"),
                 "--no_progress"]
    with pytest.raises(SystemExit):
        predict.main([*arguments, "--task", "density", "--aggregate", "max"])
    assert "--aggregate max needs a binary task" in capsys.readouterr().err
    predict.main([*arguments, "--task", "density"])
    with pytest.raises(SystemExit, match="holds density predictions, not birads"):
        predict.main([*arguments, "--task", "birads"])
