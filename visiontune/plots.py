"""The run's pictures: learning curves, confusion matrix, and a grid of predictions.

Figures are drawn on `matplotlib.figure.Figure` objects, not through pyplot,
so importing visiontune never changes the user's matplotlib backend, and each
PNG is written atomically.
"""

import numpy as np
from matplotlib.figure import Figure

from visiontune import rundir


def learning_curves(history, path):
    """Plots loss and accuracy per epoch, training and validation, with phase boundaries."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    epochs = np.arange(1, len(history.epoch) + 1)
    phases = history.history["phase"]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history.history:
                ax.plot(epochs, history.history[key], style, marker="o", markersize=3, label=key)
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle=":")
                ax.text(i + 0.6, ax.get_ylim()[1], f"{phases[i]} \u2192", va="top",
                        fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    _save(fig, path)


def confusion_matrix(matrix, class_names, path):
    """Plots a confusion matrix (rows: true class, columns: predicted) with counts."""
    matrix = np.asarray(matrix)
    size = max(4, 0.6 * len(class_names) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    _save(fig, path)


def prediction_grid(images, labels, probabilities, class_names, path, count=16):
    """Shows images with true and predicted labels; wrong predictions are framed in red.

    The mistakes come first, so the grid shows what the model gets wrong.
    """
    predicted = probabilities.argmax(axis=1)
    order = np.argsort(predicted == labels, kind="stable")[:count]
    cols = 4
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order):
        wrong = predicted[i] != labels[i]
        ax.imshow(images[i])
        ax.set_title(f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} "
                     f"({probabilities[i, predicted[i]]:.2f})", fontsize=8,
                     color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("red")
                spine.set_linewidth(3)
    _save(fig, path)


def _save(fig, path):
    with rundir.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
