"""Scores a classifier on a dataset: predictions, per-class metrics, confusion matrix."""

import numpy as np


def predict(model, dataset, verbose=0):
    """Returns `(images, labels, probabilities)` over a batched `(images, labels)` dataset.

    One-hot (mixed) labels are turned back into class indices. Images are
    kept as uint8 for plotting.
    """
    images, labels, probs = [], [], []
    for x, y in dataset:
        probs.append(model.predict_on_batch(x))
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
