"""A browser demo of a trained MaMA: zero-shot scores per view, breast and exam, and where a sentence matches.

    pip install -e ".[demo]"
    python examples/app.py                                   # the model `python examples/pretrain.py` saved
    python examples/app.py --model path/to/mama --port 7860  # or: MAMA_MODEL=path/to/mama python examples/app.py

Upload one mammogram or a four-view exam (DICOM, or PNG / JPEG / TIFF), pick a task and a sentence: the
page shows the processed views (oriented chest wall left, cropped to the breast, as the model sees
them), the class probabilities of every view, of each breast and of the exam (means of the views', as
`examples/predict.py` computes them), and the patch-sentence similarity of the local alignment heads
(SLA) over each view for the sentence (`examples/explain.py`'s heat map).

DICOM files are scored with prompts built from their own header (StudyDescription, PatientAge,
laterality, view); for image files the side and view are read from the file name when it says them
("L-CC.png", "right_MLO.png"), the side otherwise from the pixels.

The module-level `demo` is what a Hugging Face Space (Gradio SDK) runs: put this file in the Space as
`app.py`, `modeling_mama` in its requirements, and the model folder in the Space (or a Hub id) as
MAMA_MODEL. Research software: not a medical device.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.data.dicom_scan import ScanError, read_header
from modeling_mama.dicom import DicomError, read_dicom
from modeling_mama.image_processing_mama import load_mammogram
from modeling_mama.image_utils_mama import IMAGE_SUFFIXES
from modeling_mama.pipelines import ZeroShotScorer, aggregate_scores
from modeling_mama.labels import parse_view
from modeling_mama.reports import (
    CLASS_NAMES, DENSE_BREAST_SENTENCE, ReportFields, density_sentences, findings_sentences, impression_sentences,
)
from modeling_mama.training.visualization import patch_sentence_similarity, plot_heat_map

logger = logging.getLogger("mama-demo")

DEFAULT_MODEL = "outputs/pretrain-demo"
TASKS = {"density": "Breast density (A-D)", "birads": "BI-RADS category (0-6)", "cancer": "Cancer (RSNA prompts)"}
# The sentences the model's reports were built from (METHOD.md section 3), for the heat-map picker.
TEMPLATE_SENTENCES = list(dict.fromkeys(
    [density_sentences(density)[0] for density in (1, 2, 3, 4)] + [DENSE_BREAST_SENTENCE]
    + [sentence for birads in range(7) for sentence in findings_sentences(birads) + impression_sentences(birads)]
))
DEFAULT_SENTENCE = density_sentences(4)[0]
DISCLAIMER = (
    "**Not a medical device.** A research demo of [MaMA](https://arxiv.org/abs/2409.18119) "
    "(mammography vision-language pre-training): the scores are zero-shot similarities to report sentences, "
    "not a diagnosis. Do not use it to make clinical decisions, and do not upload images that identify a person."
)
MAX_VIEWS = 8
# View names trusted in a file name (the rarer codes, such as "AT" or "CV", are ordinary words too).
NAMED_VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM")


class UploadError(ValueError):
    """A file the demo cannot use; the message is shown on the page as it is."""


@dataclass
class View:
    """One uploaded mammogram, ready for the processor."""

    name: str
    image: Any  # a DicomImage or the path of an image file
    laterality: str | None
    laterality_source: str | None
    view: str | None
    view_source: str | None
    fields: ReportFields
    study: str | None = None

    @property
    def caption(self) -> str:
        return f"{self.laterality or '?'} {self.view or '?'} · {self.name}"


# ------------------------------------------------------------------------------------------ inputs
def load_view(path: str | os.PathLike) -> View:
    """Read one upload (DICOM, or an image file) or raise `UploadError` saying what is wrong with it."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            pixels, laterality = load_mammogram(str(path))
        except (OSError, ValueError):
            raise UploadError(f"{name}: not a readable image file.") from None
        if pixels.size == 0 or float(pixels.max()) <= float(pixels.min()):
            raise UploadError(f"{name}: the image is empty (every pixel has the same value).")
        named_side, named_view = _side_and_view_from_name(path.stem)
        side_source = "file name" if named_side else ("pixels" if laterality else None)
        side = named_side or laterality
        return View(name, str(path), side, side_source, named_view, "file name" if named_view else None,
                    ReportFields(laterality=side, view=named_view))
    try:
        record = read_header(path, include_synthesized_2d=True)
    except ScanError as error:
        reason = str(error)
        if reason == "not a DICOM file":
            reason = f"neither a DICOM file nor an image ({', '.join(IMAGE_SUFFIXES)})"
        raise UploadError(f"{name}: {reason}.") from None
    try:
        image = read_dicom(path, refuse_non_mg=True)
    except DicomError as error:
        raise UploadError(f"{name}: {str(error).removeprefix(f'{path}: ')}") from None
    return View(name, image, image.laterality, image.laterality_source, record.view, record.view_source,
                record.report_fields(image.laterality), record.exam_id)


