"""Evaluation metrics for mammography classification and image-report retrieval (METHOD.md section 7).

Every function takes what the model says first and the truth second (`scores, labels`), accepts
numpy arrays, lists or torch tensors, and returns plain Python numbers so results go straight to JSON.
Class scores are ONE softmax of the logits: the reference applied softmax twice, which flattens
the scores towards uniform and changes multiclass AUC and pF1 (METHOD.md, **Fix**).

Undefined values are `nan`, never an exception: a class absent from the labels has no recall and no
one-vs-rest AUC; it is left out of the macro averages (balanced accuracy, macro AUC).

>>> result = classification_metrics([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]], [0, 1, 1], num_classes=2)
>>> result["balanced_accuracy"], result["sensitivity"], result["specificity"]
(0.75, 0.5, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as sk_metrics

from ..pipelines import aggregate_scores

METRIC_MODULE_PATH = Path(__file__).parent / "metric" / "mama_metrics.py"
TARGET_SENSITIVITY = 0.8  # the operating point reported for RSNA cancer (specificity at 80% sensitivity)


# ------------------------------------------------------------------------------------------- inputs
def _to_numpy(values: Any) -> np.ndarray:
    """numpy view of a list, array or torch tensor (bf16 and GPU tensors included)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = values.double() if values.is_floating_point() else values
        return values.numpy()
    return np.asarray(values)


