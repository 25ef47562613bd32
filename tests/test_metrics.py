"""Metrics: hand-computed small cases, softmax applied once, absent classes, retrieval, aggregation,
and the `evaluate` module loaded offline by path."""

import json
import math
import os
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from modeling_mama.training.metrics import (
    METRIC_MODULE_PATH,
    aggregate_scores,
    auc_per_class,
    auc_score,
    balanced_accuracy,
    breast_level,
    classification_metrics,
    confusion_matrix,
    load_metric,
    per_class_accuracy,
    pointing_game,
    probabilistic_f1,
    retrieval_accuracy,
    retrieval_metrics,
    sensitivity_specificity,
    softmax_scores,
    specificity_at_sensitivity,
)


def same(a, b):
    """Equality of metric dicts / lists where nan == nan."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ------------------------------------------------------------------------------------------- softmax
def test_softmax_scores_hand_values_and_stability():
    # [0, ln 3] -> e^0 : e^ln3 = 1 : 3 -> [0.25, 0.75]; huge logits must not overflow
    scores = softmax_scores([[0.0, math.log(3.0)], [1000.0, 1000.0], [-1000.0, 0.0]])
    np.testing.assert_allclose(scores, [[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]], atol=1e-12)
    bf16 = softmax_scores(torch.tensor([[0.0, math.log(3.0)]], dtype=torch.bfloat16))
    np.testing.assert_allclose(bf16, [[0.25, 0.75]], atol=2e-3)


# ------------------------------------------------------------------------------ thresholded metrics
PREDICTIONS = [0, 1, 1, 2, 0]
LABELS = [0, 0, 1, 2, 2]


def test_confusion_matrix_hand_and_loop():
    # true 0: predicted 0 and 1; true 1: predicted 1; true 2: predicted 2 and 0
    expected = [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert confusion_matrix(PREDICTIONS, LABELS, num_classes=3).tolist() == expected
    loop = np.zeros((4, 4), dtype=int)
    for predicted, true in zip(PREDICTIONS, LABELS):
        loop[true, predicted] += 1
    assert confusion_matrix(PREDICTIONS, LABELS, num_classes=4).tolist() == loop.tolist()


def test_per_class_and_balanced_accuracy_hand():
    # recall: class 0 1/2, class 1 1/1, class 2 1/2 -> balanced (0.5 + 1 + 0.5) / 3 = 2/3
    np.testing.assert_allclose(per_class_accuracy(PREDICTIONS, LABELS, 3), [0.5, 1.0, 0.5])
    assert balanced_accuracy(PREDICTIONS, LABELS) == pytest.approx(2 / 3)
    # class 3 has no image: its recall is nan and it does not enter the balanced accuracy
    per_class = per_class_accuracy(PREDICTIONS, LABELS, 4)
    assert per_class[:3].tolist() == [0.5, 1.0, 0.5] and np.isnan(per_class[3])


def test_balanced_accuracy_predicting_an_absent_class_is_silent_and_scores_nothing():
    # image 0 (true 0) is predicted as class 3, which no image has: class 0 recall 0/2, class 1 1, class 2 1/2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy([3, 1, 1, 2, 0], LABELS) == pytest.approx(0.5)


def test_sensitivity_specificity_hand():
    # TP 1 (image 0), FN 2 (images 1, 2), TN 3, FP 1 (image 4) -> sens 1/3, spec 3/4
    sensitivity, specificity = sensitivity_specificity([1, 0, 0, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0])
    assert sensitivity == pytest.approx(1 / 3) and specificity == pytest.approx(0.75)
    sensitivity, specificity = sensitivity_specificity([0, 1], [0, 0])
    assert math.isnan(sensitivity) and specificity == 0.5


# ---------------------------------------------------------------------------------- ranking metrics
def mann_whitney_auc(positive_scores, negative_scores):
    """AUC by counting pairs: a positive above a negative scores 1, a tie 1/2."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positive_scores for n in negative_scores)
    return wins / (len(positive_scores) * len(negative_scores))


