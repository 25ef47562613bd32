"""Plots of evaluation results, saved as PNG files next to the JSON metrics.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): nothing opens a window, the
user's pyplot backend and global state are untouched, and plotting works on headless machines and in
worker threads. Every file is written atomically by `save_figure` (temporary file, then os.replace),
so a crash never leaves a half-written PNG behind.

>>> import tempfile, os
>>> path = plot_confusion_matrix([[5, 1], [2, 4]], ["negative", "positive"],
...                              os.path.join(tempfile.mkdtemp(), "cm.png"))
>>> path.name, path.read_bytes()[:4]
('cm.png', b'\\x89PNG')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn import metrics as sk_metrics

from ..file_utils_mama import atomic_path
from .metrics import TARGET_SENSITIVITY, _as_labels, _to_numpy, specificity_at_sensitivity

NORMALIZE_CHOICES = (None, "true", "pred", "all")


# --------------------------------------------------------------------------------------------- files
def new_figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas (off-screen), independent of pyplot."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write `figure` to `path` as PNG atomically (temporary file in the same folder, then os.replace).

    The parent folder is created if needed. Returns the final path.
    """
    path = Path(path)
    # opened with "xb" (not mkstemp, whose 0600 mode would make the PNG private)
    with atomic_path(path) as temporary, open(temporary, "xb") as stream:
        figure.savefig(stream, format="png")
    return path


def _check_class_names(class_names: Sequence[str], num_classes: int, what: str) -> list[str]:
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{what} has {num_classes} classes but {len(class_names)} class_names were given "
                         f"({class_names}).")
    return class_names


# ---------------------------------------------------------------------------------- confusion matrix
def normalize_confusion_matrix(counts: np.ndarray, normalize: str | None) -> np.ndarray:
    """Counts -> fractions over true classes ("true", rows), predictions ("pred", columns) or "all".

    Rows (or columns) without any image stay nan rather than dividing by zero.

    >>> normalize_confusion_matrix(np.array([[3, 1], [0, 0]]), "true").tolist()
    [[0.75, 0.25], [nan, nan]]
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}.")
    counts = counts.astype(np.float64)
    if normalize is None:
        return counts
    totals = {"true": counts.sum(axis=1, keepdims=True), "pred": counts.sum(axis=0, keepdims=True),
              "all": counts.sum(keepdims=True)}[normalize]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], path: str | os.PathLike, title: str | None = None,
                          normalize: str | None = "true") -> Path:
    """Confusion matrix heat map (rows true class, columns predicted class) saved as PNG; returns the path.

    `cm` holds counts, e.g. `classification_metrics(...)["confusion_matrix"]`. With `normalize`
    ("true": each row sums to 1, i.e. the diagonal is per-class recall; "pred"; "all") the colours and
    the first number in each cell are fractions and the count follows in brackets; `None` shows counts.
    """
    counts = _to_numpy(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be a square matrix of counts, got shape {counts.shape}.")
    class_names = _check_class_names(class_names, counts.shape[0], "cm")
    values = normalize_confusion_matrix(counts, normalize)
    num_classes = len(class_names)

    side = 2.5 + 0.6 * num_classes
    figure = new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    finite = values[np.isfinite(values)]
    upper = 1.0 if normalize else max(float(finite.max()) if finite.size else 0.0, 1.0)
    image = axes.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=upper)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction" if normalize else "count")
    for row in range(num_classes):
        for column in range(num_classes):
            value, count = values[row, column], int(counts[row, column])
            if not np.isfinite(value):
                text = "-"
            elif normalize:
                text = f"{value:.2f}\n({count})"
            else:
                text = str(count)
            dark = np.isfinite(value) and value > 0.6 * upper
            axes.text(column, row, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axes.set_xticks(range(num_classes), class_names, rotation=45, ha="right")
    axes.set_yticks(range(num_classes), class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title or ("confusion matrix" + (f" (normalised over {normalize})" if normalize else "")))
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------ ROC curve
def plot_roc(scores: Any, labels: Any, class_names: Sequence[str], path: str | os.PathLike,
             title: str | None = None) -> Path:
    """ROC curve(s) saved as PNG; returns the path.

    `scores` are probabilities: [N, 2] or [N] (positive-class score) for a binary task, one curve of
    class_names[1] with the operating point at 80% sensitivity marked; [N, C] for a multiclass task,
    one one-vs-rest curve per class present in `labels` (absent classes are listed, not drawn) and the
    macro AUC in the title.
    """
    labels = _as_labels(labels)
    scores = _to_numpy(scores).astype(np.float64)
    if scores.ndim == 1:
        scores = np.stack([1.0 - scores, scores], axis=1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores must be [N] or [N, num_classes] with N = {len(labels)} labels, got {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    num_classes = scores.shape[1]
    class_names = _check_class_names(class_names, num_classes, "scores")
    _as_labels(labels, num_classes)

    figure = new_figure(5.5, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    curves = [1] if num_classes == 2 else range(num_classes)
    aucs, absent = [], []
    for c in curves:
        is_class = labels == c
        if is_class.all() or not is_class.any():
            absent.append(class_names[c])
            continue
        false_positive_rate, true_positive_rate, _ = sk_metrics.roc_curve(is_class, scores[:, c])
        aucs.append(sk_metrics.roc_auc_score(is_class, scores[:, c]))
        name = class_names[c] if num_classes == 2 else f"{class_names[c]} vs rest"
        axes.plot(false_positive_rate, true_positive_rate, linewidth=1.5, label=f"{name} (AUC {aucs[-1]:.3f})")
    if num_classes == 2 and aucs:
        specificity, threshold = specificity_at_sensitivity(scores[:, 1], labels, TARGET_SENSITIVITY)
        sensitivity_reached = float(np.mean(scores[labels == 1, 1] >= threshold))  # the point on the curve
        axes.plot([1.0 - specificity], [sensitivity_reached], marker="o", color="black", linestyle="none",
                  label=f"specificity {specificity:.3f} at >= {TARGET_SENSITIVITY:.0%} sensitivity")
    if absent:
        reason = "single class in labels" if num_classes == 2 else "absent from labels"
        axes.plot([], [], linestyle="none", label=f"no curve ({reason}): {', '.join(absent)}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.legend(loc="lower right", fontsize=7)
    default_title = "ROC" if num_classes == 2 else (
        f"one-vs-rest ROC, macro AUC {np.mean(aucs):.3f}" if aucs else "one-vs-rest ROC")
    axes.set_title(title or default_title)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------- heat maps
def patch_sentence_similarity(model, pixel_values, input_ids, attention_mask=None, sentence_positions=None,
                              sentence_mask=None):
    """What SLA aligned: cosine similarity of every patch with every real sentence of one report.

    Takes one image (`pixel_values` [1, 3, H, W]) and one tokenised report; returns a numpy array
    [S, H / patch, W / patch] (one map per real sentence), computed with the model's local heads.
    """
    import torch

    model.eval()
    with torch.no_grad():
        patches, _ = model.get_patch_embeddings(pixel_values)
        sentences, mask = model.get_sentence_embeddings(input_ids, attention_mask, sentence_positions, sentence_mask)
    patch_size = model.config.vision_config.patch_size
    rows, columns = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    similarity = torch.einsum("pd,sd->sp", patches[0], sentences[0][mask[0]])
    return similarity.reshape(-1, rows, columns).cpu().numpy()


def sentence_heat_maps(model, processor, image, sentences: Sequence[str], **image_kwargs
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One patch-sentence similarity map per sentence of a report, over one mammogram.

    One processor call (`processor(images=image, text=[sentences])`) prepares both inputs, as
    everywhere else; `image_kwargs` go to the image processor (e.g. `laterality=`, or
    `do_orient=False, do_crop_to_breast=False` for an image stored by the converters). Returns
    (view, similarity): the preprocessed view the map covers (oriented, breast-cropped, resized;
    [H, W] in [0, 1], for display) and `patch_sentence_similarity`'s maps [S, H / patch, W / patch].
    """
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of sentence strings.")
    inputs = processor(images=image, text=[list(sentences)], mode="global", **image_kwargs)
    pixel_values = inputs["pixel_values"]
    image_processor = processor.image_processor
    view = pixel_values[0, 0].numpy()
    if image_processor.do_normalize:  # back to [0, 1] for display
        view = view * image_processor.image_std[0] + image_processor.image_mean[0]
    similarity = patch_sentence_similarity(model, pixel_values, inputs["input_ids"], inputs["attention_mask"],
                                           inputs["sentence_positions"], inputs["sentence_mask"])
    return view, similarity


