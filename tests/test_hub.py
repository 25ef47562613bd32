"""Model card rendering and the licence guard on pushing weights (METHOD.md section 8)."""

import json

import pytest
from huggingface_hub import ModelCard

from modeling_mama import MamaConfig, MamaModel
from modeling_mama.hub import DatasetLicenseError, check_release_allowed, render_model_card


def test_release_guard_rules():
    check_release_allowed([])
    check_release_allowed(["synthetic", "RSNA-Mammo"])
    with pytest.raises(DatasetLicenseError, match="EMBED.*written permission"):
        check_release_allowed(["synthetic", "EMBED"])
    check_release_allowed(["embed"], acknowledge_data_license=True)


def test_open_data_is_released_with_its_attribution():
    # CBIS-DDSM (CC BY 3.0) and CMMD (CC BY 4.0) may be shared; a local DICOM export may not, unasked.
    check_release_allowed(["cbis_ddsm", "CMMD"])
    with pytest.raises(DatasetLicenseError, match="dicom_folder.*data owner"):
        check_release_allowed(["cmmd", "dicom_folder"])
    check_release_allowed(["dicom_folder"], acknowledge_data_license=True)
    card = ModelCard(str(render_model_card(MamaConfig.tiny(training_datasets=["cbis_ddsm", "cmmd"]))))
    assert card.data.license == "other"  # two licences (cc-by-3.0, cc-by-4.0): the card lists both
    assert "Creative Commons Attribution 3.0" in card.text and "Creative Commons Attribution 4.0" in card.text
    attribution = card.text.split("### Attribution", 1)[1]
    assert "10.7937/K9/TCIA.2016.7O02S9CY" in attribution and "10.7937/tcia.eqde-4b16" in attribution
    assert "Release restriction" not in card.text
    single = ModelCard(str(render_model_card(MamaConfig.tiny(training_datasets=["cmmd"]))))
    assert single.data.license == "cc-by-4.0"
    assert "### Attribution" not in str(render_model_card(MamaConfig.tiny(training_datasets=["EMBED"])))


def test_push_to_hub_refuses_embed_before_any_upload(monkeypatch, tmp_path):
    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["EMBED"]))
    calls = []
    # Any network use would go through these; the guard must fire first.
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: calls.append("create_repo"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda *a, **k: calls.append("create_commit"))
    with pytest.raises(DatasetLicenseError, match="acknowledge_data_license=True"):
        model.push_to_hub("someone/mama-embed")
    assert calls == []


def test_push_to_hub_with_acknowledgement_reaches_the_upload(monkeypatch):
    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["EMBED"]))
    reached = []

    def fake_create_repo(self, repo_id, *args, **kwargs):
        reached.append(repo_id)
        raise RuntimeError("stop here: no network in tests")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    with pytest.raises(RuntimeError, match="stop here"):
        model.push_to_hub("someone/mama-embed", acknowledge_data_license=True)
    assert reached == ["someone/mama-embed"]


def test_card_metadata_and_sections():
    config = MamaConfig.tiny(training_datasets=["EMBED", "synthetic"])
    results = {"zero_shot": {"density": {"balanced_accuracy": 0.61234, "auc": 0.8}}}
    card = render_model_card(config, repo_id="me/mama-tiny", training_args={"learning_rate": 1e-3}, results=results)
    parsed = ModelCard(str(card))  # parses the YAML front matter again
    assert parsed.data.library_name == "transformers"
    assert parsed.data.pipeline_tag == "zero-shot-image-classification"
    assert parsed.data.datasets == ["EMBED", "synthetic"]
    assert parsed.data.license == "other"
    text = parsed.text
    for heading in ("## Intended use", "## Out-of-scope use", "## Training data", "## Training recipe",
                    "## Evaluation results", "## Limitations", "## Citation"):
        assert heading in text
    assert "not a medical device" in text
    assert "| density | zero-shot | balanced_accuracy | 0.612 |" in text
    assert "| learning_rate | 0.001 |" in text
    assert "Release restriction" in text and "2409.18119" in text