def test_binary_auc_hand_with_tie():
    # positives 0.9, 0.4, 0.6; negatives 0.5, 0.1, 0.6. 0.9 beats 3, 0.4 beats 1, 0.6 beats 2 and ties 1:
    # (3 + 1 + 2.5) / 9 = 6.5 / 9
    positive = np.array([0.9, 0.4, 0.6, 0.5, 0.1, 0.6])
    scores = np.stack([1 - positive, positive], axis=1)
    labels = [1, 1, 1, 0, 0, 0]
    assert auc_score(scores, labels) == pytest.approx(6.5 / 9)
    assert mann_whitney_auc([0.9, 0.4, 0.6], [0.5, 0.1, 0.6]) == pytest.approx(6.5 / 9)


MULTICLASS_SCORES = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3]])
MULTICLASS_LABELS = np.array([0, 1, 2, 1])


def test_multiclass_macro_ovr_auc_hand_and_sklearn():
    # class 0: positive 0.6 vs 0.2, 0.3, 0.5 -> 1; class 1: positives 0.5, 0.2 vs 0.3, 0.3 -> 2/4;
    # class 2: positive 0.4 vs 0.1, 0.3, 0.3 -> 1; macro (1 + 0.5 + 1) / 3
    np.testing.assert_allclose(auc_per_class(MULTICLASS_SCORES, MULTICLASS_LABELS), [1.0, 0.5, 1.0])
    assert auc_score(MULTICLASS_SCORES, MULTICLASS_LABELS) == pytest.approx(2.5 / 3)
    assert auc_score(MULTICLASS_SCORES, MULTICLASS_LABELS) == pytest.approx(
        roc_auc_score(MULTICLASS_LABELS, MULTICLASS_SCORES, multi_class="ovr", average="macro"))


def test_auc_absent_classes_are_nan_and_skipped():
    # a 4th class that no image has: its AUC is nan and the macro mean is still (1 + 0.5 + 1) / 3
    scores = np.concatenate([MULTICLASS_SCORES * 0.9, np.full((4, 1), 0.1)], axis=1)
    per_class = auc_per_class(scores, MULTICLASS_LABELS)
    assert per_class[:3].tolist() == [1.0, 0.5, 1.0] and np.isnan(per_class[3])
    assert auc_score(scores, MULTICLASS_LABELS) == pytest.approx(2.5 / 3)
    assert math.isnan(auc_score(scores, [1, 1, 1, 1]))  # one class only: nothing to rank
    assert math.isnan(auc_score([[0.4, 0.6], [0.3, 0.7]], [1, 1]))


def brute_force_specificity_at_sensitivity(scores, labels, target):
    """Try every score as a threshold (positive if score >= threshold); best specificity reaching target."""
    best = (-1.0, None)
    for threshold in sorted(set(scores), reverse=True):
        called = [score >= threshold for score in scores]
        sensitivity = sum(c and y for c, y in zip(called, labels)) / sum(labels)
        specificity = sum(not c and not y for c, y in zip(called, labels)) / (len(labels) - sum(labels))
        if sensitivity >= target and specificity > best[0]:
            best = (specificity, threshold)
    return best


def test_specificity_at_80_sensitivity_hand():
    # 4 of the 5 positives (0.9, 0.8, 0.7, 0.35) are needed: threshold 0.35 also calls the negatives
    # 0.75, 0.6, 0.4 positive -> specificity 2/5
    positive_scores = [0.9, 0.8, 0.7, 0.35, 0.2, 0.75, 0.6, 0.4, 0.3, 0.1]
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert specificity_at_sensitivity(positive_scores, labels) == pytest.approx((0.4, 0.35))
    assert brute_force_specificity_at_sensitivity(positive_scores, labels, 0.8) == pytest.approx((0.4, 0.35))


def test_specificity_at_sensitivity_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        labels[:2] = [0, 1]
        scores = np.round(rng.random(30) * 0.5 + 0.3 * labels, 1)  # rounding makes many ties
        for target in (0.5, 0.8, 1.0):
            assert specificity_at_sensitivity(scores, labels, target) == pytest.approx(
                brute_force_specificity_at_sensitivity(scores.tolist(), labels.tolist(), target))
    assert all(math.isnan(v) for v in specificity_at_sensitivity([0.2, 0.3], [0, 0]))


def rsna_pfbeta(labels, predictions, beta=1.0):
    """The RSNA challenge's probabilistic F-beta, transcribed as a loop."""
    y_true_count, ctp, cfp = 0, 0.0, 0.0
    for label, prediction in zip(labels, predictions):
        prediction = min(max(prediction, 0), 1)
        if label:
            y_true_count += 1
            ctp += prediction
        else:
            cfp += prediction
    precision, recall = ctp / (ctp + cfp), ctp / y_true_count
    if precision > 0 and recall > 0:
        return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
    return 0.0


