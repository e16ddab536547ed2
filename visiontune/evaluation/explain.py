"""Grad-CAM: where in an image a classifier found the evidence for a class.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017. On the backbone's last feature map A
(h x w x K), the weight of channel k is the spatial mean of d score / d A_k,
where the score is the class's logit (before softmax or sigmoid); the map is
ReLU(sum_k weight_k A_k), upsampled to the image and scaled to [0, 1].

Written here because Keras has no Grad-CAM (keras.io has it as an example
script, for one Xception layer by name). The classifier is cut at its
backbone's output, the tensor of the classifier's own call of it, as
`training/caching.py` cuts it: two models that share its layers and weights.
"""

import keras
import numpy as np
import tensorflow as tf

from visiontune.common import keras_private
from visiontune.tuning import freezing


def explain(model, images, class_index=None, batch_size=32):
    """Grad-CAM heatmaps of `model` for `images`, on its backbone's last feature map.

    Works for every classifier `build_classifier` makes (any registry family, or
    a backbone of your own) and for a run's `model.keras` loaded with plain Keras.

    Args:
        model: A classifier: preprocessing, one nested backbone model, a head.
        images: Raw pixels, shape `(N, height, width, 3)` at the model's input
            size, as the model itself takes them (0-255).
        class_index: The class to explain: `None` for each image's predicted
            class, an int for one class for all, or one int per image.
        batch_size: Images per gradient computation.

    Returns:
        A float32 array `(N, height, width)` in [0, 1]: 1 where the evidence for
        the class is strongest. An image with no positive evidence is all zeros.

    Example:

    >>> heatmaps = visiontune.explain(model, images)            # predicted classes
    >>> heatmaps = visiontune.explain(model, images, class_index=2)
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must have shape (N, height, width, 3). Received shape "
                         f"{images.shape}.")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and tuple(images.shape[1:3]) != expected:
        raise ValueError(f"`images` are {images.shape[1]}x{images.shape[2]}; the model takes "
                         f"{expected[0]}x{expected[1]}. Resize them first (as "
                         "`python -m visiontune.explain` does).")
    classes = _class_indices(class_index, len(images), model.output_shape[-1])
    features_of, hidden_of, output_layer = _split_at_backbone(model)
    maps = []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start:start + batch_size], dtype=tf.float32)
        features = tf.cast(features_of(x, training=False), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(features)
            hidden = tf.cast(hidden_of(features, training=False), tf.float32)
            scores = _logits(output_layer, hidden)
            chosen = (tf.argmax(scores, axis=-1, output_type=tf.int32) if classes is None
                      else tf.constant(classes[start:start + batch_size], tf.int32))
            score = tf.gather(scores, chosen, batch_dims=1)
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        maps.append((cam / tf.where(peak > 0, peak, 1.0)).numpy())
    return np.concatenate(maps).astype("float32")


def _class_indices(class_index, count, num_classes):
    if class_index is None:
        return None
    classes = (np.full(count, class_index) if np.ndim(class_index) == 0
               else np.asarray(class_index))
    if classes.shape != (count,) or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"`class_index` must be None, an int, or {count} ints (one per "
                         f"image). Received: {class_index!r}")
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"`class_index` must be in [0, {num_classes}). Received: "
                         f"{sorted(set(classes.tolist()))}")
    return classes


def _split_at_backbone(model):
    """Two models sharing `model`'s layers, and its output layer: image -> backbone
    feature map, and feature map -> the input of the output layer, whose logits
    `explain` computes itself (`_logits`)."""
    backbone = freezing.find_backbone(model)
    output_layer = model.layers[-1]
    activation = getattr(getattr(output_layer, "activation", None), "__name__", "")
    if not (isinstance(output_layer, keras.layers.Dense) and activation in ("softmax",
                                                                             "sigmoid")):
        raise ValueError(
            f"Grad-CAM needs the class logits: the last layer of model {model.name!r} must be "
            f"a Dense layer with a softmax or sigmoid activation, as `build_classifier` makes "
            f"it. It is {type(output_layer).__name__} {output_layer.name!r}"
            f"{f' ({activation})' if activation else ''}.")
    # The classifier's own call of each: `keras_private.call_tensors` says why it is private.
    features = keras_private.call_tensors(backbone)[1][0]
    hidden = keras_private.call_tensors(output_layer)[0][0]
    return keras.Model(model.inputs, features), keras.Model(features, hidden), output_layer


def _logits(output_layer, hidden):
    """The output Dense without its activation (`kernel` includes any LoRA adapter)."""
    logits = keras.ops.matmul(hidden, keras.ops.cast(output_layer.kernel, hidden.dtype))
    if output_layer.bias is not None:
        logits = logits + keras.ops.cast(output_layer.bias, hidden.dtype)
    return logits


def explainer_or_none(model, warn=print):
    """`explain` for `plots.prediction_grid`: a failure (a model Grad-CAM cannot cut)
    draws the grid without heatmaps and says why, rather than losing a finished run."""
    def explain_mistakes(images, classes):
        try:
            return explain(model, images, classes)
        except Exception as error:  # noqa: BLE001  (a plot must not fail a run)
            warn(f"Warning: no Grad-CAM in val_predictions.png: {type(error).__name__}: {error}")
            return None
    return explain_mistakes


def overlay(image, heatmap, alpha=0.45):
    """`image` (H, W, 3, 0-255) with `heatmap` (H, W, 0-1) in the jet colours over it,
    as uint8: red where the evidence is strongest."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    image = np.asarray(image, dtype="float32")
    return np.clip((1 - alpha) * image + alpha * colours, 0, 255).astype("uint8")
