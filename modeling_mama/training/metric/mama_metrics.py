"""MaMA classification metrics as an `evaluate` module (load it offline by path, never from the Hub).

The numbers come from `modeling_mama.training.metrics.classification_metrics`, so this module and the library
always agree. `evaluate.load("accuracy")` would contact the Hub; loading this file by its path does not:

    import evaluate, modeling_mama.training.metrics
    metric = evaluate.load(str(modeling_mama.training.metrics.METRIC_MODULE_PATH))   # or modeling_mama.training.metrics.load_metric()
    metric.compute(predictions=logits, references=labels, num_classes=2)
"""

import datasets
import evaluate

from modeling_mama.training.metrics import classification_metrics

_CITATION = """\
@inproceedings{du2025mama,
  title     = {Multi-View and Multi-Scale Alignment for Contrastive Language-Image Pre-training in Mammography},
  author    = {Du, Yuexi and Onofrey, John and Dvornek, Nicha C.},
  booktitle = {Information Processing in Medical Imaging (IPMI)},
  year      = {2025},
  note      = {arXiv:2409.18119}
}
"""

_DESCRIPTION = """\
Mammography classification metrics of the MaMA evaluation protocol: accuracy, balanced accuracy,
per-class accuracy (recall), AUC (binary: positive-class score; multiclass: macro one-vs-rest over the
classes present), confusion matrix, and for binary tasks sensitivity, specificity, specificity at 80%
sensitivity and the RSNA probabilistic F1 (pF1). Scores are one softmax of the logits.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: per-class logits (from_logits=True, default) or scores in [0, 1] (from_logits=False),
        one list of num_classes floats per image.
    references: the true class index of each image.
    num_classes: number of classes (default: the length of the prediction rows).
    from_logits: apply one softmax to the predictions first (default True).
Returns:
    the dict of `modeling_mama.training.metrics.classification_metrics`: num_samples, class_counts, accuracy,
    balanced_accuracy, per_class_accuracy, auc, auc_per_class, confusion_matrix, and for two classes
    sensitivity, specificity, specificity_at_80_sensitivity, threshold_at_80_sensitivity, pf1.
Examples:
    >>> metric = evaluate.load("path/to/modeling_mama/metric/mama_metrics.py")  # doctest: +SKIP
    >>> metric.compute(predictions=[[2.0, 0.0], [0.0, 2.0]], references=[0, 1])["auc"]  # doctest: +SKIP
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MamaMetrics(evaluate.Metric):
    """`evaluate` wrapper of `classification_metrics`; accumulates with add_batch like any metric."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Value("int64"),
            }),
            reference_urls=["https://arxiv.org/abs/2409.18119"],
        )

    def _compute(self, predictions, references, num_classes=None, from_logits=True):
        if num_classes is None:
            num_classes = len(predictions[0]) if len(predictions) else 0
        return classification_metrics(predictions, references, num_classes=num_classes, from_logits=from_logits)
