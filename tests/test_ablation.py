"""examples/ablation.py: the report writer on hand-made results, and a 1-step run of the loss ablation."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_example


def fake_run(variant, seed, value):
    """One run's record as the studies write it (only the numbers the report reads)."""
    pointing = {"trained": value, "untrained": 0.1, "random": 0.05, "num_images": 20}
    return {"variant": variant, "seed": seed, "train_seconds": 60.0 + seed,
            "zero_shot": {"density": {"balanced_accuracy": value, "auc": value + 0.1},
                          "birads": {"balanced_accuracy": 0.2, "auc": 0.6}},
            "detection": {"global": {"auc": 0.5 + 0.01 * seed, "local_auc": 0.5},
                          "tiles": {"auc": value, "local_auc": value - 0.1}},
            "pointing": pointing if variant in ("CLIP", "MaMA") else {"global": pointing, "tiles": pointing}}


def test_report_tables_json_and_plot_from_hand_made_results(tmp_path):
    ablation = load_example("ablation")
    results = {
        "command": "python examples/ablation.py --seeds 0 1", "seeds": [0, 1], "wall_time_seconds": 600.0,
        "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0], "machine": "2 CPU cores",
        "oracle": {"images": 40, "positives": 20, "probe": "logistic regression", "features": "DoG",
                   "inputs": {"global 518": {"auc": 0.52, "ci95": [0.4, 0.64]},
                              "tiles 518": {"auc": 0.97, "ci95": [0.93, 1.0]}}},
        "scale": {"steps": 10, "batch_size": 4, "image_size": 224, "tile_grid": [10, 8], "max_tiles": 8,
                  "pointing_images": 20, "runs": [fake_run("global", 0, 0.6), fake_run("global", 1, 0.7),
                                                  fake_run("tiles", 0, 0.8), fake_run("tiles", 1, 0.9)]},
        "losses": {"steps": 10, "batch_size": 4, "image_size": 56, "pointing_images": 20,
                   "runs": [fake_run("CLIP", 0, 0.5), fake_run("CLIP", 1, 0.7), fake_run("MaMA", 0, 0.9)]},
    }
    paths = ablation.write_reports(results, tmp_path)
    assert json.loads(paths["json"].read_text()) == results
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    markdown = paths["markdown"].read_text()
    assert "| tiles 518 | 0.970 | 0.930-1.000 |" in markdown
    # mean over seeds (min-max); a single seed is shown alone
    assert "| CLIP | clip | 0.600 (0.500-0.700) | 0.700 (0.600-0.800) | 0.200 (0.200-0.200) | 0.600 (0.500-0.700) " \
        in markdown
    assert "| MaMA | all four | 0.900 | 1.000 | 0.200 | 0.900 | 0.100 | 0.050 | 60 |" in markdown
    assert "| tiles | 0.505 (0.500-0.510) | 0.850 (0.800-0.900) | 0.500 (0.500-0.500) | 0.750 (0.700-0.800) |" \
        in markdown
    assert "Seeds: [0, 1] (cells: mean over seeds (min-max)); wall time 10.0 min" in markdown


def test_finding_sentence_prefers_the_calcification_then_the_mass_sentence():
    ablation = load_example("ablation")
    report = ["Breast composition: The breast is heterogeneously dense.",
              "Findings: The mammogram shows that a suspicious abnormality is present.",
              "The mass is Irregular and High density.", "A Clustered Fine pleomorphic calcification is present."]
    assert ablation.finding_sentence(report) == 3
    assert ablation.finding_sentence(report[:3]) == 2
    assert ablation.finding_sentence(report[:2]) == 1
    assert ablation.finding_sentence(report[:1]) is None


class BrightnessModel:
    """A stand-in whose patch embedding is the patch's mean brightness and whose sentence embeddings are 1:
    every sentence's heat map is then the image itself, so it must peak on the brightest spot."""

    def __init__(self, patch_size):
        self.config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=patch_size))

    def eval(self):
        return self

    def get_patch_embeddings(self, pixel_values, *args, **kwargs):
        pooled = F.avg_pool2d(pixel_values[:, :1], self.config.vision_config.patch_size)
        return pooled.flatten(2).transpose(1, 2), None

    def get_sentence_embeddings(self, input_ids, attention_mask=None, sentence_positions=None, sentence_mask=None):
        return torch.ones(*sentence_positions.shape, 1), sentence_mask.bool()


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_pointing_follows_the_lesion_through_flip_crop_and_tiles(report_tokenizer, laterality):
    from modeling_mama import MamaImageProcessor, MamaProcessor

    ablation = load_example("ablation")
    image = np.zeros((300, 240), dtype=np.uint16)
    image[20:280, :160] = 24000  # the breast, chest wall on the left
    image[150:210, 70:150] = 36000  # a brighter lesion, 80 x 60 px
    box = np.array([[70.0, 150.0, 150.0, 210.0]])
    if laterality == "R":  # stored as units store right breasts: mirrored
        image, box = image[:, ::-1].copy(), np.array([[240 - 150.0, 150.0, 240 - 70.0, 210.0]])
    processor = MamaProcessor(MamaImageProcessor(size=112), report_tokenizer)
    target = {"source_path": image, "laterality": laterality, "sentence": 0, "boxes": box,
              "sentences": ["A Clustered Fine pleomorphic calcification is present."]}
    models = {"bright": BrightnessModel(14)}
    on_view = ablation.pointing_scores(models, processor, [target], mode="global")
    assert on_view["bright"] == 1.0 and on_view["num_images"] == 1
    assert on_view["random"] == pytest.approx(80 * 60 / (160 * 260), rel=0.05)  # the lesion's share of the crop
    # Tiles of 28 px at full resolution (2 x 2 patches each), stitched back over the breast crop.
    tiled = ablation.pointing_scores(models, processor, [target], mode="tiles", tile_size=28, tile_grid=[10, 6])
    assert tiled["bright"] == 1.0 and tiled["random"] == pytest.approx(on_view["random"], rel=0.05)
    with pytest.raises(ValueError, match="does not cover the breast"):
        ablation.pointing_scores(models, processor, [target], mode="tiles", tile_size=28, tile_grid=[4, 3])


