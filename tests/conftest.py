"""Shared test fixtures: everything offline, tiny and generated."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------- tiny training data
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

TINY_IMAGE = (64, 52)


def _schema_rows(num_exams: int, seed: int = 0):
    """Rows in the converters' schema (DESIGN.md), with synthetic pixels whose density follows the label."""
    from modeling_mama.data.synthetic import render_mammogram

    rng = np.random.default_rng(seed)
    rows = []
    for exam in range(num_exams):
        density = 1 + exam % 4
        birads = [1, 2, 4][exam % 3]
        for laterality in ("L", "R"):
            for view in ("CC", "MLO"):
                pixels = render_mammogram(rng, height=TINY_IMAGE[0], width=TINY_IMAGE[1], laterality=laterality,
                                          view=view, density=density, findings=[])
                if laterality == "R":
                    pixels = pixels[:, ::-1]  # stored chest-wall-left, as the converters write it
                rows.append({
                    "patient_id": f"p{exam}", "exam_id": f"e{exam}", "image_id": f"e{exam}-{laterality}{view}",
                    "laterality": laterality, "view": view, "source_path": "",
                    "image": Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint16)),
                    "procedure": "MG Screening Bilateral", "reason": "screening", "race": "White",
                    "ethnicity": "Non-Hispanic or Latino", "age": 50 + exam, "image_type": "2D",
                    "density": density, "report_density": density, "birads": birads, "report_birads": birads,
                    "mass_shape": None, "mass_density": None, "calc_find": None, "calc_distribution": None,
                    "cancer": int(birads >= 4),
                })
    return rows


@pytest.fixture(scope="session")
def tiny_dataset():
    """24 images (6 exams x 4 views) in the converted-dataset schema."""
    import datasets

    rows = _schema_rows(6)
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    features = datasets.Features({
        key: (datasets.Image() if key == "image" else
              datasets.Value("int64") if key in ("age", "density", "report_density", "birads", "report_birads", "cancer")
              else datasets.Value("string"))
        for key in columns
    })
    return datasets.Dataset.from_dict(columns, features=features)


@pytest.fixture(scope="session")
def report_tokenizer():
    """An offline byte-level BPE tokenizer trained on generated reports, with MaMA's special tokens."""
    from modeling_mama.training.multiview import report_fields_from_row
    from modeling_mama.reports import build_report, zero_shot_prompts
    from modeling_mama.tokenization import train_report_tokenizer

    sentences = [s for row in _schema_rows(4, seed=1) for s in build_report(report_fields_from_row(row))]
    for task in ("birads", "density", "cancer"):
        sentences += [s for prompt in zero_shot_prompts(task) for s in prompt]
    return train_report_tokenizer(sentences, vocab_size=1000)


# ------------------------------------------------------------------- synthetic EMBED + pre-trained model
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def load_example(name: str):
    """Import examples/<name>.py as a module (the examples are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic_embed_dataset(tmp_path_factory):
    """A converted synthetic EMBED look-alike (40 exams, 2D images stored at 128 px)."""
    from modeling_mama.data.converters.embed import convert_embed
    from modeling_mama.data.synthetic import generate_embed

    root = tmp_path_factory.mktemp("synthetic-embed")
    generate_embed(root / "raw", num_exams=40, image_size=(160, 128), seed=0, progress=False)
    convert_embed(root / "raw", root / "converted", image_size=128, seed=0, progress=False)
    return root / "converted"


PRETRAIN_TEST_ARGUMENTS = [
    "--preset", "tiny", "--image_size", "56", "--hidden_size", "32", "--num_train_epochs", "30",
    "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--weight_decay", "0.05", "--warmup_steps", "5",
    "--lr_scheduler_type", "cosine", "--late_loss_step", "40", "--augmentation", "mild", "--logging_steps", "20",
    "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0",
    "--disable_tqdm", "true", "--eval_tasks", "density",
]


@pytest.fixture(scope="session")
def pretrained_tiny_mama(synthetic_embed_dataset, tmp_path_factory):
    """A tiny MaMA folder (model, processor, card, results.json) pre-trained by examples/pretrain.py."""
    out = tmp_path_factory.mktemp("pretrained-mama")
    load_example("pretrain").main(["--dataset", str(synthetic_embed_dataset), "--output_dir", str(out),
                                   *PRETRAIN_TEST_ARGUMENTS])
    return out


@pytest.fixture(scope="session")
def tiny_mama_folder(report_tokenizer, tmp_path_factory):
    """An untrained tiny MaMA folder (model + processor, 56 px), saved in about a second."""
    from modeling_mama import MamaConfig, MamaImageProcessor, MamaModel, MamaProcessor

    folder = tmp_path_factory.mktemp("tiny-mama")
    config = MamaConfig.tiny(vocab_size=len(report_tokenizer), image_size=56,
                             sentence_separator_token_id=report_tokenizer.sep_token_id)
    MamaModel(config).save_pretrained(folder)
    MamaProcessor(MamaImageProcessor(size={"height": 56, "width": 56}), report_tokenizer).save_pretrained(folder)
    return folder