def test_probabilistic_f1_hand():
    # pTP = 0.9 + 0.6 + 0.3 = 1.8, pFP = 0.2 + 0.4 + 0.1 + 0 = 0.7 -> P = 1.8 / 2.5 = 0.72, R = 1.8 / 3 = 0.6
    # pF1 = 2 * 0.72 * 0.6 / 1.32 = 0.864 / 1.32; pF2 = 5 P R / (4 P + R) = 2.16 / 3.48
    positive_scores = [0.9, 0.6, 0.3, 0.2, 0.4, 0.1, 0.0]
    labels = [1, 1, 1, 0, 0, 0, 0]
    assert probabilistic_f1(positive_scores, labels) == pytest.approx(0.864 / 1.32)
    assert probabilistic_f1(positive_scores, labels, beta=2) == pytest.approx(2.16 / 3.48)
    assert probabilistic_f1(positive_scores, labels) == pytest.approx(rsna_pfbeta(labels, positive_scores))
    # out-of-range scores are clipped: 1.5 -> 1 and -0.5 -> 0: pTP 1, pFP 0 -> P 1, R 1/2 -> 2/3
    assert probabilistic_f1([1.5, -0.5, -0.5], [1, 1, 0]) == pytest.approx(2 / 3)
    assert probabilistic_f1([0.0, 0.0], [1, 0]) == 0.0
    assert math.isnan(probabilistic_f1([0.3, 0.4], [0, 0]))


# ---------------------------------------------------------------------------- classification_metrics
BINARY_POSITIVE = np.array([0.9, 0.7, 0.4, 0.6, 0.2, 0.1])
BINARY_LABELS = [1, 1, 1, 0, 0, 0]


def test_classification_metrics_binary_hand():
    # predictions (positive score > 0.5): 1 1 0 | 1 0 0 -> TP 2, FN 1, TN 2, FP 1
    # AUC: 0.9 and 0.7 beat all 3 negatives, 0.4 beats 0.2 and 0.1 -> 8/9
    # 80% sensitivity needs all 3 positives: threshold 0.4 lets 0.6 through -> specificity 2/3
    # pF1: pTP 2.0, pFP 0.9 -> P 20/29, R 2/3 -> 2PR/(P+R) = (80/87) / (118/87) = 40/59
    scores = np.stack([1 - BINARY_POSITIVE, BINARY_POSITIVE], axis=1)
    result = classification_metrics(scores, BINARY_LABELS, num_classes=2, from_logits=False)
    assert result["num_samples"] == 6 and result["class_counts"] == [3, 3]
    assert result["confusion_matrix"] == [[2, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)
    assert result["per_class_accuracy"] == pytest.approx([2 / 3, 2 / 3])
    assert result["sensitivity"] == pytest.approx(2 / 3) and result["specificity"] == pytest.approx(2 / 3)
    assert result["auc"] == pytest.approx(8 / 9)
    assert result["specificity_at_80_sensitivity"] == pytest.approx(2 / 3)
    assert result["threshold_at_80_sensitivity"] == pytest.approx(0.4)
    assert result["pf1"] == pytest.approx(40 / 59)
    json.dumps(result)  # JSON-ready: plain Python numbers and lists


def test_softmax_is_applied_once():
    # logits = log(p): one softmax gives back p, so logits and the pre-softmaxed scores agree exactly
    probabilities = np.stack([1 - BINARY_POSITIVE, BINARY_POSITIVE], axis=1)
    from_logits = classification_metrics(np.log(probabilities), BINARY_LABELS, num_classes=2)
    from_scores = classification_metrics(probabilities, BINARY_LABELS, num_classes=2, from_logits=False)
    assert from_logits.keys() == from_scores.keys()
    for key in from_scores:
        np.testing.assert_allclose(from_logits[key], from_scores[key], atol=1e-9, err_msg=key)
    # the reference's second softmax squeezes 0.9 to 1/(1+e^-0.8) = 0.69: binary AUC survives, pF1 does not
    twice = classification_metrics(probabilities, BINARY_LABELS, num_classes=2, from_logits=True)
    assert twice["auc"] == pytest.approx(from_scores["auc"])
    assert abs(twice["pf1"] - from_scores["pf1"]) > 0.05


def test_double_softmax_changes_multiclass_auc():
    # class 0 column after one softmax: a 0.30, b 0.28, c 0.10 with b the only class-0 image -> AUC 1/2.
    # A second softmax gives a e^.3/(e^.3+e^.69+e^.01) = 0.3100 < b e^.28/(e^.28+2e^.36) = 0.3158 -> AUC 1
    probabilities = np.array([[0.30, 0.69, 0.01], [0.28, 0.36, 0.36], [0.10, 0.10, 0.80]])
    labels = [1, 0, 2]
    once = classification_metrics(np.log(probabilities), labels, num_classes=3)
    assert once["auc_per_class"] == pytest.approx([0.5, 1.0, 1.0])
    assert once["auc"] == pytest.approx(2.5 / 3)
    from_scores = classification_metrics(probabilities, labels, num_classes=3, from_logits=False)
    assert from_scores["auc"] == pytest.approx(2.5 / 3)
    twice = classification_metrics(probabilities, labels, num_classes=3, from_logits=True)
    assert twice["auc_per_class"] == pytest.approx([1.0, 1.0, 1.0])


def test_classification_metrics_absent_class_does_not_crash():
    # 7 BI-RADS classes, only 0, 1 and 4 present: per-class values nan elsewhere, macro over present
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 4, 4, 1, 0, 4, 1])
    logits = rng.normal(size=(8, 7))
    result = classification_metrics(torch.tensor(logits), torch.tensor(labels), num_classes=7)
    present = [0, 1, 4]
    assert [c for c in range(7) if not math.isnan(result["auc_per_class"][c])] == present
    assert [c for c in range(7) if not math.isnan(result["per_class_accuracy"][c])] == present
    scores = softmax_scores(logits)
    expected_auc = np.mean([roc_auc_score(labels == c, scores[:, c]) for c in present])
    assert result["auc"] == pytest.approx(expected_auc)
    assert result["balanced_accuracy"] == pytest.approx(np.mean([result["per_class_accuracy"][c] for c in present]))
    assert "pf1" not in result and result["class_counts"] == [2, 3, 0, 0, 3, 0, 0]