def upsample_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a patch-grid map to image size."""
    import torch
    import torch.nn.functional as F

    tensor = torch.as_tensor(values, dtype=torch.float32)[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def plot_heat_map(image: Any, similarity: Any, path: str | os.PathLike, title: str | None = None,
                  alpha: float = 0.45, boxes: Any = ()) -> Path:
    """Overlay a patch-grid similarity map (upsampled) on a grayscale mammogram and save it as PNG.

    `image` is a 2-D array (any range; shown min-max scaled) or a [3, H, W] / [H, W, 3] array;
    `boxes` are lesion boxes (x0, y0, x1, y1) in its pixels, drawn as white outlines.
    """
    image = _to_numpy(image).astype(np.float32)
    if image.ndim == 3:
        image = image.mean(axis=0) if image.shape[0] in (1, 3) else image.mean(axis=-1)
    similarity = _to_numpy(similarity).astype(np.float32)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be a 2-D patch grid, got shape {similarity.shape}.")
    heat = upsample_map(similarity, *image.shape)
    figure = new_figure(5, 5 * image.shape[0] / max(image.shape[1], 1) + 0.4)
    axes = figure.add_subplot()
    span = float(image.max() - image.min()) or 1.0
    axes.imshow((image - image.min()) / span, cmap="gray", vmin=0, vmax=1)
    overlay = axes.imshow(heat, cmap="jet", alpha=alpha)
    figure.colorbar(overlay, ax=axes, fraction=0.046, pad=0.02, label="patch-sentence cosine similarity")
    for x0, y0, x1, y1 in boxes:
        axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.2))
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=8, wrap=True)
    return save_figure(figure, path)
