"""The `tf.data` pipelines every data source ends in.

Decode (files only) and resize in parallel, cache the uint8 pixels in memory
when they fit, shuffle, batch as float32 RGB in [0, 255], prefetch.
"""

import keras
import numpy as np
import tensorflow as tf

from visiontune.common import checks

_CACHE_BUDGET_BYTES = 2 * 1024**3


def file_pipeline(files, image_size, batch_size=32, shuffle=False, seed=0, resize="crop",
                  keep=True):
    """Returns a batched pipeline that decodes and resizes image files in parallel.
    `keep=False` never caches the pixels (for a pipeline read once)."""
    to_size = resize_fn(image_size, resize)

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return to_size(image, label)

    ds = tf.data.Dataset.from_tensor_slices((files.paths, np.asarray(files.labels, np.int32)))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return finish(ds, len(files.paths), image_size, batch_size, shuffle, seed, keep)


def tensor_pipeline(x, y, image_size, batch_size=32, shuffle=False, seed=0, resize="crop",
                    keep=True):
    """Returns a batched pipeline from in-memory images of one size."""
    labels = y.astype(np.float32) if y.ndim == 2 else y.astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, labels))
    ds = ds.map(resize_fn(image_size, resize), num_parallel_calls=tf.data.AUTOTUNE)
    return finish(ds, len(x), image_size, batch_size, shuffle, seed, keep)


def resize_fn(image_size, policy):
    """Returns a `(image, label) -> (uint8 image, label)` resize with `crop` or `stretch`."""
    height, width = checks.normalize_size(image_size)
    layer = keras.layers.Resizing(height, width, crop_to_aspect_ratio=policy == "crop")

    def resize(image, label):
        resized = layer(tf.cast(image, tf.float32))
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), label

    return resize


def finish(ds, count, image_size, batch_size, shuffle=False, seed=0, keep=True):
    """Caches uint8 images when they fit (and `keep`), then shuffles and batches as float32."""
    height, width = checks.normalize_size(image_size)
    if keep and count * height * width * 3 <= _CACHE_BUDGET_BYTES:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)