def _as_labels(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Integer class indices, checked against `num_classes`."""
    labels = _to_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class indices, got shape {labels.shape}.")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("labels must be whole class indices; drop unlabelled (None/NaN) rows before scoring.")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"label {bad} is outside 0..{num_classes - 1} (num_classes={num_classes}); "
                         "drop ignored rows (e.g. -100) or fix num_classes.")
    return labels


def _as_scores(scores: Any, num_samples: int, num_classes: int) -> np.ndarray:
    """Float [N, num_classes] scores, finite."""
    scores = _to_numpy(scores).astype(np.float64)
    if scores.shape != (num_samples, num_classes):
        raise ValueError(f"scores must have shape (num_samples, num_classes) = ({num_samples}, {num_classes}), "
                         f"got {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    return scores


def _as_positive_scores(positive_scores: Any, labels: np.ndarray) -> np.ndarray:
    """Float [N] positive-class scores, finite, one per label."""
    positive_scores = _to_numpy(positive_scores).astype(np.float64)
    if positive_scores.shape != labels.shape:
        raise ValueError(f"positive_scores must have one score per label: shape {positive_scores.shape} "
                         f"vs labels {labels.shape}.")
    if not np.all(np.isfinite(positive_scores)):
        raise ValueError("positive_scores contain NaN or infinite values.")
    return positive_scores


def softmax_scores(logits: Any) -> np.ndarray:
    """Class probabilities: one softmax over the last axis (float64, numerically stable).

    >>> softmax_scores([[0.0, 0.0], [0.0, np.log(3.0)]]).round(6).tolist()
    [[0.5, 0.5], [0.25, 0.75]]
    """
    logits = _to_numpy(logits).astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------ thresholded metrics
def confusion_matrix(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]: rows are true classes, columns predicted classes.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], num_classes=3).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    """
    labels = _as_labels(labels, num_classes)
    predictions = _as_labels(predictions, num_classes)
    return sk_metrics.confusion_matrix(labels, predictions, labels=np.arange(num_classes))


def per_class_accuracy(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Recall of each class (fraction of its images predicted as it); nan for a class absent from labels.

    >>> per_class_accuracy([0, 1, 1], [0, 0, 1], num_classes=3).tolist()
    [0.5, 1.0, nan]
    """
    counts = confusion_matrix(predictions, labels, num_classes)
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(counts) / support, np.nan)


def balanced_accuracy(predictions: Any, labels: Any) -> float:
    """Mean per-class recall over the classes present in labels (scikit-learn's definition).

    >>> balanced_accuracy([0, 1, 1], [0, 0, 1])
    0.75
    """
    labels = _as_labels(labels)
    predictions = _as_labels(predictions)
    with warnings.catch_warnings():
        # predicting a class that no image has is legitimate here; it simply earns no recall
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(sk_metrics.balanced_accuracy_score(labels, predictions))


def sensitivity_specificity(predictions: Any, labels: Any) -> tuple[float, float]:
    """Binary (class 1 = positive): sensitivity TP/(TP+FN) and specificity TN/(TN+FP); nan when undefined.

    >>> sensitivity_specificity([1, 0, 0, 1], [1, 1, 0, 0])
    (0.5, 0.5)
    """
    (true_negative, false_positive), (false_negative, true_positive) = confusion_matrix(predictions, labels, 2)
    positives, negatives = true_positive + false_negative, true_negative + false_positive
    sensitivity = true_positive / positives if positives else float("nan")
    specificity = true_negative / negatives if negatives else float("nan")
    return float(sensitivity), float(specificity)


# ---------------------------------------------------------------------------------- ranking metrics
def _binary_auc(positive_scores: np.ndarray, is_positive: np.ndarray) -> float:
    """ROC AUC of one score against one binary truth; nan when only one side is present."""
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(sk_metrics.roc_auc_score(is_positive, positive_scores))


def auc_per_class(scores: Any, labels: Any) -> np.ndarray:
    """One-vs-rest ROC AUC of each class (score column c against label == c); nan for an absent class.

    >>> auc_per_class([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]], [0, 1, 0]).tolist()
    [1.0, 1.0, nan]
    """
    labels = _as_labels(labels)
    scores = _to_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (num_samples, num_classes), got shape {scores.shape}.")
    scores = _as_scores(scores, len(labels), scores.shape[1])
    return np.array([_binary_auc(scores[:, c], labels == c) for c in range(scores.shape[1])])


def auc_score(scores: Any, labels: Any) -> float:
    """Binary: AUC of the positive-class score (column 1). Multiclass: macro one-vs-rest AUC.

    Classes absent from the labels have no one-vs-rest AUC and are left out of the macro mean; with
    every class present this equals `roc_auc_score(labels, scores, multi_class="ovr", average="macro")`.
    nan when no class can be scored (all labels the same).

    >>> auc_score([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]], [0, 1, 0])
    0.5
    """
    per_class = auc_per_class(scores, labels)
    if len(per_class) == 2:
        return float(per_class[1])
    if np.all(np.isnan(per_class)):
        return float("nan")
    return float(np.nanmean(per_class))


def specificity_at_sensitivity(positive_scores: Any, labels: Any,
                               sensitivity: float = TARGET_SENSITIVITY) -> tuple[float, float]:
    """Best specificity among thresholds reaching at least `sensitivity`, and that threshold.

    An image is called positive when its score is >= the threshold. Conservative on purpose: no
    interpolation between operating points, so the sensitivity reached is never below the target.
    (nan, nan) when labels lack positives or negatives.

    >>> specificity_at_sensitivity([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0])  # 3/3 found at 0.6
    (0.6666666666666667, 0.6)
    """
    labels = _as_labels(labels, 2)
    positive_scores = _as_positive_scores(positive_scores, labels)
    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    false_positive_rate, true_positive_rate, thresholds = sk_metrics.roc_curve(
        labels, positive_scores, drop_intermediate=False)
    # false_positive_rate never decreases along the curve: the first point reaching the target is the best
    first = int(np.argmax(true_positive_rate >= sensitivity - 1e-12))
    return float(1.0 - false_positive_rate[first]), float(thresholds[first])


def probabilistic_f1(positive_scores: Any, labels: Any, beta: float = 1.0) -> float:
    """RSNA screening challenge probabilistic F-beta (pF1 for beta = 1).

    Scores are clipped to [0, 1]. pTP = sum of scores over positives, pFP = sum over negatives;
    precision = pTP / (pTP + pFP), recall = pTP / #positives. 0 when precision or recall is 0 (as in
    the challenge's reference code); nan when there is no positive.

    >>> round(probabilistic_f1([0.8, 0.4, 0.2, 0.6], [1, 1, 0, 0]), 6)  # pTP 1.2, pFP 0.8: P 0.6, R 0.6
    0.6
    """
    labels = _as_labels(labels, 2)
    positive_scores = np.clip(_as_positive_scores(positive_scores, labels), 0.0, 1.0)
    num_positives = int(labels.sum())
    if num_positives == 0:
        return float("nan")
    probabilistic_tp = positive_scores[labels == 1].sum()
    probabilistic_fp = positive_scores[labels == 0].sum()
    if probabilistic_tp == 0:
        return 0.0
    precision = probabilistic_tp / (probabilistic_tp + probabilistic_fp)
    recall = probabilistic_tp / num_positives
    return float((1 + beta**2) * precision * recall / (beta**2 * precision + recall))


# ------------------------------------------------------------------------------------ all together
def classification_metrics(logits_or_scores: Any, labels: Any, *, num_classes: int,
                           from_logits: bool = True) -> dict[str, Any]:
    """Every classification metric of METHOD.md section 7, as a JSON-ready dict.

    `logits_or_scores` is [N, num_classes]; with `from_logits=True` the scores are one softmax of it,
    otherwise it must already hold scores in [0, 1] (e.g. `softmax_scores(logits)`, or aggregated
    breast-level scores). The prediction is the argmax (ties go to the lower class index).

    Keys: num_samples, class_counts, accuracy, balanced_accuracy, per_class_accuracy, auc,
    auc_per_class, confusion_matrix (rows true, columns predicted); for binary tasks also
    sensitivity, specificity, specificity_at_80_sensitivity, threshold_at_80_sensitivity, pf1.
    Classes absent from labels appear as nan in the per-class lists.

    >>> result = classification_metrics([[0.1, 0.9], [0.6, 0.4]], [1, 1], num_classes=2, from_logits=False)
    >>> result["sensitivity"], round(result["pf1"], 4), result["auc"]  # pF1: P 1, R 1.3/2 = 0.65
    (0.5, 0.7879, nan)
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    labels = _as_labels(labels, num_classes)
    if labels.size == 0:
        raise ValueError("classification_metrics needs at least one labelled sample.")
    values = _as_scores(logits_or_scores, len(labels), num_classes)
    if from_logits:
        scores = softmax_scores(values)
    else:
        if values.min() < -1e-6 or values.max() > 1 + 1e-6:
            raise ValueError("from_logits=False expects scores in [0, 1], but got values outside it; "
                             "pass from_logits=True to apply the softmax to logits.")
        scores = values
    predictions = scores.argmax(axis=1)
    per_class_auc = auc_per_class(scores, labels)

    result: dict[str, Any] = {
        "num_samples": int(len(labels)),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "accuracy": float(np.mean(predictions == labels)),
        "balanced_accuracy": balanced_accuracy(predictions, labels),
        "per_class_accuracy": per_class_accuracy(predictions, labels, num_classes).tolist(),
        "auc": auc_score(scores, labels),
        "auc_per_class": per_class_auc.tolist(),
        "confusion_matrix": confusion_matrix(predictions, labels, num_classes).tolist(),
    }
    if num_classes == 2:
        sensitivity, specificity = sensitivity_specificity(predictions, labels)
        specificity_at_80, threshold_at_80 = specificity_at_sensitivity(scores[:, 1], labels, TARGET_SENSITIVITY)
        result.update(sensitivity=sensitivity, specificity=specificity,
                      specificity_at_80_sensitivity=specificity_at_80,
                      threshold_at_80_sensitivity=threshold_at_80,
                      pf1=probabilistic_f1(scores[:, 1], labels))
    return result


# ---------------------------------------------------------------------------------------- retrieval
def _group_codes(row_groups: Any, column_groups: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes such that row i matches column j iff their codes are equal (any hashable ids)."""
    row_groups, column_groups = np.asarray(row_groups, dtype=object), np.asarray(column_groups, dtype=object)
    codes, _ = pd.factorize(np.concatenate([row_groups, column_groups]))
    return codes[: len(row_groups)], codes[len(row_groups):]


def _recall_at_k(similarity: np.ndarray, query_codes: np.ndarray, candidate_codes: np.ndarray,
                 ks: Sequence[int], direction: str, chunk: int = 1024) -> dict[str, float]:
    """Fraction of queries (rows) with a correct candidate (column) within the top k.

    Ties count against the query: the rank is 1 + the number of wrong candidates scoring at least as
    high as the best correct one, so a constant similarity matrix earns nothing.
    """
    ranks = np.empty(len(query_codes), dtype=np.int64)
    for start in range(0, len(query_codes), chunk):  # chunks bound memory for large test sets
        rows = similarity[start:start + chunk]
        correct = query_codes[start:start + chunk, None] == candidate_codes[None, :]
        missing = np.flatnonzero(~correct.any(axis=1))
        if missing.size:
            raise ValueError(f"{direction}: query {start + missing[0]} has no matching candidate; every "
                             "row and every column needs at least one match in groups/column_groups.")
        best_correct = np.where(correct, rows, -np.inf).max(axis=1)
        ranks[start:start + chunk] = 1 + np.sum(~correct & (rows >= best_correct[:, None]), axis=1)
    return {f"{direction}_recall@{k}": float(np.mean(ranks <= k)) for k in ks}


def retrieval_accuracy(logits_per_image: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k image->report and report->image accuracy in a batch whose pairs lie on the diagonal (the
    training logs' in-batch figure, on the logits' device: no host sync per step). `retrieval_metrics`
    is the dataset-level version (numpy, groups of equivalent reports, ties against the query); on a
    batch without ties the two agree."""
    k = min(k, logits_per_image.shape[0])
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    image_to_text = (logits_per_image.topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean()
    text_to_image = (logits_per_image.t().topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean()
    return image_to_text, text_to_image


def retrieval_metrics(similarity: Any, ks: Sequence[int] = (1, 5, 10), groups: Any = None,
                      column_groups: Any = None) -> dict[str, float]:
    """Recall@k image->report (rows as queries) and report->image (columns as queries).

    `similarity` is [num_images, num_reports]. By default row i's only correct column is i. With
    `groups` (one id per image: exam id, report index, any hashable) image i matches report j iff
    `groups[i] == column_groups[j]`; `column_groups` defaults to `groups` for a square matrix
    (several images of one exam sharing one report text are then all correct for each other).
    Several images sharing ONE report column: `groups=report_index_per_image,
    column_groups=range(num_reports)`. A query is a hit at k when any correct candidate ranks
    within the top k; ties are counted against the query (see `_recall_at_k`).

    >>> retrieval_metrics([[0.9, 0.1], [0.8, 0.2]], ks=(1,))
    {'image_to_report_recall@1': 0.5, 'report_to_image_recall@1': 1.0}
    >>> retrieval_metrics([[0.9, 0.1], [0.8, 0.2]], ks=(1,), groups=["exam1", "exam1"])
    {'image_to_report_recall@1': 1.0, 'report_to_image_recall@1': 1.0}
    """
    similarity = _to_numpy(similarity).astype(np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be 2-D (num_images, num_reports), got shape {similarity.shape}.")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity contains NaN or infinite values.")
    num_images, num_reports = similarity.shape
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}.")
    if groups is None and column_groups is None:
        if num_images != num_reports:
            raise ValueError(f"similarity is {num_images}x{num_reports}: a non-square matrix needs groups "
                             "and column_groups saying which report belongs to which image.")
        groups = column_groups = np.arange(num_images)
    elif column_groups is None:
        if num_images != num_reports:
            raise ValueError(f"similarity is {num_images}x{num_reports}: pass column_groups (one id per report) "
                             "as well as groups (one id per image).")
        column_groups = groups
    elif groups is None:
        raise ValueError("column_groups was given without groups (one id per image).")
    if len(groups) != num_images or len(column_groups) != num_reports:
        raise ValueError(f"groups has {len(groups)} ids and column_groups {len(column_groups)}, but similarity "
                         f"is {num_images}x{num_reports} (one id per image row, one per report column).")
    image_codes, report_codes = _group_codes(groups, column_groups)
    result = _recall_at_k(similarity, image_codes, report_codes, ks, "image_to_report")
    result.update(_recall_at_k(similarity.T, report_codes, image_codes, ks, "report_to_image"))
    return result


def breast_level(scores: Any, labels: Any, patient_ids: Any, lateralities: Any,
                 how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-level scores and labels -> breast-level, as in the RSNA challenge.

    A breast is (patient_id, laterality) with id "{patient_id}_{laterality}" (RSNA's prediction_id).
    Scores are aggregated with `aggregate_scores(how=...)`; a breast's label is the highest label of
    its images (cancer: positive if any image is; RSNA labels are per breast, so they agree).

    >>> ids, s, y = breast_level([0.1, 0.3, 0.8], [0, 0, 1], [7, 7, 7], ["L", "L", "R"])
    >>> ids.tolist(), s.round(6).tolist(), y.tolist()
    (['7_L', '7_R'], [0.2, 0.8], [0, 1])
    """
    labels = _as_labels(labels)
    patient_ids = [str(patient) for patient in _to_numpy(patient_ids).tolist()]
    lateralities = [str(side) for side in _to_numpy(lateralities).tolist()]
    unknown = sorted(set(lateralities) - {"L", "R"})
    if unknown:
        raise ValueError(f"laterality must be 'L' or 'R' for breast-level scores, got {unknown}.")
    if not len(labels) == len(patient_ids) == len(lateralities):
        raise ValueError(f"labels ({len(labels)}), patient_ids ({len(patient_ids)}) and lateralities "
                         f"({len(lateralities)}) need one entry per image.")
    breast_ids = [f"{patient}_{side}" for patient, side in zip(patient_ids, lateralities)]
    unique_ids, breast_scores = aggregate_scores(scores, breast_ids, how=how)
    codes, _ = pd.factorize(np.asarray(breast_ids, dtype=object))
    breast_labels = np.full(len(unique_ids), np.iinfo(np.int64).min)
    np.maximum.at(breast_labels, codes, labels)
    return unique_ids, breast_scores, breast_labels


# --------------------------------------------------------------------------------------- localisation
def _as_heat_maps(heat_maps: Any) -> list[np.ndarray]:
    """A list of finite float 2-D maps from an [N, h, w] array / tensor or a sequence of 2-D maps."""
    if hasattr(heat_maps, "detach") or isinstance(heat_maps, np.ndarray):
        heat_maps = _to_numpy(heat_maps)
        if heat_maps.ndim != 3:
            raise ValueError(f"heat_maps must be [N, h, w] or a sequence of 2-D maps, got shape {heat_maps.shape}.")
    maps = [_to_numpy(heat_map).astype(np.float64) for heat_map in heat_maps]
    for index, heat_map in enumerate(maps):
        if heat_map.ndim != 2 or heat_map.size == 0:
            raise ValueError(f"heat map {index} must be a non-empty 2-D array, got shape {heat_map.shape}.")
        if not np.all(np.isfinite(heat_map)):
            raise ValueError(f"heat map {index} contains NaN or infinite values.")
    return maps


def _as_boxes(boxes: Any, index: int) -> np.ndarray:
    """One image's boxes as float [K, 4] (x0, y0, x1, y1), K >= 1, each with x0 <= x1 and y0 <= y1."""
    array = _to_numpy(boxes).astype(np.float64)
    if array.size == 0 or array.size % 4 or array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 4):
        raise ValueError(f"boxes[{index}] must be one box (x0, y0, x1, y1) or a list of them, got shape "
                         f"{array.shape}; leave out images without a lesion box.")
    array = array.reshape(-1, 4)
    if not np.all(np.isfinite(array)) or np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise ValueError(f"boxes[{index}] must hold finite (x0, y0, x1, y1) boxes with x0 <= x1 and y0 <= y1, "
                         f"got {array.tolist()}.")
    return array


def _union_area(boxes: np.ndarray) -> float:
    """Area of the union of boxes [K, 4] (x0, y0, x1, y1), on the grid of their edges (exact)."""
    xs, ys = np.unique(boxes[:, [0, 2]]), np.unique(boxes[:, [1, 3]])
    centres_x, centres_y = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    covered = np.zeros((len(centres_y), len(centres_x)), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered |= ((centres_y >= y0) & (centres_y <= y1))[:, None] & ((centres_x >= x0) & (centres_x <= x1))[None, :]
    return float((np.diff(ys)[:, None] * np.diff(xs)[None, :])[covered].sum())


def pointing_game(heat_maps: Any, boxes: Sequence[Any], *, image_sizes: Any = None,
                  tolerance: float = 0.0) -> dict[str, Any]:
    """The pointing game (Zhang et al., ECCV 2016): does each heat map peak inside its image's lesion box?

    Args:
        heat_maps: one map per image: an [N, h, w] array / tensor, or a sequence of N 2-D arrays whose
            sizes may differ (e.g. `visualization.patch_sentence_similarity(...)[sentence]` for the
            sentence that describes the finding). A map covers its whole image: cell (i, j) of an h x w
            map is the pixel rectangle x in [j W / w, (j + 1) W / w], y in [i H / h, (i + 1) H / h].
        boxes: per image, one box or a list of boxes `(x0, y0, x1, y1)` (x to the right, y down) in
            the image's pixel frame, the frame of the processed view the map was computed on (map
            dataset boxes there first, e.g. with `image_utils_mama.boxes_to_view`). An image with
            several lesions scores a hit when the peak falls in any of them. Images without a box
            have no pointing result: leave them out.
        image_sizes: (H, W) of every image, or one (H, W) per image. None: boxes are given in
            heat-map cells (H, W = h, w).
        tolerance: a margin in pixels added around every box (Zhang et al. use 15 px), clipped to the image.

    The peak is the centre of the highest cell. When several cells share the highest value, the
    hit counts as the fraction of them whose centres are inside a box (the expected result of
    breaking the tie at random), so a constant map is no better than chance.

    Returns a JSON-ready dict: `accuracy` (mean hit), `random_accuracy` (the expected accuracy of a
    pointer drawn uniformly over the image: the mean fraction of the image area the boxes cover),
    `num_images`, and per image `hits` (0..1) and `peaks` ([x, y] of the first highest cell's centre).

    >>> heat = np.zeros((2, 4, 4)); heat[0, 1, 2] = 1.0; heat[1, 3, 0] = 1.0
    >>> result = pointing_game(heat, [(8, 0, 16, 8), [(0, 0, 4, 4), (12, 12, 16, 16)]], image_sizes=(16, 16))
    >>> result["accuracy"], result["hits"], result["peaks"][0], result["random_accuracy"]
    (0.5, [1.0, 0.0], [10.0, 6.0], 0.1875)
    """
    maps = _as_heat_maps(heat_maps)
    if len(boxes) != len(maps):
        raise ValueError(f"Got {len(maps)} heat maps but {len(boxes)} box lists; give one box list per map.")
    if not maps:
        raise ValueError("pointing_game needs at least one heat map.")
    if image_sizes is None:
        sizes = np.array([heat_map.shape for heat_map in maps], dtype=np.float64)
    else:
        sizes = _to_numpy(image_sizes).astype(np.float64)
        sizes = np.broadcast_to(sizes, (len(maps), 2)) if sizes.shape == (2,) else sizes
        if sizes.shape != (len(maps), 2) or not np.all(sizes > 0):
            raise ValueError(f"image_sizes must be one positive (H, W) or one per heat map ({len(maps)}), "
                             f"got shape {sizes.shape}.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}.")

    hits, peaks, covered = [], [], []
    for index, (heat_map, (height, width)) in enumerate(zip(maps, sizes)):
        image_boxes = _as_boxes(boxes[index], index)
        grown = image_boxes + np.array([-tolerance, -tolerance, tolerance, tolerance])
        grown = np.clip(grown, 0.0, [width, height, width, height])
        rows, cols = np.nonzero(heat_map == heat_map.max())
        centres_x = (cols + 0.5) * width / heat_map.shape[1]
        centres_y = (rows + 0.5) * height / heat_map.shape[0]
        inside = np.zeros(len(rows), dtype=bool)
        for x0, y0, x1, y1 in grown:
            inside |= (centres_x >= x0) & (centres_x <= x1) & (centres_y >= y0) & (centres_y <= y1)
        hits.append(float(inside.mean()))
        peaks.append([float(centres_x[0]), float(centres_y[0])])
        covered.append(_union_area(grown) / (height * width))
    return {"accuracy": float(np.mean(hits)), "random_accuracy": float(np.mean(covered)), "num_images": len(maps),
            "hits": hits, "peaks": peaks}


# ---------------------------------------------------------------------------------- evaluate module
def load_metric(**kwargs):
    """The `evaluate` module shipped in this package (`metric/mama_metrics.py`), loaded by path.

    Loading by local path never contacts the Hub (unlike `evaluate.load("accuracy")`), so it works
    offline. `kwargs` go to `evaluate.load` (e.g. `keep_in_memory=True`, `cache_dir`).

    >>> metric = load_metric(keep_in_memory=True)  # doctest: +SKIP
    >>> metric.compute(predictions=[[2.0, 0.0], [0.0, 2.0]], references=[0, 1])["auc"]  # doctest: +SKIP
    1.0
    """
    import evaluate  # imported here: it costs seconds and only this function needs it

    return evaluate.load(str(METRIC_MODULE_PATH), **kwargs)
