"""Model card rendering and the licence guard on pushing weights (METHOD.md section 8)."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from modeling_mama import MamaConfig, MamaForImageClassification, MamaModel
from modeling_mama.hub import (
    DatasetLicenseError,
    check_release_allowed,
    merge_datasets,
    normalize_datasets,
    recorded_datasets,
    render_model_card,
)


def test_release_guard_rules():
    check_release_allowed([])
    check_release_allowed(["synthetic", "RSNA-Mammo", "CBIS-DDSM", "cmmd"])
    with pytest.raises(DatasetLicenseError, match="embed.*written permission"):
        check_release_allowed(["synthetic", "EMBED"])
    check_release_allowed(["embed"], acknowledge_data_license=True)
    # A string is one name, not a list of letters; every spelling of EMBED (and a hospital's data) is caught.
    for name in ("EMBED", "Emory EMBED", "embed-open-data", "EMBED_v2", "EMBED+CMMD", "dicom_folder"):
        with pytest.raises(DatasetLicenseError):
            check_release_allowed(name)
    with pytest.raises(TypeError, match="expected dataset names"):
        check_release_allowed([["EMBED"]])


def test_dataset_names_are_normalised_and_merged():
    assert normalize_datasets("EMBED") == ["embed"]
    assert normalize_datasets("cbis_ddsm, CMMD") == ["cbis_ddsm", "cmmd"]
    assert normalize_datasets(["my-hospital-2024", "RSNA-Mammo", "vindr-mammo", "my-data", " my-data "]) == [
        "dicom_folder", "rsna", "vindr", "my-data"]
    assert merge_datasets(["embed"], "CBIS-DDSM", None) == ["embed", "cbis_ddsm"]
    assert MamaConfig.tiny(training_datasets="EMBED").training_datasets == ["embed"]
    assert MamaConfig.tiny(training_datasets=None).training_datasets == []


def test_recorded_datasets_read_conversion_json(tmp_path, caplog):
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "conversion.json").write_text(json.dumps({"converter": "embed", "dataset": "embed"}))
    assert recorded_datasets(converted) == ["embed"]
    (converted / "conversion.json").write_text(json.dumps({"converter": "embed", "dataset": "synthetic"}))
    assert recorded_datasets(converted) == ["synthetic"]
    foreign = tmp_path / "Hand-Made"
    foreign.mkdir()
    with caplog.at_level("WARNING"):
        assert recorded_datasets(foreign) == ["Hand-Made"]
    assert "terms not recorded" in caplog.text


# ------------------------------------------------------------------------------ every upload path
HUB_METHODS = ("create_repo", "create_commit", "upload_folder", "upload_file", "create_branch",
               "preupload_lfs_files", "model_info")


@pytest.fixture
def hub(monkeypatch):
    """Records every Hub call instead of making it; uploads keep the README.md they would send."""
    import huggingface_hub
    from huggingface_hub import RepoUrl

    calls, cards = [], []

    def record(name):
        def fake(self, *args, **kwargs):
            calls.append(name)
            if name == "create_repo":
                repo_id = kwargs.get("repo_id", args[0] if args else None)
                return RepoUrl(f"https://huggingface.co/{repo_id}")
            if name == "create_commit":
                for operation in kwargs["operations"]:
                    if operation.path_in_repo == "README.md":
                        cards.append(Path(operation.path_or_fileobj).read_text())
            if name == "upload_folder":
                readme = Path(kwargs["folder_path"]) / "README.md"
                cards.append(readme.read_text() if readme.exists() else "")
            return None
        return fake

    for name in HUB_METHODS:
        monkeypatch.setattr(huggingface_hub.HfApi, name, record(name))
    # The Hub already holds a generic card for the repo: what transformers would otherwise upload.
    monkeypatch.setattr(huggingface_hub.ModelCard, "load",
                        classmethod(lambda cls, *a, **k: calls.append("card") or ModelCard("generic card")))
    return calls, cards


def _processor(training_datasets):
    from modeling_mama import MamaImageProcessor, MamaProcessor
    from modeling_mama.tokenization import train_report_tokenizer

    tokenizer = train_report_tokenizer(["Overall Assessment: Negative."] * 20, vocab_size=300)
    return MamaProcessor(MamaImageProcessor(size=28, training_datasets=training_datasets), tokenizer,
                         training_datasets=training_datasets)


def _upload_paths(tmp_path):
    """Every way the package's objects reach the Hub, as (name, call(obj, **acknowledgement))."""
    return [
        ("model.push_to_hub", "model", lambda m, **k: m.push_to_hub("me/x", **k)),
        ("model.save_pretrained(push_to_hub=True)", "model",
         lambda m, **k: m.save_pretrained(str(tmp_path / "m"), push_to_hub=True, repo_id="me/x", **k)),
        ("processor.push_to_hub", "processor", lambda p, **k: p.push_to_hub("me/x", **k)),
        ("processor.save_pretrained(dir, True)", "processor",
         lambda p, **k: p.save_pretrained(str(tmp_path / "p"), True, repo_id="me/x", **k)),
        ("image_processor.push_to_hub", "processor", lambda p, **k: p.image_processor.push_to_hub("me/x", **k)),
        ("image_processor.save_pretrained(push_to_hub=True)", "processor",
         lambda p, **k: p.image_processor.save_pretrained(str(tmp_path / "i"), push_to_hub=True, repo_id="me/x", **k)),
    ]


