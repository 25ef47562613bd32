"""Heat maps of the patch-sentence similarity SLA learned, and examples/explain.py."""

import json

import numpy as np
import pytest
import torch
from conftest import load_example

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.training.visualization import (
    patch_sentence_similarity,
    plot_heat_map,
    upsample_map,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_similarity_is_the_local_heads_cosine(pretrained_tiny_mama):
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    pixel_values = torch.randn(1, 3, 56, 56)
    # Two reports so the batch pads: the one-sentence report gets a padded sentence slot.
    text = processor(text=[["Breast composition: The breast is extremely dense."],
                           ["Procedure reported: MG Screening.", "Overall Assessment: Negative."]])
    one = {key: value[:1] for key, value in text.items()}
    similarity = patch_sentence_similarity(model, pixel_values, one["input_ids"], one["attention_mask"],
                                           one["sentence_positions"], one["sentence_mask"])
    assert one["sentence_mask"].shape[1] == 2 and similarity.shape == (1, 4, 4)  # real sentences only, 56/14
    with torch.no_grad():
        patches, _ = model.get_patch_embeddings(pixel_values)
        sentences, mask = model.get_sentence_embeddings(one["input_ids"], one["attention_mask"],
                                                        one["sentence_positions"], one["sentence_mask"])
    expected = (patches[0] @ sentences[0, 0]).reshape(4, 4).numpy()
    np.testing.assert_allclose(similarity[0], expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(similarity) <= 1 + 1e-5)


def test_upsample_map():
    assert upsample_map(np.full((4, 4), 0.3), 56, 40).shape == (56, 40)
    np.testing.assert_allclose(upsample_map(np.full((4, 4), 0.3), 56, 40), 0.3, rtol=1e-6)
    ramp = upsample_map(np.array([[0.0, 1.0]]), 1, 8)[0]
    assert np.all(np.diff(ramp) >= 0) and ramp[0] < 0.2 and ramp[-1] > 0.8


def test_plot_heat_map_writes_png_atomically(tmp_path):
    image = np.random.default_rng(0).random((60, 48))
    path = plot_heat_map(image, np.random.default_rng(1).random((4, 3)), tmp_path / "map.png", title="a sentence")
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png"]
    with pytest.raises(ValueError, match="2-D patch grid"):
        plot_heat_map(image, np.zeros(5), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_explain_script(pretrained_tiny_mama, synthetic_embed_dataset, tmp_path):
    dicom = sorted((synthetic_embed_dataset.parent / "raw").glob("cohort_*/*/*/*.dcm"))[0]
    explain = load_example("explain")
    summary = explain.main(["--model", str(pretrained_tiny_mama), "--image", str(dicom), "--output_dir",
                            str(tmp_path / "fields"), "--fields", json.dumps({"density": 4, "birads": 1})])
    sentences = [entry["sentence"] for entry in summary["sentences"]]
    assert "Breast composition: The breast is extremely dense." in sentences
    for entry in summary["sentences"]:
        assert (tmp_path / "fields" / entry["file"]).read_bytes()[:8] == PNG
        assert -1 <= entry["mean_similarity"] <= entry["max_similarity"] <= 1
    assert json.loads((tmp_path / "fields" / "summary.json").read_text()) == summary
    plain = explain.main(["--model", str(pretrained_tiny_mama), "--image", str(dicom), "--output_dir",
                          str(tmp_path / "text"), "--report", "Findings: A mass is present. Overall Assessment: Benign."])
    assert [entry["file"] for entry in plain["sentences"]] == ["sentence_00.png", "sentence_01.png"]


@pytest.fixture(scope="module")
def random_tiny_mama(tmp_path_factory, report_tokenizer):
    """A saved tiny MaMA folder with random weights (explain's mechanics need no training)."""
    from modeling_mama import MamaConfig, MamaImageProcessor

    path = tmp_path_factory.mktemp("random-mama")
    torch.manual_seed(0)
    MamaModel(MamaConfig.tiny(vocab_size=len(report_tokenizer), image_size=56)).save_pretrained(path)
    MamaProcessor(MamaImageProcessor(size=56), report_tokenizer).save_pretrained(path)
    return path


def test_explain_scores_heat_maps_against_lesion_boxes(random_tiny_mama, tmp_path):
    from modeling_mama.data.converters.cbis_ddsm import convert_cbis_ddsm
    from modeling_mama.data.synthetic import generate_cbis_ddsm
    from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report
    from modeling_mama.training.metrics import pointing_game

    root = generate_cbis_ddsm(tmp_path / "cbis", num_patients=2, image_size=(144, 112), seed=0, progress=False)
    dataset_dict = convert_cbis_ddsm(root, tmp_path / "data", image_size=96, progress=False)
    split = next(name for name in dataset_dict if len(dataset_dict[name]) and dataset_dict[name][0]["lesion_boxes"])
    row = dataset_dict[split][0]
    explain = load_example("explain")
    model = str(random_tiny_mama)
    summary = explain.main(["--model", model, "--dataset", str(tmp_path / "data"), "--split", split, "--row", "0",
                            "--output_dir", str(tmp_path / "row")])
    assert row["image_id"] in summary["image"] and len(summary["lesion_boxes"]) == len(row["lesion_boxes"])
    own_report = build_report(ReportFields.from_mapping(row, DATASET_COLUMNS))
    sentences = [entry["sentence"] for entry in summary["sentences"]]
    assert sentences and sentences == own_report[:len(sentences)]  # the row's own report (cut to the token budget)
    hits = [entry["pointing_hit"] for entry in summary["sentences"]]
    assert all(0.0 <= hit <= 1.0 for hit in hits) and summary["pointing_game"] == pytest.approx(np.mean(hits))
    # The boxes follow the stored image into the 56 x 56 view: scaled as the processor's crop of it is.
    processor = MamaProcessor.from_pretrained(model)
    geometry = processor.image_processor(row["image"], return_geometry=True)
    assert not bool(geometry["flipped"][0])  # stored images are already chest wall left
    x0, y0, x1, y1 = geometry["crop_boxes"][0].tolist()
    stored, boxes = np.asarray(row["lesion_boxes"]), np.asarray(summary["lesion_boxes"])
    np.testing.assert_allclose(boxes, (stored - [x0, y0, x0, y0]) * ([56 / (x1 - x0), 56 / (y1 - y0)] * 2), atol=1e-4)
    # Each hit is the pointing game of that sentence's map (recomputed from the model here).
    pixel_values = processor.image_processor.preprocess(row["image"], return_tensors="pt")["pixel_values"]
    text = processor(text=[sentences])
    similarity = patch_sentence_similarity(MamaModel.from_pretrained(model).eval(), pixel_values, text["input_ids"],
                                           text["attention_mask"], text["sentence_positions"], text["sentence_mask"])
    expected = pointing_game(list(similarity), [boxes] * len(similarity), image_sizes=(56, 56))["hits"]
    assert hits == pytest.approx(expected)

    # The same image and boxes given by hand (--image --boxes) are placed the same way.
    png = tmp_path / "row.png"
    row["image"].save(png)
    by_hand = explain.main(["--model", model, "--image", str(png), "--boxes", json.dumps(row["lesion_boxes"]),
                            "--fields", json.dumps({"birads": 4}), "--output_dir", str(tmp_path / "hand")])
    np.testing.assert_allclose(by_hand["lesion_boxes"], summary["lesion_boxes"], atol=1e-4)
    assert "pointing_hit" in by_hand["sentences"][0]
    with pytest.raises(SystemExit):
        explain.main(["--model", model, "--image", str(png), "--output_dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        explain.main(["--model", model, "--image", str(png), "--boxes", "[[1, 2, 3]]", "--fields", "{}",
                      "--output_dir", str(tmp_path / "x")])
def test_explain_fields_errors_are_argument_errors(capsys):
    explain = load_example("explain")
    base = ["--model", "m", "--image", "x.dcm", "--output_dir", "out"]
    for fields, message in (("{bad json", "is not valid JSON (Expecting property name enclosed in double quotes"),
                            ("[4]", "is not a JSON object of report fields"),
                            ('{"densty": 4}', "unknown report field(s) densty; the fields are procedure")):
        with pytest.raises(SystemExit) as exit_info:
            explain.main([*base, "--fields", fields])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.replace("\n", " ")
        assert "argument --fields: " in error and message in error
    explain.report_fields('{"density": 4}')  # a good one parses
