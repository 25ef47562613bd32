"""Result plots: valid, non-trivial PNG files written atomically; confusion-matrix normalisation by hand."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from modeling_mama.training.metrics import softmax_scores
from modeling_mama.training.visualization import (
    normalize_confusion_matrix,
    plot_confusion_matrix,
    plot_roc,
    save_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_bytes=10_000):
    """A decodable PNG with a real drawing on it (many colours), not an empty canvas."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width >= 300 and image.height >= 300
        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 50


def test_normalize_confusion_matrix_hand():
    counts = np.array([[3, 1], [2, 0]])
    # rows 3+1 and 2+0; columns 3+2 and 1+0; all 6
    np.testing.assert_allclose(normalize_confusion_matrix(counts, "true"), [[0.75, 0.25], [1.0, 0.0]])
    np.testing.assert_allclose(normalize_confusion_matrix(counts, "pred"), [[0.6, 1.0], [0.4, 0.0]])
    np.testing.assert_allclose(normalize_confusion_matrix(counts, "all"), [[0.5, 1 / 6], [1 / 3, 0.0]])
    np.testing.assert_allclose(normalize_confusion_matrix(counts, None), counts)
    empty_row = normalize_confusion_matrix(np.array([[3, 1], [0, 0]]), "true")
    assert empty_row[0].tolist() == [0.75, 0.25] and np.isnan(empty_row[1]).all()
    with pytest.raises(ValueError, match="normalize must be one of \\(None, 'true', 'pred', 'all'\\), got 'rows'"):
        normalize_confusion_matrix(counts, "rows")


@pytest.mark.parametrize("normalize", ["true", None])
def test_plot_confusion_matrix_writes_png_atomically(tmp_path, normalize):
    counts = [[50, 3, 2, 0], [4, 40, 6, 1], [0, 0, 0, 0], [1, 2, 9, 30]]  # class 2 absent: an empty row
    names = ["almost entirely fat", "scattered", "heterogeneously dense", "extremely dense"]
    target = tmp_path / "nested" / "density_cm.png"
    returned = plot_confusion_matrix(counts, names, target, title="density", normalize=normalize)
    assert returned == target
    assert_real_png(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["density_cm.png"]  # no temp files left


def test_plot_confusion_matrix_user_errors(tmp_path):
    with pytest.raises(ValueError, match=r"cm has 2 classes but 3 class_names were given"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match=r"cm must be a square matrix of counts, got shape \(2, 3\)"):
        plot_confusion_matrix([[1, 0, 0], [0, 1, 0]], ["a", "b"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_roc_binary_from_positive_scores_and_two_columns(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    positive = np.clip(0.3 * labels + 0.7 * rng.random(200), 0, 1)
    one_column = plot_roc(positive, labels, ["negative", "cancer"], tmp_path / "roc_positive.png")
    two_columns = plot_roc(np.stack([1 - positive, positive], axis=1), labels, ["negative", "cancer"],
                           tmp_path / "roc_two.png")
    assert_real_png(one_column)
    # the same curve either way: the two drawings are pixel-identical
    assert np.array_equal(np.asarray(Image.open(one_column)), np.asarray(Image.open(two_columns)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc_positive.png", "roc_two.png"]


def test_plot_roc_multiclass_with_absent_class(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    labels[labels == 2] = 3  # class 2 absent: listed, not drawn, no crash
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), labels] += 1.5
    path = plot_roc(softmax_scores(logits), labels, ["A", "B", "C", "D"], tmp_path / "roc.png", title="density")
    assert_real_png(path)
    with pytest.raises(ValueError, match="scores has 4 classes but 2 class_names were given"):
        plot_roc(softmax_scores(logits), labels, ["A", "B"], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.png"]


def test_save_figure_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "roc.png"
    target.write_bytes(b"previous result")

    def broken_savefig(self, stream, **kwargs):
        stream.write(PNG_SIGNATURE + b"half a pic")  # partially written, then the process "dies"
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], target)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]


def test_save_figure_overwrites_and_keeps_readable_permissions(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")
    figure = Figure(figsize=(4, 4))
    figure.add_subplot().plot([0, 1, 0.5], [0, 1, 0.2])
    assert save_figure(figure, target) == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    # the usual umask-based mode of a new file, not mkstemp's private 0600
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