def test_save_pretrained_writes_card_with_results(tmp_path):
    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["synthetic"]))
    (tmp_path / "results.json").write_text(json.dumps({"zero_shot": {"birads": {"balanced_accuracy": 0.3}}}))
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "apache-2.0"
    assert "| birads | zero-shot | balanced_accuracy | 0.300 |" in card.text
    assert "trained only on synthetic images" in card.text
    assert not list(tmp_path.glob(".*.tmp"))


REMOTE_SCRIPT = r'''
import json, sys
class HidePackage:
    """modeling_mama is not installed, as far as this process can tell."""
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_mama" or name.startswith("modeling_mama."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, HidePackage())
try:
    import modeling_mama  # noqa: F401
    raise SystemExit("modeling_mama should be hidden")
except ModuleNotFoundError:
    pass
import numpy as np, torch
from PIL import Image
from transformers import AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.fromarray(np.load(sys.argv[2]))
text = processor(text=[["Breast composition: The breast is extremely dense."],
                        ["Breast composition: The breast is almost entirely fat."]])
pixels = processor(images=image)["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values=pixels, input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits_per_image
zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(folder, trust_remote_code=True)
classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
out = classifier(image.convert("RGB"), candidate_labels=["fat", "dense"])
print(json.dumps({"model_class": type(model).__module__, "zero_shot_class": type(zero_shot).__name__,
                  "logits": logits.tolist(), "pipeline": out}))
'''


def test_saved_folder_loads_without_the_package(pretrained_tiny_mama, tmp_path):
    import subprocess
    import sys

    import numpy as np
    import torch
    from PIL import Image

    from modeling_mama import MamaProcessor
    from transformers import pipeline

    config = json.loads((pretrained_tiny_mama / "config.json").read_text())
    assert {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"} <= set(config["auto_map"])
    for name in ("modeling_mama.py", "configuration_mama.py", "losses.py", "processing_mama.py",
                 "image_processing_mama.py", "dicom.py", "reports.py", "tokenization.py"):
        assert (pretrained_tiny_mama / name).exists(), name
    pixels = (np.random.default_rng(0).random((120, 96)) * 60000).astype(np.uint16)
    np.save(tmp_path / "image.npy", pixels)
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    environment = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, str(script), str(pretrained_tiny_mama), str(tmp_path / "image.npy")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["model_class"].startswith("transformers_modules.")
    assert remote["zero_shot_class"] == "MamaModel"
    # The same numbers as with the package installed.
    model = MamaModel.from_pretrained(pretrained_tiny_mama).eval()
    processor = MamaProcessor.from_pretrained(pretrained_tiny_mama)
    image = Image.fromarray(pixels)
    text = processor(text=[["Breast composition: The breast is extremely dense."],
                            ["Breast composition: The breast is almost entirely fat."]])
    pixels_in = processor(images=image)["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels_in, input_ids=text["input_ids"],
                       attention_mask=text["attention_mask"]).logits_per_image
    np.testing.assert_allclose(remote["logits"], logits.numpy(), rtol=1e-5, atol=1e-5)
    local = pipeline("zero-shot-image-classification", model=str(pretrained_tiny_mama))(
        image.convert("RGB"), candidate_labels=["fat", "dense"])
    assert [e["label"] for e in remote["pipeline"]] == [e["label"] for e in local]
    np.testing.assert_allclose([e["score"] for e in remote["pipeline"]], [e["score"] for e in local], atol=1e-5)


def test_trainer_push_paths_are_guarded(tmp_path, monkeypatch):
    from transformers import Trainer

    from modeling_mama import MamaTrainer, MamaTrainingArguments
    from modeling_mama.hub import DatasetLicenseError

    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["EMBED"]))
    uploads = []
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, *a, **k: uploads.append("push"))
    with pytest.raises(DatasetLicenseError):
        MamaTrainer(model=model, args=MamaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                                            push_to_hub=True, hub_model_id="me/x"))
    trainer = MamaTrainer(model=model, args=MamaTrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                  report_to="none"))
    with pytest.raises(DatasetLicenseError):
        trainer.push_to_hub()
    assert uploads == []
    trainer.args.acknowledge_data_license = True
    trainer.push_to_hub()
    assert uploads == ["push"]