def test_classification_metrics_user_errors():
    with pytest.raises(ValueError, match=r"shape \(num_samples, num_classes\) = \(2, 3\), got \(2, 2\)"):
        classification_metrics([[0, 1], [1, 0]], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"label 5 is outside 0..2 \(num_classes=3\)"):
        classification_metrics(np.zeros((2, 3)), [0, 5], num_classes=3)
    with pytest.raises(ValueError, match="from_logits=False expects scores in \\[0, 1\\]"):
        classification_metrics([[2.0, -1.0]], [0], num_classes=2, from_logits=False)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        classification_metrics([[1.0]], [0], num_classes=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        classification_metrics([[float("nan"), 0.0]], [0], num_classes=2)


# ---------------------------------------------------------------------------------------- retrieval
def loop_recall(similarity, row_groups, column_groups, k):
    """Pessimistic rank by loops: 1 + wrong candidates scoring >= the best correct one."""
    hits = 0
    for i, row in enumerate(similarity):
        best = max(row[j] for j in range(len(row)) if row_groups[i] == column_groups[j])
        rank = 1 + sum(row[j] >= best for j in range(len(row)) if row_groups[i] != column_groups[j])
        hits += rank <= k
    return hits / len(similarity)


def test_retrieval_hand_with_ties():
    # image->report ranks: row 0 -> 1; row 1 ties 0.7 with a wrong report -> 2; row 2 0.6 < 0.8 -> 2
    # report->image ranks: column 0 -> 1; column 1 0.7 < 0.8 -> 2; column 2 -> 1
    similarity = [[0.9, 0.5, 0.1], [0.7, 0.7, 0.2], [0.3, 0.8, 0.6]]
    assert retrieval_metrics(similarity, ks=(1, 2, 5)) == pytest.approx({
        "image_to_report_recall@1": 1 / 3, "image_to_report_recall@2": 1.0, "image_to_report_recall@5": 1.0,
        "report_to_image_recall@1": 2 / 3, "report_to_image_recall@2": 1.0, "report_to_image_recall@5": 1.0})
    # a constant matrix ranks every correct item behind all ties: no hit below k = N
    constant = retrieval_metrics(np.ones((4, 4)), ks=(1, 3, 4))
    assert constant["image_to_report_recall@1"] == 0.0 and constant["report_to_image_recall@3"] == 0.0
    assert constant["image_to_report_recall@4"] == 1.0


def test_retrieval_square_groups_hand():
    # images 0 and 1 belong to exam e1 and share a report: either of their columns is correct for both
    similarity = torch.tensor([[0.2, 0.9, 0.1, 0.0], [0.8, 0.3, 0.5, 0.1], [0.1, 0.2, 0.4, 0.6], [0.0, 0.1, 0.2, 0.3]])
    groups = ["e1", "e1", "e2", "e3"]
    # with groups: image ranks 1, 1, 2 (0.6 beats 0.4), 1; report ranks 1, 1, 2 (0.5 > 0.4), 2 (0.6 > 0.3)
    assert retrieval_metrics(similarity, ks=(1,), groups=groups) == pytest.approx(
        {"image_to_report_recall@1": 3 / 4, "report_to_image_recall@1": 2 / 4})
    # without: diagonal only -> image ranks 2, 3, 2, 1
    assert retrieval_metrics(similarity, ks=(1,))["image_to_report_recall@1"] == pytest.approx(1 / 4)


def test_retrieval_images_sharing_one_report_column():
    # 3 images, 2 reports; images 0, 1 -> report 0, image 2 -> report 1
    # image ranks: 1, 2 (0.4 < 0.6), 2 (0.2 < 0.3); report 0: best of rows 0, 1 is 0.9 -> 1; report 1: 0.2 < 0.6 -> 2
    similarity = [[0.9, 0.1], [0.4, 0.6], [0.3, 0.2]]
    result = retrieval_metrics(similarity, ks=(1, 2), groups=[0, 0, 1], column_groups=[0, 1])
    assert result == pytest.approx({"image_to_report_recall@1": 1 / 3, "image_to_report_recall@2": 1.0,
                                    "report_to_image_recall@1": 1 / 2, "report_to_image_recall@2": 1.0})


def test_retrieval_matches_loops_on_random_groups():
    rng = np.random.default_rng(2)
    similarity = np.round(rng.random((40, 40)), 1)  # coarse values: many ties
    groups = rng.integers(0, 25, 40)
    result = retrieval_metrics(similarity, ks=(1, 5, 10), groups=groups)
    for k in (1, 5, 10):
        assert result[f"image_to_report_recall@{k}"] == pytest.approx(loop_recall(similarity, groups, groups, k))
        assert result[f"report_to_image_recall@{k}"] == pytest.approx(loop_recall(similarity.T, groups, groups, k))


def test_retrieval_user_errors():
    with pytest.raises(ValueError, match="a non-square matrix needs groups and column_groups"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="report_to_image: query 1 has no matching candidate"):
        retrieval_metrics(np.zeros((2, 2)), groups=[0, 0], column_groups=[0, 1])
    with pytest.raises(ValueError, match="groups has 3 ids and column_groups 3, but similarity is 2x2"):
        retrieval_metrics(np.zeros((2, 2)), groups=[0, 1, 2])
    with pytest.raises(ValueError, match="ks must be positive integers"):
        retrieval_metrics(np.zeros((2, 2)), ks=(0,))


# -------------------------------------------------------------------------------------- aggregation
def test_aggregate_scores_mean_and_max_hand():
    group_ids = ["b", "a", "b", "c", "a"]
    positive = [0.2, 0.5, 0.6, 0.9, 0.1]
    # groups in order of first appearance b, a, c: mean (0.2+0.6)/2, (0.5+0.1)/2, 0.9; max 0.6, 0.5, 0.9
    ids, mean = aggregate_scores(positive, group_ids, how="mean")
    assert ids.tolist() == ["b", "a", "c"] and mean.tolist() == pytest.approx([0.4, 0.3, 0.9])
    _, highest = aggregate_scores(positive, group_ids, how="max")
    assert highest.tolist() == [0.6, 0.5, 0.9]
    binary = np.stack([1 - np.array(positive), positive], axis=1)
    _, binary_max = aggregate_scores(binary, group_ids, how="max")
    np.testing.assert_allclose(binary_max, [[0.4, 0.6], [0.5, 0.5], [0.1, 0.9]])
    _, binary_mean = aggregate_scores(binary, group_ids, how="mean")
    np.testing.assert_allclose(binary_mean, [[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])


def test_aggregate_scores_multiclass_mean_matches_loop_and_max_is_refused():
    rng = np.random.default_rng(3)
    scores = softmax_scores(rng.normal(size=(12, 4)))
    exam_ids = rng.integers(100, 104, 12)
    ids, exam_scores = aggregate_scores(scores, exam_ids, how="mean")
    for exam_id, row in zip(ids, exam_scores):
        np.testing.assert_allclose(row, scores[exam_ids == exam_id].mean(axis=0))
    np.testing.assert_allclose(exam_scores.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="how='max' needs positive-class scores"):
        aggregate_scores(scores, exam_ids, how="max")
    with pytest.raises(ValueError, match=r"how must be one of \('mean', 'max'\), got 'median'"):
        aggregate_scores(scores, exam_ids, how="median")


def test_breast_level_rsna_ids_and_labels():
    # patient 7: L images 0.1, 0.3 (healthy) -> 0.2; R image 0.8 (cancer); patient 8: L 0.4 and 0.6 -> 0.5
    ids, scores, labels = breast_level([0.1, 0.3, 0.8, 0.4, 0.6], [0, 0, 1, 1, 1], [7, 7, 7, 8, 8],
                                       ["L", "L", "R", "L", "L"])
    assert ids.tolist() == ["7_L", "7_R", "8_L"]
    assert scores.tolist() == pytest.approx([0.2, 0.8, 0.5]) and labels.tolist() == [0, 1, 1]
    _, highest, _ = breast_level([0.1, 0.3, 0.8, 0.4, 0.6], [0, 0, 1, 1, 1], [7, 7, 7, 8, 8],
                                 ["L", "L", "R", "L", "L"], how="max")
    assert highest.tolist() == [0.3, 0.8, 0.6]
    # a breast is positive if any of its images is, whichever comes first
    assert breast_level([0.7, 0.2], [1, 0], [9, 9], ["L", "L"])[2].tolist() == [1]
    assert breast_level([0.2, 0.7], [0, 1], [9, 9], ["L", "L"])[2].tolist() == [1]
    with pytest.raises(ValueError, match=r"laterality must be 'L' or 'R' for breast-level scores, got \['B'\]"):
        breast_level([0.1], [0], [7], ["B"])


def test_breast_level_feeds_classification_metrics():
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    ids, scores, labels = breast_level(probabilities, [0, 0, 1, 1], ["p", "p", "p", "q"], ["L", "L", "R", "R"])
    # breasts p_L (0.2, label 0), p_R (0.8, 1), q_R (0.6, 1): perfectly ranked -> AUC 1
    result = classification_metrics(scores, labels, num_classes=2, from_logits=False)
    assert result["auc"] == 1.0 and result["num_samples"] == 3 and result["class_counts"] == [1, 2]


# ---------------------------------------------------------------------------------- evaluate module
def test_evaluate_module_offline_equals_classification_metrics():
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest runs the suite offline
    assert METRIC_MODULE_PATH.is_file() and METRIC_MODULE_PATH.parent.name == "metric"
    start = time.perf_counter()
    metric = load_metric(keep_in_memory=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"loading the metric by path took {elapsed:.1f} s: something is contacting the Hub"
    assert isinstance(metric, evaluate.Metric) and metric.name == "mama_metrics"

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(20, 4))
    labels = rng.integers(0, 3, 20)  # class 3 absent
    expected = classification_metrics(logits, labels, num_classes=4)
    assert same(metric.compute(predictions=logits.tolist(), references=labels.tolist()), expected)
    for start_row in range(0, 20, 7):  # accumulated batches give the same result
        metric.add_batch(predictions=logits[start_row:start_row + 7], references=labels[start_row:start_row + 7])
    assert same(metric.compute(num_classes=4), expected)

    binary = softmax_scores(rng.normal(size=(10, 2)))
    binary_labels = [0, 1] * 5
    assert same(metric.compute(predictions=binary, references=binary_labels, from_logits=False),
                classification_metrics(binary, binary_labels, num_classes=2, from_logits=False))


def test_retrieval_accuracy():
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 2.0, 5.0], [0.0, 0.0, 4.0]])
    top1_i2t, top1_t2i = retrieval_accuracy(logits, 1)
    assert top1_i2t.item() == pytest.approx(2 / 3)  # image 1's best report is 2
    assert top1_t2i.item() == pytest.approx(2 / 3)  # report 2's best image is 1
    assert retrieval_accuracy(logits, 5)[0].item() == 1.0


