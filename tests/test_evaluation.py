import os

import numpy as np
import pytest
from PIL import Image

import visiontune
from visiontune import evaluation, plots


def test_per_class_metrics_match_a_hand_count():
    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    scores = evaluation.classification_metrics(labels, predicted, ["a", "b", "c"])
    assert scores["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert scores["accuracy"] == pytest.approx(4 / 6)
    b = scores["per_class"]["b"]
    assert b["precision"] == 0.5 and b["recall"] == 0.5 and b["f1"] == 0.5 and b["support"] == 2
    a = scores["per_class"]["a"]
    assert a["precision"] == 1.0 and a["recall"] == pytest.approx(0.6667, abs=1e-4)


def test_a_class_never_predicted_scores_zero_not_nan():
    scores = evaluation.classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert scores["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def _is_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    return True


def test_every_plot_is_a_valid_png(tmp_path):
    history = visiontune.PhasedHistory()
    history.history = {"phase": ["head", "head", "finetune"], "loss": [1.0, 0.8, 0.5],
                       "val_loss": [1.1, 0.9, 0.7], "accuracy": [0.5, 0.6, 0.8],
                       "val_accuracy": [0.4, 0.6, 0.7]}
    history.epoch = [0, 1, 2]
    plots.learning_curves(history, str(tmp_path / "curves.png"))
    plots.confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], str(tmp_path / "cm.png"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet([1, 1], size=6)
    labels = np.array([0, 1, 0, 1, 0, 1])
    grid = plots.prediction_grid(images, labels, probs, ["cat", "dog"],
                                 str(tmp_path / "grid.png"))
    plots.class_counts({"train": {"cat": 5, "dog": 2}, "val": {"cat": 1, "dog": 1}},
                       str(tmp_path / "counts.png"))
    for name in ("curves.png", "cm.png", "grid.png", "counts.png"):
        assert _is_png(str(tmp_path / name))
    assert sorted(os.listdir(tmp_path)) == ["cm.png", "counts.png", "curves.png", "grid.png"]
    # Mistakes come first and are titled in red; without a path nothing is written.
    wrong = probs.argmax(axis=1) != labels
    colors = [ax.title.get_color() for ax in grid.axes if ax.get_title()]
    assert colors == ["red"] * wrong.sum() + ["black"] * (~wrong).sum()
    assert plots.image_grid(images, [str(i) for i in range(6)]).axes
    assert len(os.listdir(tmp_path)) == 4