def test_one_step_loss_ablation_writes_tables_and_resumes(synthetic_embed_dataset, tmp_path):
    ablation = load_example("ablation")
    argv = ["--studies", "losses", "--losses_dataset", str(synthetic_embed_dataset), "--variants", "CLIP", "MaMA",
            "--seeds", "0", "--losses_steps", "1", "--losses_image_size", "56", "--hidden_size", "32",
            "--losses_batch_size", "8", "--losses_tasks", "density", "--pointing_limit", "4",
            "--output_dir", str(tmp_path)]
    results = ablation.main(argv)
    runs = results["losses"]["runs"]
    assert [(run["variant"], run["seed"]) for run in runs] == [("CLIP", 0), ("MaMA", 0)]
    assert results["losses"]["pointing_images"] == 4
    for run in runs:
        pointing = run["pointing"]
        assert pointing["num_images"] == results["losses"]["pointing_images"]
        assert 0.0 <= pointing["trained"] <= 1.0 and 0.0 <= pointing["untrained"] <= 1.0
        assert 0.0 < pointing["random"] < 0.5  # lesion boxes cover a small part of the view
        assert 0.0 <= run["zero_shot"]["density"]["balanced_accuracy"] <= 1.0
    # The CLIP-only run trained no local head: its trained loss never had a local term.
    assert "--local_loss_weight" in runs[0]["argv"] and "--local_loss_weight" not in runs[1]["argv"]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["losses"]["runs"][0]["pointing"] == pytest.approx(runs[0]["pointing"])
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| CLIP | clip |" in markdown and "| MaMA | all four |" in markdown
    assert "BI-RADS" in markdown and "birads" not in runs[0]["zero_shot"]  # not asked for: shown as "-"
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # Finished runs are reused: a second call trains nothing and reports the same numbers.
    run_record = tmp_path / "runs" / "losses" / "CLIP-seed0" / "run.json"
    before = run_record.stat().st_mtime_ns
    again = ablation.main(argv)
    assert run_record.stat().st_mtime_ns == before
    assert again["losses"]["runs"][0]["pointing"] == runs[0]["pointing"]
    # --report_only: runs not finished yet (here +SLA, and seed 1 of every variant) are left out, not trained.
    wider = [*argv[:argv.index("--seeds")], "--seeds", "0", "1", *argv[argv.index("--seeds") + 2:]]
    wider[wider.index("--variants") + 1:wider.index("--variants") + 3] = ["CLIP", "+SLA", "MaMA"]
    partial = ablation.main([*wider, "--report_only"])
    assert [(run["variant"], run["seed"]) for run in partial["losses"]["runs"]] == [("CLIP", 0), ("MaMA", 0)]
    assert sorted(path.name for path in (tmp_path / "runs" / "losses").iterdir()) == ["CLIP-seed0", "MaMA-seed0"]


def test_one_step_scale_study_trains_with_tiles_and_scores_both_inferences(tmp_path):
    from modeling_mama.data.converters.embed import convert_embed
    from modeling_mama.data.synthetic import generate_embed

    ablation = load_example("ablation")
    raw = generate_embed(tmp_path / "raw", num_exams=10, image_size=(224, 176), seed=0, progress=False,
                         microcalcifications=0.5)
    convert_embed(raw, tmp_path / "converted", image_size=224, progress=False)
    argv = ["--studies", "oracle", "scale", "--micro_dataset", str(tmp_path / "converted"), "--seeds", "0",
            "--variants", "tiles", "--scale_steps", "1", "--scale_image_size", "56", "--hidden_size", "32", "--scale_batch_size", "4",
            "--max_tiles", "2", "--pointing_limit", "2", "--output_dir", str(tmp_path / "out")]
    results = ablation.main(argv)
    # The oracle reads the 56 px global view and the full-resolution 56 px tiles (518 exceeds the images).
    oracle = results["oracle"]
    assert set(oracle["inputs"]) == {"global 56", "tiles 56"}
    assert 0.3 * oracle["images"] < oracle["positives"] < 0.7 * oracle["images"]  # half of the breasts
    assert all(0.0 <= value["auc"] <= 1.0 for value in oracle["inputs"].values())
    scale = results["scale"]
    assert scale["tile_grid"] == [4, 4]  # ceil(224 / 56), ceil(176 / 56): the grid covers the image
    runs = {run["variant"]: run for run in scale["runs"]}
    assert set(runs) == {"tiles"}  # the global arm is the same run without these options
    argv_of_run = runs["tiles"]["argv"]
    assert "--tiles" in argv_of_run and argv_of_run[argv_of_run.index("--max_tiles") + 1] == "2"
    for run in runs.values():
        for inference in ("global", "tiles"):
            detection = run["detection"][inference]
            assert detection["images"] > detection["positives"] > 0
            assert 0.0 <= detection["auc"] <= 1.0 and 0.0 <= detection["local_auc"] <= 1.0
            pointing = run["pointing"][inference]
            assert pointing["num_images"] == 2 and 0.0 <= pointing["trained"] <= 1.0
            assert 0.0 < pointing["random"] < 0.2  # a cluster's box is a small part of the breast
    markdown = (tmp_path / "out" / "ablation.md").read_text()
    assert "| tiles |" in markdown and "| global 56 |" in markdown and "| tiles 56 |" in markdown