def test_in_batch_retrieval_accuracy_agrees_with_the_dataset_metric():
    # One fact, two implementations (on-device for the training logs, numpy with groups for evaluation):
    # without ties they must give the same recall@k.
    generator = torch.Generator().manual_seed(0)
    for size in (3, 8, 20):
        logits = torch.randn(size, size, generator=generator)
        expected = retrieval_metrics(logits.numpy(), ks=(1, 5))
        for k in (1, 5):
            image_to_text, text_to_image = retrieval_accuracy(logits, k)
            assert image_to_text.item() == pytest.approx(expected[f"image_to_report_recall@{k}"])
            assert text_to_image.item() == pytest.approx(expected[f"report_to_image_recall@{k}"])


# --------------------------------------------------------------------------------------- pointing game
def test_pointing_game_hand_made_maps():
    heat = np.zeros((3, 4, 4))
    heat[0, 0, 3] = 5.0  # peak at the centre of cell (row 0, col 3): (x, y) = (3.5, 0.5) in cells
    heat[1, 2, 1] = 1.0
    heat[2] = 7.0  # constant: every cell ties
    boxes = [(3, 0, 4, 1), [(0, 0, 1, 1), (1, 2, 2, 3)], (0, 0, 2, 2)]
    result = pointing_game(heat, boxes)  # boxes in cell units
    assert result["hits"] == [1.0, 1.0, 0.25]  # the constant map hits as often as a random cell would
    assert result["accuracy"] == pytest.approx(2.25 / 3)
    assert result["peaks"][:2] == [[3.5, 0.5], [1.5, 2.5]]
    # A uniform pointer lands in 1/16, 2/16 and 4/16 of the images.
    assert result["random_accuracy"] == pytest.approx((1 + 2 + 4) / 16 / 3)
    assert result["num_images"] == 3


