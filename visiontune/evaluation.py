"""Scores a classifier on a dataset: predictions, per-class metrics, confusion matrix."""

import numpy as np


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
        y = np.asarray(y)
        labels.append(y.argmax(axis=-1) if y.ndim == 2 else y)
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
    return {
        "accuracy": float(true_pos.sum() / max(matrix.sum(), 1)),
        "confusion_matrix": matrix.tolist(),
        "per_class": {name: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                             "f1": round(float(f), 4), "support": int(n)}
                      for name, p, r, f, n in zip(class_names, precision, recall, f1, actual)},
    }
