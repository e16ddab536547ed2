"""What kind of labels a dataset carries: sparse class indices, one-hot or multi-hot.

One rule for the whole package. Labels of rank 0 or 1, or with a last axis of
size 1, are sparse class indices: `(N,)` and `(N, 1)` alike, as Keras's
`SparseCategoricalCrossentropy` reads them. Wider labels are one-hot (or
mixed, after MixUp/CutMix) for a softmax classifier, and multi-hot for a
sigmoid (multi-label) one; only the model tells those two apart.
"""

import numpy as np
import tensorflow as tf

SPARSE, ONE_HOT, MULTI_HOT = "sparse", "one-hot", "multi-hot"


def is_multi_label(model):
    """Whether `model` ends in a sigmoid: independent yes/no outputs, multi-hot labels."""
    return model.layers[-1].get_config().get("activation") == "sigmoid"


def is_sparse(labels):
    """Whether `labels` are class indices.

    Args:
        labels: A batched `(images, labels)` `tf.data.Dataset`, a
            `tf.TensorSpec`, or an array of labels.
    """
    if isinstance(labels, tf.data.Dataset):
        labels = labels.element_spec[1]
    if isinstance(labels, tf.TensorSpec):
        if labels.shape.rank is None:  # Unknown rank: only one-hot labels can be read safely.
            return False
        shape = tuple(labels.shape)
    else:
        shape = np.shape(labels)
    return len(shape) <= 1 or shape[-1] == 1


def label_kind(labels, model):
    """`SPARSE`, `ONE_HOT` or `MULTI_HOT`: how `model` must read `labels`."""
    if is_multi_label(model):
        return MULTI_HOT
    return SPARSE if is_sparse(labels) else ONE_HOT


def class_indices(labels):
    """Integer class indices `(N,)` from sparse `(N,)`/`(N, 1)` or one-hot `(N, C)` labels."""
    labels = np.asarray(labels)
    if is_sparse(labels):
        return labels.reshape(-1).astype(np.int64)
    return labels.argmax(axis=-1)