def test_pointing_game_pixel_frames_tolerance_and_overlap():
    # Two maps of different grids over images of different sizes (as lists of arrays).
    first = np.zeros((8, 8)); first[2, 6] = 1.0  # peak at (x, y) = (6.5, 2.5) * 14 px = (91, 35)
    second = np.zeros((4, 2)); second[3, 0] = 1.0  # peak at (25, 175) in a 200 x 100 image
    boxes = [(80, 30, 100, 40), (30, 160, 60, 190)]
    result = pointing_game([first, second], boxes, image_sizes=[(112, 112), (200, 100)])
    assert result["hits"] == [1.0, 0.0] and result["peaks"] == [[91.0, 35.0], [25.0, 175.0]]
    # 5 px of tolerance reaches the second peak (x = 25 >= 30 - 5).
    assert pointing_game([first, second], boxes, image_sizes=[(112, 112), (200, 100)], tolerance=5)["hits"] == [1.0, 1.0]
    # Overlapping boxes count their union once; tolerance grows the boxes and is clipped to the image.
    single = np.ones((1, 2, 2))
    overlap = pointing_game(single, [[(0, 0, 6, 6), (2, 2, 8, 8)]], image_sizes=(10, 10))
    assert overlap["random_accuracy"] == pytest.approx((36 + 36 - 16) / 100)
    grown = pointing_game(single, [(0, 0, 2, 2)], image_sizes=(10, 10), tolerance=3)
    assert grown["random_accuracy"] == pytest.approx(25 / 100)
    # Torch tensors work as well as numpy.
    assert pointing_game(torch.from_numpy(first)[None], [boxes[0]], image_sizes=(112, 112))["accuracy"] == 1.0


def test_pointing_game_rejects_bad_inputs():
    heat = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="2 heat maps but 1 box"):
        pointing_game(heat, [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="leave out images without a lesion box"):
        pointing_game(heat, [(0, 0, 1, 1), []])
    with pytest.raises(ValueError, match="x0 <= x1"):
        pointing_game(heat, [(0, 0, 1, 1), (3, 0, 1, 1)])
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(np.full((1, 2, 2), np.nan), [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="image_sizes"):
        pointing_game(heat, [(0, 0, 1, 1)] * 2, image_sizes=[(4, 4)] * 3)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(heat, [(0, 0, 1, 1)] * 2, tolerance=-1)
