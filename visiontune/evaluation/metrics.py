"""Scores a classifier on a dataset: predictions, per-class metrics, confusion matrix."""

import math

import keras
import numpy as np

from visiontune.common import targets


TTA = ("none", "flip")


def probabilities(model, images, tta="none"):
    """Returns class probabilities for images, averaged over test-time augmentations.

    `tta="flip"` averages the predictions for each image and its horizontal
    mirror, a view every augmentation preset also trains on.
    """
    if tta not in TTA:
        raise ValueError(f"Expected --tta in {TTA}. Received: {tta!r}")
    images = np.asarray(images, dtype=np.float32)
    probs = model.predict(images, batch_size=64, verbose=0)
    if tta == "flip":
        probs = (probs + model.predict(images[:, :, ::-1], batch_size=64, verbose=0)) / 2
    return probs


def predict(model, dataset, verbose=0, tta="none"):
    """Returns `(images, labels, probabilities)` over a batched `(images, labels)` dataset.

    One-hot (mixed) labels are turned back into class indices. Images are
    kept as uint8 for plotting. `tta` as in `probabilities`.
    """
    images, labels, probs = [], [], []
    for x, y in dataset:
        # Not `predict_on_batch`: under a tf.distribute strategy (Keras 3.15) it returns
        # each replica's outputs concatenated, twice as many rows as images on two replicas.
        probs.append(probabilities(model, x, tta))
        labels.append(targets.class_indices(y))
        images.append(np.asarray(x).clip(0, 255).astype(np.uint8))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(probs)


def classification_metrics(labels, predictions, class_names):
    """Returns accuracy, the confusion matrix and per-class precision, recall and F1.

    `confusion_matrix[i][j]` counts images of class i predicted as class j.
    A class never predicted has precision 0 (not NaN), as scikit-learn's
    `zero_division=0`.
    """
    k = len(class_names)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    true_pos = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros(k), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(k), where=total > 0)
    correct, images = int(true_pos.sum()), int(matrix.sum())
    return {
        "accuracy": correct / max(images, 1),
        "images": images,
        "accuracy_ci95": list(wilson_interval(correct, images)),
        "confusion_matrix": matrix.tolist(),
        "per_class": {name: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                             "f1": round(float(f), 4), "support": int(n)}
                      for name, p, r, f, n in zip(class_names, precision, recall, f1, actual)},
    }


def wilson_interval(successes, trials, z=1.959964):
    """Returns the Wilson score interval `(low, high)` for a proportion (95% by default).

    Unlike the normal approximation p ± z·sqrt(p(1-p)/n), it stays inside
    [0, 1] and does not collapse to a point at 0 or n successes, which matters
    for the small validation sets this tool is made for (Wilson 1927; Brown,
    Cai and DasGupta 2001 recommend it). 0 trials give `(0.0, 1.0)`.
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials
                                                 + z * z / (4 * trials * trials))
    # At 0 or n successes the bound is exactly 0 or 1; floating point may miss it by an ulp.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def describe_accuracy(accuracy, interval, images):
    """Returns e.g. `"0.941 (95% CI 0.89–0.97, 153 images)"`."""
    return f"{accuracy:.3f} (95% CI {interval[0]:.2f}–{interval[1]:.2f}, {images:,} images)"


def calibration(labels, probabilities, bins=15, resamples=1000, seed=0):
    """How far the top-class probability can be trusted: ECE, its interval, and NLL.

    The expected calibration error (Guo et al., "On Calibration of Modern
    Neural Networks", ICML 2017) puts the images into `bins` equal-width bins of
    top-class probability and averages |accuracy - mean probability| over the
    bins, weighted by their share of images. On a small validation set it is
    noisy and biased upward; a 95% percentile-bootstrap interval comes with it
    to show the noise (it does not remove the bias). The negative log-likelihood
    is the mean of -log p(true class), without the head's weight penalties.

    Returns:
        `{"ece", "ece_ci95", "nll", "bins"}`; `bins` holds, per non-empty bin,
        its range, image count, accuracy and mean probability (what the
        reliability diagram draws).
    """
    labels = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype="float64")
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == labels).astype(float)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)  # [k/bins, (k+1)/bins)

    def ece(index):
        count = np.bincount(which[index], minlength=bins)
        gap = np.abs(np.bincount(which[index], correct[index], bins)
                     - np.bincount(which[index], confidence[index], bins))
        return float(gap.sum() / max(count.sum(), 1))

    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    boot = [ece(rng.integers(0, len(labels), len(labels))) for _ in range(resamples)] \
        if len(labels) else [0.0]
    # Clipped as Keras's cross-entropy clips, so `nll` is the loss without penalties.
    eps = keras.config.epsilon()
    nll = float(np.mean(-np.log(np.clip(p[everything, labels], eps, 1.0 - eps)))) \
        if len(labels) else 0.0
    per_bin = [{"low": round(b / bins, 4), "high": round((b + 1) / bins, 4),
                "images": int((which == b).sum()),
                "accuracy": round(float(correct[which == b].mean()), 4),
                "confidence": round(float(confidence[which == b].mean()), 4)}
               for b in range(bins) if (which == b).any()]
    return {"ece": round(ece(everything), 4),
            "ece_ci95": [round(float(np.percentile(boot, 2.5)), 4),
                         round(float(np.percentile(boot, 97.5)), 4)],
            "nll": round(nll, 4), "bins": per_bin}
