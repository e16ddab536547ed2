"""Cached training: run the frozen part of the network once, train the rest on its output.

While the backbone is frozen (phase 1), or only its top blocks train (phase
2), everything below the lowest trainable layer is a fixed function of the
image: its BatchNormalization layers use their moving statistics and its
dropout rates are 0 (see `classifier.py`). The usual recipe recomputes it for
every image in every epoch. `plan` cuts the classifier at that boundary into a
`bottom` (images -> activations) and a `trainer` (activations -> classes).
The trainer is built from the classifier's own layer objects, so it shares
their variables: fitting the trainer trains the classifier, and there is
nothing to copy back. `cache` runs the bottom once over a dataset.

Keras and tf.data have no such feature (`Dataset.cache` stores the input, not
a model's activations), hence this module. The trainer is an ordinary Keras
model trained with `fit`, so callbacks, metrics and `BackupAndRestore` work.
"""

import dataclasses
import math
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from visiontune.tuning import freezing
from visiontune.common import checks, keras_private

MODES = ("auto", "off", "memory", "disk")

# Layers whose output changes from call to call in training: the cut goes before them.
_RANDOM_LAYERS = (keras.layers.Dropout, keras.layers.GaussianNoise,
                  keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                  keras.layers.SpatialDropout2D)


@dataclasses.dataclass
class Plan:
    """How one phase trains: on cached activations (`mode` memory or disk) or not ("off")."""

    mode: str
    reason: str
    bottom: keras.Model = None
    trainer: keras.Model = None
    bytes_per_image: int = 0


class CannotCut(ValueError):
    """The classifier has no single tensor below which nothing trains."""


def plan(model, unfreeze_blocks, mode="auto", num_images=None, budget_bytes=None,
         block_patterns=None):
    """Decides whether and where to cache for a phase with `unfreeze_blocks` unfrozen.

    Args:
        model: A classifier from `build_classifier`, with its trainable state set.
        unfreeze_blocks: Top backbone blocks that train; 0 caches pooled features.
        mode: `"auto"` (memory when the estimate fits `budget_bytes`, else
            disk), `"memory"`, `"disk"`, or `"off"`.
        num_images: Images to cache (training plus validation), for the
            memory estimate; `None` when unknown.
        budget_bytes: Memory allowed for the cache; default a quarter of the
            machine's available memory.
        block_patterns: The block grouping that `unfreeze_blocks` counts in, as
            given to `freezing.set_trainable_blocks` (default: the registry's).

    Returns:
        A `Plan`, whose `reason` says what was chosen and why.
    """
    if mode not in MODES:
        raise ValueError(f"Expected `cache` in {MODES}. Received: {mode!r}")
    if mode == "off":
        return Plan("off", "caching is off (cache='off')")
    try:
        bottom, trainer, where = (_cut_head(model) if unfreeze_blocks == 0
                                  else _cut_backbone(model, unfreeze_blocks, block_patterns))
        training_below = [v.path for v in bottom.trainable_weights]
        if training_below:
            raise CannotCut(f"{len(training_below)} weights below {where} train (first: "
                            f"{training_below[0]}), so it is not a fixed function of the "
                            "image (were the trainable blocks set with other "
                            "block_patterns, or a layer unfrozen by hand?)")
    except CannotCut as error:
        return Plan("off", f"not cached: {error}")
    per_image = 4 * math.prod(bottom.output.shape[1:])
    budget = budget_bytes if budget_bytes is not None else memory_budget()
    need = per_image * num_images if num_images else None
    size = (f"{per_image / 1024:.1f} KiB per image" +
            (f", {need / 2**20:.1f} MiB for {num_images} images" if need else ""))
    if mode == "auto":
        fits = need is not None and need <= budget
        chosen = "memory" if fits else "disk"
        why = (f"fits the memory budget of {budget / 2**20:.0f} MiB" if fits else
               "the number of images is unknown" if need is None else
               f"exceeds the memory budget of {budget / 2**20:.0f} MiB")
    else:
        chosen, why = mode, f"cache='{mode}'"
    return Plan(chosen, f"cached in {chosen}: {where}, {size}; {why}", bottom, trainer,
                per_image)


