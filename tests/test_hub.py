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
