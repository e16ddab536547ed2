"""Weight interpolation between the start and the end of fine-tuning (WiSE-FT).

Fine-tuning can cost robustness to distribution shift. Linearly interpolating
the fine-tuned weights with the starting ones recovers much of it while
keeping most of the in-distribution accuracy (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022). The starting model here is the
one after phase 1: the pretrained backbone with the trained head. Keras has no
such function; it is one weighted sum per variable.

`python -m visiontune.interpolate RUN_DIR --alphas 0,0.25,0.5,0.75,1`
(`cli/interpolate.py`) sweeps alpha for a finished run. It scores each model on
the run's validation images and on a shifted copy of them (`corrupt`: blur,
noise, low contrast, JPEG), writes a table and a plot into the run, and saves the best model for
`--select`. The run keeps its weights after phase 1 for this
(`after-head.weights.npz`).
"""

import os

import keras
import numpy as np
import tensorflow as tf

from visiontune.common import targets
from visiontune.data import splits


START_WEIGHTS = "after-head.weights.npz"
CORRUPTIONS = ("blur", "noise", "contrast", "jpeg")


def interpolate(start_model, finetuned_model, alpha):
    """Returns a new model with weights `(1 - alpha) * start + alpha * finetuned`.

    Args:
        start_model: The model before fine-tuning (after phase 1).
        finetuned_model: The same architecture after fine-tuning (phase 2).
        alpha: 0 gives the start model's weights, 1 the fine-tuned model's;
            values in between mix them. Values outside [0, 1] extrapolate.

    Returns:
        A new `keras.Model`, a clone of `finetuned_model` with the mixed
        weights. Neither input is changed.

    Example:

    >>> half = visiontune.interpolate(after_phase_1, after_phase_2, 0.5)
    """
    model = keras.models.clone_model(finetuned_model)
    _assign(model, _mixed(start_model, finetuned_model, alpha))
    return model


def _mixed(start_model, finetuned_model, alpha):
    """The interpolated weight values, after checking that the architectures match."""
    start, end = start_model.weights, finetuned_model.weights
    if len(start) != len(end):
        raise ValueError(
            f"Cannot interpolate: start_model has {len(start)} weights and finetuned_model "
            f"has {len(end)}. Pass two versions of the same architecture, e.g. one run's "
            "model after phase 1 and after phase 2.")
    for a, b in zip(start, end):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            raise ValueError(
                f"Cannot interpolate: weight {a.path!r} of start_model is {a.dtype} "
                f"{tuple(a.shape)}, but its counterpart {b.path!r} in finetuned_model is "
                f"{b.dtype} {tuple(b.shape)}. Pass two versions of the same architecture.")
    alpha = float(alpha)
    mixed = []
    for a, b in zip(start, end):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        # Integer state (e.g. random-seed counters) is taken from the fine-tuned model.
        mixed.append((1 - alpha) * a + alpha * b if np.issubdtype(b.dtype, np.floating)
                     else b)
    return mixed


def _assign(model, values):
    for variable, value in zip(model.weights, values):
        variable.assign(value.astype(variable.dtype))


def corrupt(pixels, seed=0):
    """Returns a shifted copy of uint8 images: image i gets corruption `CORRUPTIONS[i % 4]`.

    Gaussian blur (sigma 2), Gaussian noise (std 25, seeded), contrast cut to
    40%, and JPEG quality 10: fixed, so every model is scored on the same images.
    """
    x = tf.constant(pixels, tf.float32)
    radius = 4
    taps = tf.exp(-tf.range(-radius, radius + 1, dtype=tf.float32) ** 2 / (2 * 2.0 ** 2))
    kernel = taps[:, None] * taps[None, :]
    kernel = tf.tile((kernel / tf.reduce_sum(kernel))[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [radius] * 2, [radius] * 2, [0, 0]],
                                            "REFLECT"), kernel, [1, 1, 1, 1], "VALID")
    noisy = x + tf.random.stateless_normal(tf.shape(x), seed=[seed, 0], stddev=25.0)
    low_contrast = tf.image.adjust_contrast(x, 0.4)
    out = []
    for i, image in enumerate(np.asarray(pixels, np.uint8)):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        if kind == "jpeg":  # uint8 in, uint8 out.
            out.append(tf.cast(tf.image.adjust_jpeg_quality(image, 10), tf.float32))
        else:
            out.append({"blur": blurred, "noise": noisy, "contrast": low_contrast}[kind][i])
    return np.clip(np.round(np.stack(out)), 0, 255).astype(np.uint8)


def score_alphas(start, finetuned, pixels, labels, alphas, verbose=True):
    """Accuracy of `interpolate(start, finetuned, alpha)` on clean and `corrupt`ed images.

    Args:
        start, finetuned: The models to interpolate (see `interpolate`).
        pixels: uint8 images, `(n, height, width, 3)`.
        labels: Integer labels, `(n,)`.
        alphas: The alphas to score.
        verbose: Print one line per alpha.

    Returns:
        One dict per alpha: `alpha`, `clean`, `shifted` and their `mean`.
    """
    shifted = corrupt(pixels)
    rows = []
    model = keras.models.clone_model(finetuned)  # One model for all alphas: one trace.
    for alpha in alphas:
        _assign(model, _mixed(start, finetuned, alpha))
        row = {"alpha": float(alpha)}
        for name, images in (("clean", pixels), ("shifted", shifted)):
            predicted = model.predict(images.astype(np.float32), verbose=0).argmax(axis=1)
            row[name] = float(np.mean(predicted == targets.class_indices(labels)))
        row["mean"] = (row["clean"] + row["shifted"]) / 2
        rows.append(row)
        if verbose:
            print(f"alpha {alpha:<5g} clean {row['clean']:.3f}  shifted {row['shifted']:.3f}")
    return rows


def run_split_file(run_dir, source, config):
    """The run's `split.json`, if its validation images came from a random split.

    A `val/` folder (or `--val-data`) fixes the validation images itself; the split
    file would then be checked against the training folder alone, which does not
    hold them (`splits.reuse_split`).
    """
    own_val = config.get("val_data") or (
        isinstance(source, str) and os.path.isdir(source)
        and "val" in splits.split_subfolders(source))
    return None if own_val else os.path.join(run_dir, "split.json")


def start_model(run_dir, finetuned):
    """The run's model after phase 1 (`START_WEIGHTS`): `finetuned`'s architecture with the
    weights it had when the head was trained and the backbone not yet unfrozen."""
    path = os.path.join(run_dir, START_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found: the run has no weights from after phase 1. Runs keep them "
            "when phase 1 ran (head_epochs > 0) with this version of visiontune; train the "
            "run again to sweep it.")
    start = keras.models.clone_model(finetuned)
    with np.load(path) as saved:
        start.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    return start