@pytest.mark.parametrize("model_class", [MamaModel, MamaForImageClassification])
@pytest.mark.parametrize("data", ["EMBED", "dicom_folder"])
def test_every_upload_path_refuses_before_any_network_call(model_class, data, hub, tmp_path):
    calls, _ = hub
    objects = {"model": model_class(MamaConfig.tiny(vocab_size=64, training_datasets=[data, "cmmd"])),
               "processor": _processor([data])}
    for name, kind, upload in _upload_paths(tmp_path):
        with pytest.raises(DatasetLicenseError, match="acknowledge_data_license=True"):
            upload(objects[kind])
        assert calls == [], name
    # With the acknowledgement each path goes on to the Hub.
    for name, kind, upload in _upload_paths(tmp_path):
        calls.clear()
        upload(objects[kind], acknowledge_data_license=True)
        assert calls[0] == "create_repo" and "create_commit" in calls, name


def test_cc_by_weights_are_pushed_with_the_attribution_in_the_card(hub, tmp_path):
    calls, cards = hub
    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["cbis_ddsm", "CMMD"]))
    model.push_to_hub("me/mama-open")
    model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/mama-open")
    assert calls.count("create_commit") == 2 and len(cards) == 2
    for text in cards:
        card = ModelCard(text)
        assert card.data.license == "other" and card.data.datasets == ["cbis_ddsm", "cmmd"]
        assert "generic card" not in text
        assert "### Attribution" in text
        assert "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY" in text and "CC BY 3.0" in text
        assert "https://doi.org/10.7937/tcia.eqde-4b16" in text and "CC BY 4.0" in text
        assert "10.1038/sdata.2017.177" in text and "10.1007/s10278-013-9622-7" in text  # paper, TCIA
        assert "Release restriction" not in text
    single = ModelCard(str(render_model_card(MamaConfig.tiny(training_datasets=["cmmd"]))))
    assert single.data.license == "cc-by-4.0"


def test_trainer_upload_paths_are_guarded(hub, tmp_path):
    from modeling_mama import MamaTrainer, MamaTrainingArguments
    from modeling_mama.training.finetuning import BalancedTrainer, ClassificationTrainingArguments

    calls, cards = hub
    cases = [
        (MamaTrainer, MamaTrainingArguments, MamaModel),
        (BalancedTrainer, ClassificationTrainingArguments, MamaForImageClassification),
    ]
    for trainer_class, arguments_class, model_class in cases:
        model = model_class(MamaConfig.tiny(vocab_size=64, training_datasets=["Emory EMBED"]))

        def arguments(**kwargs):
            return arguments_class(output_dir=str(tmp_path / trainer_class.__name__), use_cpu=True, report_to="none",
                                   hub_model_id="me/x", **kwargs)

        with pytest.raises(DatasetLicenseError):
            trainer_class(model=model, args=arguments(push_to_hub=True))
        trainer = trainer_class(model=model, args=arguments())
        with pytest.raises(DatasetLicenseError):
            trainer.push_to_hub()
        with pytest.raises(DatasetLicenseError):
            trainer._push_from_checkpoint(str(tmp_path))  # what a save with push_to_hub=True calls
        with pytest.raises(DatasetLicenseError):
            trainer.init_hf_repo()
        assert calls == [], trainer_class.__name__
        trainer_class(model=model, args=arguments(push_to_hub=True, acknowledge_data_license=True))
        assert calls == ["create_repo"]
        calls.clear()

    # CC BY data: the Trainer's push uploads the package's card, with the attribution.
    model = MamaModel(MamaConfig.tiny(vocab_size=64, training_datasets=["cbis_ddsm"]))
    trainer = MamaTrainer(model=model, args=MamaTrainingArguments(output_dir=str(tmp_path / "open"), use_cpu=True,
                                                                  report_to="none", hub_model_id="me/open"))
    trainer.push_to_hub()
    assert calls[0] == "create_repo" and "upload_folder" in calls
    card = ModelCard(cards[-1])
    assert card.data.license == "cc-by-3.0" and "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY" in card.text


def test_card_metadata_and_sections():
    config = MamaConfig.tiny(training_datasets=["EMBED", "synthetic"])
    results = {"zero_shot": {"density": {"balanced_accuracy": 0.61234, "auc": 0.8}}}
    card = render_model_card(config, repo_id="me/mama-tiny", training_args={"learning_rate": 1e-3}, results=results)
    parsed = ModelCard(str(card))  # parses the YAML front matter again
    assert parsed.data.library_name == "transformers"
    assert parsed.data.pipeline_tag == "zero-shot-image-classification"
    assert parsed.data.datasets == ["embed", "synthetic"]
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
