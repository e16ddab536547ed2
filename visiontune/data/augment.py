"""Augmentation presets, built from Keras core layers, applied in the input pipeline.

Augmentation runs in `tf.data`, never inside the model, so the exported model
stays a plain classifier. KerasCV is not used: its last release (0.9.0) was in
April 2024 and its augmentation layers now live in core Keras 3.
"""

import keras
import tensorflow as tf

PRESETS = ("none", "light", "strong")
MIXES = ("none", "mixup", "cutmix")


def augmentation_layers(preset, seed=0):
    """Returns the preset's per-image layers as a `keras.Sequential`, or None.

    `light`: horizontal flip, rotation up to ±18°, zoom up to ±10%, contrast
    ±10%. `strong`: the same, then RandAugment (2 ops, magnitude 0.5).
    """
    if preset not in PRESETS:
        raise ValueError(f"Expected `augment` in {PRESETS}. Received: augment={preset!r}")
    if preset == "none":
        return None
    layers = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
    ]
    if preset == "strong":
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name=f"augment_{preset}")


def apply(ds, preset="none", mix="none", num_classes=None, seed=0):
    """Augments a batched `(images, int labels)` pipeline.

    With `mix="mixup"` or `"cutmix"`, labels become mixed one-hot vectors, so
    the loss becomes categorical cross-entropy.
    """
    if mix not in MIXES:
        raise ValueError(f"Expected `mix` in {MIXES}. Received: mix={mix!r}")
    layers = augmentation_layers(preset, seed)
    if layers is not None:
        ds = ds.map(lambda x, y: (layers(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if mix != "none":
        mixer = (keras.layers.MixUp(seed=seed + 5) if mix == "mixup"
                 else keras.layers.CutMix(seed=seed + 5))

        def mix_batch(x, y):
            out = mixer({"images": x, "labels": tf.one_hot(y, num_classes)}, training=True)
            return out["images"], out["labels"]

        ds = ds.map(mix_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds
