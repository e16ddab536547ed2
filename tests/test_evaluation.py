import os

import numpy as np
import pytest
from PIL import Image

import visiontune
from conftest import assert_picture
from visiontune.evaluation import metrics as evaluation, plots


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
        assert_picture(str(tmp_path / name))
    assert_picture(str(tmp_path / "curves.png"), size=(1000, 400))  # figsize 10 x 4 at 100 dpi
    assert sorted(os.listdir(tmp_path)) == ["cm.png", "counts.png", "curves.png", "grid.png"]
    # Mistakes come first and are titled in red; without a path nothing is written.
    wrong = probs.argmax(axis=1) != labels
    colors = [ax.title.get_color() for ax in grid.axes if ax.get_title()]
    assert colors == ["red"] * wrong.sum() + ["black"] * (~wrong).sum()
    assert plots.image_grid(images, [str(i) for i in range(6)]).axes
    assert len(os.listdir(tmp_path)) == 4


def _lines(ax):
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_plots_draw_the_numbers_they_are_given():
    """Each figure shows the given values, where they belong, not only some axes."""
    history = visiontune.PhasedHistory()
    history.history = {"phase": ["head", "head", "finetune"], "loss": [1.0, 0.8, 0.5],
                       "val_loss": [1.1, 0.9, 0.7], "accuracy": [0.5, 0.6, 0.8],
                       "val_accuracy": [0.4, 0.6, 0.7]}
    history.epoch = [0, 1, 2]
    loss_ax, acc_ax = plots.learning_curves(history).axes
    assert _lines(loss_ax) == {"loss": [1.0, 0.8, 0.5], "val_loss": [1.1, 0.9, 0.7]}
    assert _lines(acc_ax) == {"accuracy": [0.5, 0.6, 0.8], "val_accuracy": [0.4, 0.6, 0.7]}
    assert list(loss_ax.get_lines()[0].get_xdata()) == [1, 2, 3]
    # One phase boundary, between epochs 2 and 3.
    boundaries = [list(line.get_xdata()) for line in loss_ax.get_lines()
                  if line.get_label().startswith("_")]
    assert boundaries == [[2.5, 2.5]]

    (ax,) = plots.confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"]).axes
    np.testing.assert_array_equal(ax.images[0].get_array(), [[3, 1], [0, 4]])
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]

    (ax,) = plots.class_counts({"train": {"cat": 5, "dog": 2},
                                "val": {"cat": 1, "dog": 1}}).axes
    assert [p.get_height() for p in ax.patches] == [5, 2, 1, 1]

    rows = [{"method": "linear probe", "val_accuracy": 0.81, "trainable_params": 3075,
             "total_s": 4.0},
            {"method": "two-phase", "val_accuracy": 0.9, "trainable_params": 900000,
             "total_s": 30.0}]
    panels = plots.method_comparison(rows).axes
    for ax, key in zip(panels, ("val_accuracy", "trainable_params", "total_s")):
        assert [p.get_width() for p in ax.patches] == [r[key] for r in rows], key
        assert [t.get_text() for t in ax.get_yticklabels()] == ["linear probe", "two-phase"]

    sweep = [{"alpha": 0.0, "clean": 0.7, "shifted": 0.6},
             {"alpha": 1.0, "clean": 0.9, "shifted": 0.5}]
    (ax,) = plots.interpolation(sweep, best_alpha=1.0).axes
    assert _lines(ax) == {"clean validation": [0.7, 0.9], "shifted validation": [0.6, 0.5],
                          "saved: alpha 1": [0, 1]}
    (ax,) = plots.lr_sweep([1e-4, 1e-3, 1e-2], [2.0, 1.0, 3.0], suggestion=1e-4).axes
    assert list(ax.get_lines()[0].get_ydata()) == [2.0, 1.0, 3.0]
    assert list(ax.get_lines()[1].get_xdata()) == [1e-4, 1e-4]


def test_the_picture_check_tells_empty_axes_from_a_plot(tmp_path):
    empty = plots.lr_sweep([], [], path=str(tmp_path / "empty.png"))
    assert empty.axes
    with pytest.raises(AssertionError, match="shows no data"):
        assert_picture(str(tmp_path / "empty.png"))
    plots.lr_sweep([1e-4, 1e-3, 1e-2], [2.0, 1.0, 3.0], path=str(tmp_path / "sweep.png"))
    assert_picture(str(tmp_path / "sweep.png"), size=(600, 400))