def memory_budget():
    """A quarter of the memory available now (2 GiB when it cannot be read)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


def _backbone_node(model):
    backbone = freezing.find_backbone(model)
    inputs, outputs = keras_private.call_tensors(backbone)  # The classifier's call of it.
    return backbone, inputs[0], outputs[0]


def _single_input(layer):
    inputs, _ = keras_private.call_tensors(layer)
    if len(inputs) != 1:
        raise CannotCut(f"layer {layer.name!r} takes {len(inputs)} inputs")
    return inputs[0]


def _cut_head(model):
    """Phase 1: the bottom ends at the pooled features, the trainer is the rest of the head."""
    _, _, features = _backbone_node(model)
    where = "the backbone's feature map"
    for layer in freezing.head_layers(model):
        if layer.weights or isinstance(layer, _RANDOM_LAYERS):
            features = _single_input(layer)
            where = f"the input of head layer {layer.name!r}"
            break
    return keras.Model(model.input, features), keras.Model(features, model.output), where


def _cut_backbone(model, unfreeze_blocks, block_patterns=None):
    """Phase 2: the bottom ends below the lowest unfrozen block; the trainer is the rest."""
    backbone, backbone_in, backbone_out = _backbone_node(model)
    blocks = freezing._blocks(backbone, block_patterns)
    if unfreeze_blocks >= len(blocks):
        raise CannotCut("the whole backbone trains, so there is nothing fixed to cache")
    lowest = blocks[-unfreeze_blocks]
    boundary = _single_input(lowest.layers[0])
    try:
        top = keras.Model(boundary, backbone.output)
    except ValueError:
        raise CannotCut(f"block {lowest.name!r} also reads tensors from below its input "
                        "(a skip connection across the cut)") from None
    prefix = keras.Model(model.input, backbone_in)  # The fixed input normalisation.
    images = keras.Input(model.input.shape[1:], dtype=model.input.dtype)
    bottom = keras.Model(images, keras.Model(backbone.input, boundary)(prefix(images)))
    activations = keras.Input(boundary.shape[1:])
    head = keras.Model(backbone_out, model.output)
    trainer = keras.Model(activations, head(top(activations)))
    return bottom, trainer, f"the input of block {lowest.name!r}"


def count_images(data):
    """Returns how many examples `data` holds, or `None` when unknown."""
    if isinstance(data, tuple):
        return len(data[0])
    steps = int(data.cardinality())
    if steps <= 0:
        return None
    first = next(iter(data.take(1)))[0]
    return steps * int(first.shape[0])  # An upper bound: the last batch may be smaller.


def cache(plan, data, *, shuffle=True, seed=None, cache_dir=None, name="train",
          copies=1, verbose=True):
    """Runs `plan.bottom` once over `data` and returns a dataset of its activations.

    Args:
        plan: A `Plan` whose mode is memory or disk.
        data: A `tf.data.Dataset` of `(images, labels)` or `(images, labels,
            sample_weights)` batches, or an `(x, y)` pair of arrays.
        shuffle: Reshuffle the cached examples every epoch; without it the
            batches come in the order of this one pass over `data`.
        seed: Shuffle seed.
        cache_dir: Folder for the disk cache (default: a new temporary folder,
            which the caller removes; `fine_tune` does).
        name: Names the disk cache file and the progress bar.
        copies: Passes over `data` to cache. With random augmentation in
            `data`, each pass is a differently augmented copy of the
            training set, and every epoch then trains on one of the copies,
            drawn at random (seeded). 1 caches one pass.
        verbose: 0 quiet, 1 a progress bar, 2 one line when done.

    Returns:
        A `tf.data.Dataset` of batches with the same batch size and structure.
    """
    if isinstance(data, tuple):
        data = tf.data.Dataset.from_tensor_slices(data).batch(32)
    checks.check_int(copies, "copies", 1)
    steps = int(data.cardinality())
    bar = keras.utils.Progbar(steps * copies if steps > 0 else None,
                              verbose=int(verbose), unit_name="batch")
    if verbose:
        print(f"Caching {name}" + (f" ({copies} augmented copies)" if copies > 1 else "")
              + ":")
    store = _DiskStore(cache_dir, name) if plan.mode == "disk" else _MemoryStore()
    batch_size, extras, done = None, [], 0
    for _ in range(copies):  # Each pass draws new random augmentations, if `data` has any.
        for batch in data:
            batch_size = batch_size or int(batch[0].shape[0])
            store.append(np.asarray(plan.bottom.predict_on_batch(batch[0]), dtype="float32"))
            extras.append([np.asarray(part) for part in batch[1:]])
            done += 1
            bar.update(done)
    if not extras:
        raise ValueError(f"Cannot cache {name}: the dataset is empty.")
    extras = [np.concatenate(parts) for parts in zip(*extras)]
    return _batches(store.finish(), extras, batch_size, shuffle, seed, copies)


class _MemoryStore:
    def __init__(self):
        self.parts = []

    def append(self, array):
        self.parts.append(array)

    def finish(self):
        return np.concatenate(self.parts)


class _DiskStore:
    """Appends float32 batches to one raw file and maps it back as a `np.memmap`."""

    def __init__(self, cache_dir, name):
        folder = cache_dir or tempfile.mkdtemp(prefix="visiontune-cache-")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{name}.f32")
        self.file = open(self.path, "wb")
        self.shape, self.count = None, 0

    def append(self, array):
        self.shape = array.shape[1:]
        self.count += len(array)
        self.file.write(np.ascontiguousarray(array).tobytes())

    def finish(self):
        self.file.close()
        return np.memmap(self.path, "float32", "r", shape=(self.count, *self.shape))


def _batches(features, extras, batch_size, shuffle, seed, copies=1):
    n = len(features) // copies
    if isinstance(features, np.memmap):
        def gather(index):
            def read(i):
                return (features[np.asarray(i)], *(e[np.asarray(i)] for e in extras))
            out = tf.numpy_function(read, [index], [tf.float32, *(e.dtype for e in extras)])
            out[0].set_shape((None, *features.shape[1:]))
            for part, e in zip(out[1:], extras):
                part.set_shape((None, *e.shape[1:]))
            return tuple(out)
    else:
        tensors = [tf.constant(features), *(tf.constant(e) for e in extras)]

        # Plain TensorFlow already; converting it only logs an AutoGraph closure warning.
        @tf.autograph.experimental.do_not_convert
        def gather(index):
            return tuple(tf.gather(t, index) for t in tensors)
    if copies == 1:
        index = tf.data.Dataset.range(n)
        if shuffle:
            index = index.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    else:
        index = _copy_index(n, copies, shuffle, seed)
    dataset = index.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _copy_index(n, copies, shuffle, seed):
    """Per iteration (epoch): the row numbers of one randomly drawn copy, shuffled or not.

    A seeded `Dataset.random` with `rerandomize_each_iteration` gives a new
    number each epoch; it picks the copy and keys a stateless shuffle.
    """
    draw = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

    def rows(number):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                order, seed=tf.stack([number, tf.constant(0, tf.int64)]))
        return tf.data.Dataset.from_tensor_slices(order + n * (number % copies))

    return draw.flat_map(rows).apply(tf.data.experimental.assert_cardinality(n))
