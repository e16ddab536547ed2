"""The run's pictures: learning curves, confusion matrix, and a grid of predictions.

Figures are drawn on `matplotlib.figure.Figure` objects, not through pyplot,
so importing visiontune never changes the user's matplotlib backend. Each
function returns its figure (a notebook shows it inline) and, given a `path`,
also writes it as a PNG, atomically.
"""

import numpy as np
from matplotlib.figure import Figure

from visiontune.common import atomic


def learning_curves(history, path=None):
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
    return _save(fig, path)


def confusion_matrix(matrix, class_names, path=None):
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
    return _save(fig, path)


def prediction_grid(images, labels, probabilities, class_names, path=None, count=16,
                    explain=None):
    """Shows images with true and predicted labels; wrong predictions are framed in red.

    The mistakes come first, so the grid shows what the model gets wrong. With
    `explain` (a function from images and class indices to heatmaps in [0, 1],
    e.g. `lambda x, c: visiontune.explain(model, x, c)`), each mistake has its
    Grad-CAM for the predicted class beside it: what the model took as evidence.
    `explain` may return `None` for no heatmaps.
    """
    predicted = probabilities.argmax(axis=1)
    order = np.argsort(predicted == labels, kind="stable")[:count]
    titles = [f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} "
              f"({probabilities[i, predicted[i]]:.2f})" for i in order]
    wrong = predicted[order] != labels[order]
    if explain is None or not wrong.any():
        return image_grid(images[order], titles, path, wrong=wrong)
    mistakes = order[wrong]
    heatmaps = explain(images[mistakes], predicted[mistakes])
    if heatmaps is None:  # The explainer could not explain this model.
        return image_grid(images[order], titles, path, wrong=wrong)
    return _pairs_grid(images[order], titles, wrong, heatmaps, path)


def _pairs_grid(images, titles, wrong, heatmaps, path, cols=4):
    """`image_grid` with two columns per image: a mistake beside its heatmap over it
    (`heatmaps` holds one per mistake, in order); a correct image across both."""
    from visiontune.evaluation.explain import overlay

    rows = max(1, int(np.ceil(len(images) / cols)))
    fig = Figure(figsize=(4.4 * cols, 2.8 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 2 * cols)
    maps = iter(heatmaps)
    for i, (image, title, bad) in enumerate(zip(images, titles, wrong)):
        r, c = divmod(i, cols)
        image = np.asarray(image, dtype="uint8")
        if bad:
            plain, explained = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
            explained.imshow(overlay(image, next(maps)))
            explained.set_title("Grad-CAM of pred", fontsize=8)
            explained.axis("off")
        else:
            plain = fig.add_subplot(grid[r, 2 * c:2 * c + 2])
        plain.imshow(image)
        plain.set_title(title, fontsize=8, color="red" if bad else "black")
        plain.set_xticks([])
        plain.set_yticks([])
        for spine in plain.spines.values():
            spine.set_visible(bool(bad))
            spine.set_color("red")
            spine.set_linewidth(3)
    return _save(fig, path)


def image_grid(images, titles, path=None, wrong=None, cols=4, title=None):
    """Shows uint8 images in a grid with a title each; `wrong` ones are framed in red.
    `title` goes above the grid."""
    wrong = np.zeros(len(images), bool) if wrong is None else np.asarray(wrong)
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, title, bad in zip(axes, images, titles, wrong):
        ax.imshow(image)
        ax.set_title(title, fontsize=8, color="red" if bad else "black")
        if bad:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("red")
                spine.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    return _save(fig, path)


def explanation_grid(images, heatmaps, titles, path=None, wrong=None, pairs_per_row=2):
    """Each uint8 image beside its Grad-CAM heatmap over it (`explain.overlay`), with a
    title each; `wrong` ones have their title in red."""
    from visiontune.evaluation.explain import overlay

    wrong = np.zeros(len(images), bool) if wrong is None else np.asarray(wrong)
    cols = 2 * min(pairs_per_row, max(1, len(images)))
    rows = max(1, int(np.ceil(2 * len(images) / cols)))
    fig = Figure(figsize=(2.2 * cols, 2.5 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (image, heatmap, title, bad) in enumerate(zip(images, heatmaps, titles, wrong)):
        plain, explained = axes[2 * i], axes[2 * i + 1]
        plain.imshow(np.asarray(image, dtype="uint8"))
        plain.set_title(title, fontsize=8, color="red" if bad else "black", loc="left")
        explained.imshow(overlay(image, heatmap))
        explained.set_title("Grad-CAM", fontsize=8)
    return _save(fig, path)


def class_counts(counts, path=None):
    """Bar chart of images per class; `counts` maps a split name to `{class: count}`."""
    names = list(next(iter(counts.values())))
    fig = Figure(figsize=(max(4, 0.9 * len(names) + 2), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(counts)
    for i, (split, per_class) in enumerate(counts.items()):
        x = np.arange(len(names)) + (i - (len(counts) - 1) / 2) * width
        bars = ax.bar(x, [per_class.get(name, 0) for name in names], width, label=split)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.legend()
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    return fig


def lr_sweep(learning_rates, losses, suggestion=None, path=None):
    """Plots the learning-rate finder's smoothed loss against the rate (log scale)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(learning_rates, losses)
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    return _save(fig, path)


def interpolation(rows, best_alpha=None, path=None):
    """Plots clean and shifted validation accuracy against the interpolation weight alpha."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    alphas = [r["alpha"] for r in rows]
    for key in ("clean", "shifted"):
        ax.plot(alphas, [r[key] for r in rows], marker="o", label=f"{key} validation")
    if best_alpha is not None:
        ax.axvline(best_alpha, color="grey", linestyle=":", label=f"saved: alpha {best_alpha:g}")
    ax.set_xlabel("alpha (0: after phase 1, 1: fine-tuned)")
    ax.set_ylabel("accuracy")
    ax.legend()
    return _save(fig, path)


def method_comparison(rows, path=None):
    """Bars of validation accuracy, trainable parameters and time, one per method.

    `rows` as in `compare.MethodComparison.rows`.
    """
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    names = [r["method"] for r in rows]
    panels = (("val_accuracy", "validation accuracy", False),
              ("trainable_params", "trainable parameters (log scale)", True),
              ("total_s", "time, phase 1 + 2 (s)", False))
    for ax, (key, label, log) in zip(fig.subplots(1, 3), panels):
        ax.barh(names, [r[key] for r in rows], color="tab:blue")
        ax.set_xlabel(label)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        else:
            for i, r in enumerate(rows):
                ax.text(r[key], i, f" {r[key]:.3g}", va="center", fontsize=8)
    return _save(fig, path)


def reliability_diagram(calibration, path=None, title="validation"):
    """Accuracy against mean top-class probability per bin (`metrics.calibration`):
    on the diagonal, a probability of 0.8 is right 80% of the time."""
    fig = Figure(figsize=(4.6, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    bins = calibration["bins"]
    if bins:
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        width = bins[0]["high"] - bins[0]["low"]
        ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.75,
               label="accuracy in the bin")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o",
                color="black", markersize=3, label="(mean probability, accuracy)")
        for centre, b in zip(centres, bins):
            ax.text(centre, min(b["accuracy"] + 0.02, 0.98), str(b["images"]), ha="center",
                    fontsize=6, color="dimgrey")
    low, high = calibration["ece_ci95"]
    ax.set_title(f"{title}: ECE {calibration['ece']:.3f} (95% CI {low:.3f}-{high:.3f}), "
                 f"NLL {calibration['nll']:.3f}", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-class probability (images per bin above the bars)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)