def test_calibration_error_is_the_weighted_gap_per_bin():
    # 4 images at 0.95 of which 2 are right (gap 0.45), 6 at 0.55 all right (gap 0.45):
    # ECE = 0.4 * 0.45 + 0.6 * 0.45 = 0.45. An unweighted mean over bins would also give
    # 0.45, so the second case weighs them differently: a signed gap would give 0.09.
    p_hi, p_lo = [0.95, 0.05], [0.55, 0.45]
    labels = [0, 0, 1, 1] + [0] * 6
    scores = evaluation.calibration(labels, [p_hi] * 4 + [p_lo] * 6)
    assert scores["ece"] == pytest.approx(0.45)
    assert [(b["images"], b["accuracy"], b["confidence"]) for b in scores["bins"]] == \
        [(6, 1.0, 0.55), (4, 0.5, 0.95)]
    # 2 overconfident images at 0.95 (both wrong) and 8 right at 0.55: 0.2*0.95 + 0.8*0.45.
    scores = evaluation.calibration([1, 1] + [0] * 8, [p_hi] * 2 + [p_lo] * 8)
    assert scores["ece"] == pytest.approx(0.2 * 0.95 + 0.8 * 0.45)
    # Perfect calibration: 0.8 confident, right 4 times in 5; a probability of 1 is binned.
    p = [[0.8, 0.2]] * 5 + [[0.0, 1.0]] * 5
    scores = evaluation.calibration([0, 0, 0, 0, 1] + [1] * 5, p)
    assert scores["ece"] == pytest.approx(0.0, abs=1e-9)
    assert scores["bins"][-1]["high"] == 1.0 and scores["bins"][-1]["images"] == 5
    low, high = scores["ece_ci95"]
    assert 0 <= low <= high and high > 0  # Resamples of 10 images are not perfect.


def test_nll_is_the_mean_cross_entropy_of_the_true_class():
    import keras

    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=20)
    labels = rng.integers(0, 3, 20)
    expected = float(np.mean(keras.losses.sparse_categorical_crossentropy(labels, p)))
    assert evaluation.calibration(labels, p)["nll"] == pytest.approx(expected, abs=1e-4)


def test_reliability_diagram_draws_each_bin(tmp_path):
    scores = evaluation.calibration([0, 0, 1, 1] + [0] * 6,
                                    [[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 6)
    path = str(tmp_path / "reliability.png")
    (ax,) = plots.reliability_diagram(scores, path).axes
    assert [round(p.get_height(), 4) for p in ax.patches] == [1.0, 0.5]
    assert "ECE 0.450" in ax.get_title()
    assert _is_png(path)
    assert_picture(path)


def test_prediction_grid_puts_the_predicted_class_heatmap_beside_each_mistake():
    from visiontune.evaluation.explain import overlay

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    probs = np.array([[.8, .1, .1], [.1, .2, .7], [.1, .1, .8], [.2, .7, .1], [.1, .8, .1]])
    calls = []

    def explain(x, classes):  # Heatmap k is constant k / 10, so each can be told apart.
        calls.append((x.copy(), np.asarray(classes).tolist()))
        return np.stack([np.full(x.shape[1:3], (k + 1) / 10) for k in range(len(x))])

    fig = plots.prediction_grid(images, labels, probs, ["a", "b", "c"], explain=explain)
    # Mistakes (images 1 and 3) first, explained for the class predicted (2 and 1).
    (x, classes), = calls
    np.testing.assert_array_equal(x, images[[1, 3]])
    assert classes == [2, 1]
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in titled] == \
        ["true: b", "Grad-CAM of pred", "true: a", "Grad-CAM of pred", "true: a", "true: c",
         "true: b"]
    np.testing.assert_array_equal(titled[1].images[0].get_array(),
                                  overlay(images[1], np.full((8, 8), 0.1)))
    np.testing.assert_array_equal(titled[3].images[0].get_array(),
                                  overlay(images[3], np.full((8, 8), 0.2)))
    # No mistakes: no heatmaps are asked for, and the plain grid is drawn.
    right = np.eye(3)[[0, 1, 2, 0, 1]]
    plots.prediction_grid(images, labels, right, ["a", "b", "c"], explain=explain)
    assert len(calls) == 1