def _side_and_view_from_name(stem: str) -> tuple[str | None, str | None]:
    """("L", "CC") from names such as "L-CC", "exam3_RMLO" or "left craniocaudal"; None where unsaid."""
    side = view = None
    for word in (word for word in re.split(r"[\s_\-.]+", stem) if word):
        if word.upper() in ("L", "LEFT", "R", "RIGHT"):
            side = side or word[0].upper()
            continue
        word_side, word_view = parse_view(word, strict=False)
        if word_view in NAMED_VIEWS:
            side, view = side or word_side, view or word_view
    return side, view


# ------------------------------------------------------------------------------------------ model
class MamaDemo:
    """The model, its processor and one zero-shot scorer per task; `analyse` answers one page request."""

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.model = MamaModel.from_pretrained(model_path).eval()
        self.processor = MamaProcessor.from_pretrained(model_path)
        self.scorers = {task: ZeroShotScorer(self.model, self.processor, task) for task in TASKS}

    def describe(self) -> str:
        config = self.model.config
        size = self.processor.image_processor.size
        datasets = ", ".join(getattr(config, "training_datasets", None) or []) or "not recorded"
        return (f"Model `{self.model_path}`: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters, "
                f"{size['height']}x{size['width']} input, trained on: {datasets}.")

    def pixel_values(self, views: list[View]) -> torch.Tensor:
        """The model inputs of the views (each oriented by its laterality): [N, 3, H, W]."""
        return self.processor(images=[view.image for view in views],
                              laterality=[view.laterality for view in views])["pixel_values"]

    def shown(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the model sees, back in [0, 1] for display: [N, H, W]."""
        image_processor = self.processor.image_processor
        if not image_processor.do_normalize:
            return pixel_values[:, 0]
        return (pixel_values[:, 0] * image_processor.image_std[0] + image_processor.image_mean[0]).clamp(0, 1)

    def scores(self, views: list[View], pixel_values: torch.Tensor, task: str) -> list[dict]:
        """Rows of the score table: every view, then each breast and the exam when there are several views."""
        logits = self.scorers[task].logits(pixel_values, [view.fields for view in views])
        probabilities = logits.float().softmax(dim=-1).cpu().numpy()
        rows = [{"level": "view", "name": view.caption, "scores": row} for view, row in zip(views, probabilities)]
        if len(views) > 1:
            sided = [index for index, view in enumerate(views) if view.laterality]
            if sided:
                breasts, breast_scores = aggregate_scores(probabilities[sided], [views[i].laterality for i in sided])
                for side, row in sorted(zip(breasts, breast_scores), key=lambda pair: pair[0]):
                    count = sum(views[i].laterality == side for i in sided)
                    name = f"{'left' if side == 'L' else 'right'} breast ({count} view{'s' if count > 1 else ''})"
                    rows.append({"level": "breast", "name": name, "scores": row})
            rows.append({"level": "exam", "name": f"exam ({len(views)} views)", "scores": probabilities.mean(axis=0)})
        return rows

    def heat_maps(self, views: list[View], pixel_values: torch.Tensor, sentence: str) -> list[tuple[Image.Image, str]]:
        """The patch-sentence similarity map of `sentence` over each processed view, as images."""
        try:
            text = self.processor(text=[[sentence]])
        except ValueError as error:
            raise UploadError(f"The sentence cannot be used: {error}") from None
        shown = self.shown(pixel_values)
        maps = []
        with tempfile.TemporaryDirectory() as directory:
            for index, view in enumerate(views):
                grid = patch_sentence_similarity(self.model, pixel_values[index:index + 1], text["input_ids"],
                                                 text["attention_mask"], text["sentence_positions"],
                                                 text["sentence_mask"])[0]
                path = plot_heat_map(shown[index].numpy(), grid, Path(directory) / f"{index}.png", title=view.caption)
                with Image.open(path) as picture:
                    maps.append((picture.convert("RGB"), f"{view.caption} · max similarity {grid.max():.2f}"))
        return maps


# ------------------------------------------------------------------------------------------ page
def score_table(rows: list[dict], task: str) -> str:
    """The scores as an HTML table (one row per view / breast / exam; the predicted class in bold)."""
    names = CLASS_NAMES[task]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    body = []
    for row in rows:
        best = int(np.argmax(row["scores"]))
        cells = "".join(
            f'<td data-class="{html.escape(name)}">{"<b>" if k == best else ""}{score:.3f}{"</b>" if k == best else ""}'
            "</td>" for k, (name, score) in enumerate(zip(names, row["scores"])))
        body.append(f'<tr data-level="{row["level"]}"><td>{row["level"]}</td><td>{html.escape(row["name"])}</td>'
                    f'<td class="prediction">{html.escape(names[best])}</td>{cells}</tr>')
    return (f'<table id="score-table"><thead><tr><th>level</th><th>image(s)</th><th>prediction</th>{header}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')


def _as_paths(files) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [getattr(item, "name", item) for item in files]


def analyse(demo_model: MamaDemo | None, load_error: str | None, files, task: str, sentence: str):
    """One request: (status markdown, processed views, exam-level label, score table, heat maps)."""
    empty = (None, None, "", None)
    if demo_model is None:
        return (f"**The model could not be loaded.** {load_error}", *empty)
    paths = _as_paths(files)
    if not paths:
        return ("Upload one mammogram or the four views of an exam (DICOM or PNG).", *empty)
    if len(paths) > MAX_VIEWS:
        return (f"**{len(paths)} files uploaded**: upload one image or one exam (at most {MAX_VIEWS} views).", *empty)
    if task not in TASKS:
        return (f"Pick a task: {', '.join(TASKS)}.", *empty)
    try:
        views, problems = [], []
        for path in paths:
            try:
                views.append(load_view(path))
            except UploadError as error:
                problems.append(str(error))
        notes = [f"**Could not use** {problem}" for problem in problems]
        if not views:
            return ("\n\n".join(notes), *empty)
        studies = {view.study for view in views if view.study}
        if len(studies) > 1:
            notes.append(f"The DICOM files come from {len(studies)} different studies; they are scored as one exam.")
        pixel_values = demo_model.pixel_values(views)
        rows = demo_model.scores(views, pixel_values, task)
        shown = demo_model.shown(pixel_values)
        gallery = [((image.numpy() * 255).round().astype(np.uint8), view.caption) for image, view in zip(shown, views)]
        top = rows[-1]
        label = {name: float(score) for name, score in zip(CLASS_NAMES[task], top["scores"])}
        maps = None
        sentence = (sentence or "").strip()
        if not sentence:
            notes.append("Type a sentence (or pick one from the report template) to see where it matches.")
        else:
            try:
                maps = demo_model.heat_maps(views, pixel_values, sentence)
            except UploadError as error:
                notes.append(f"**{error}**")
        sources = "; ".join(f"{view.name}: side from {view.laterality_source or 'nowhere'}, "
                            f"view from {view.view_source or 'nowhere'}" for view in views)
        status = "\n\n".join([f"Scored {len(views)} view{'s' if len(views) > 1 else ''} for **{TASKS[task]}** "
                              f"({top['name']}: **{html.escape(max(label, key=label.get))}**).", *notes,
                              f"<small>{html.escape(sources)}</small>"])
        return status, gallery, label, score_table(rows, task), maps
    except UploadError as error:
        return (f"**{error}**", *empty)
    except Exception as error:  # the page shows a message, the server log keeps the traceback
        logger.exception("analysis failed")
        return (f"**Something went wrong while analysing the upload** ({type(error).__name__}: {error}).", *empty)


def build_demo(model_path: str) -> gr.Blocks:
    """The page, bound to the model at `model_path` (a folder or a Hub id)."""
    try:
        demo_model, load_error = MamaDemo(model_path), None
    except Exception as error:  # a Space without its model still shows the page and says why
        demo_model = None
        load_error = (f"`{model_path}`: {type(error).__name__}: {error}. Train the demo model with "
                      f"`python examples/pretrain.py`, or point `--model` / MAMA_MODEL at a saved MaMA folder.")
    with gr.Blocks(title="MaMA mammography demo") as demo:
        gr.Markdown("# MaMA: zero-shot mammogram scores and sentence heat maps")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        gr.Markdown(demo_model.describe() if demo_model else f"**The model could not be loaded.** {load_error}",
                    elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="One mammogram or a four-view exam (DICOM, PNG, JPEG, TIFF)",
                                file_count="multiple", type="filepath", elem_id="upload")
                task = gr.Radio(choices=[(label, name) for name, label in TASKS.items()], value="density",
                                label="Task", elem_id="task")
                template = gr.Dropdown(choices=TEMPLATE_SENTENCES, value=None, label="Report template sentences",
                                       elem_id="template")
                sentence = gr.Textbox(value=DEFAULT_SENTENCE, label="Sentence for the heat map", lines=2,
                                      elem_id="sentence")
                run = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="Overall (exam, or the single view)", num_top_classes=7, elem_id="overall")
                table = gr.HTML(elem_id="scores")
        views = gr.Gallery(label="Processed views (as the model sees them)", columns=4, height="auto",
                           elem_id="views", format="png")
        maps = gr.Gallery(label="Patch-sentence similarity (SLA heads) over each view", columns=4, height="auto",
                          elem_id="heatmaps", format="png")
        template.change(lambda chosen, typed: chosen or typed, inputs=[template, sentence], outputs=sentence)
        run.click(lambda *inputs: analyse(demo_model, load_error, *inputs), inputs=[files, task, sentence],
                  outputs=[status, views, label, table, maps])
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("MAMA_MODEL", DEFAULT_MODEL),
                        help=f"A saved MaMA folder or Hub id (default: $MAMA_MODEL, else {DEFAULT_MODEL}).")
    parser.add_argument("--host", default=None, help="Interface to listen on (Gradio's default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="Port (Gradio's default: 7860 or the next free one).")
    return parser.parse_args(argv)


# Imported (a Space, a test) it reads MAMA_MODEL; run as a script it reads the command line too.
args = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
demo = build_demo(args.model)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(server_name=args.host, server_port=args.port)
