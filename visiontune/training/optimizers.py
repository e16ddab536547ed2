"""Optimizers, learning-rate schedules and compiling a model for a phase."""

import dataclasses

import keras

from visiontune.common import targets
from visiontune.tuning import freezing

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")


def compile_for_phase(model, phase, steps_per_epoch=None, sparse_labels=True,
                      jit_compile=False, multi_label=None, optimizer=None, label_smoothing=0.0):
    """Compiles `model` with the phase's optimizer (or `optimizer`) and a fitting loss."""
    if multi_label is None:
        multi_label = targets.is_multi_label(model)
    if multi_label:
        loss = keras.losses.BinaryCrossentropy()
    elif sparse_labels:
        if label_smoothing:  # Keras's sparse loss has no smoothing; `run_phase` one-hots.
            raise ValueError("label_smoothing needs one-hot labels; Keras's sparse "
                             "cross-entropy cannot smooth.")
        loss = keras.losses.SparseCategoricalCrossentropy()
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if optimizer is None:
        optimizer = (make_optimizer(phase, steps_per_epoch) if phase.lr_decay == 1
                     else discriminative_optimizer(model, phase, steps_per_epoch))
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=["accuracy"], jit_compile=jit_compile)


def make_optimizer(phase, steps_per_epoch=None, rate=None):
    """Returns a fresh Keras optimizer for `phase`, with its schedule or the given `rate`."""
    rate = learning_rate(phase, steps_per_epoch) if rate is None else rate
    # Keras swaps the averaged weights in when `fit` ends (`finalize_variable_values`).
    ema = dict(use_ema=True, ema_momentum=phase.ema) if phase.ema else {}
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, **ema)
    if phase.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, **ema)
    if phase.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, **ema)
    return keras.optimizers.Adam(rate, **ema)


def discriminative_optimizer(model, phase, steps_per_epoch=None):
    """One optimizer per backbone block: rates fall by `phase.lr_decay` per block downward.

    The head and the top block learn at the phase's rate, the next block at
    `lr_decay` times that, and so on. Keras's `MultiOptimizer` routes each
    variable to its block's optimizer; the variables are the classifier's, so
    this also serves a cached trainer, which shares them.
    """
    if not hasattr(keras.optimizers, "MultiOptimizer"):
        raise ValueError(f"lr_decay={phase.lr_decay} needs keras.optimizers.MultiOptimizer, "
                         f"which Keras {keras.__version__} lacks. Upgrade Keras "
                         "(pip install -U keras), or use lr_decay=1.")
    blocks = freezing._blocks(freezing.find_backbone(model), phase.block_patterns)
    depth = {id(v): d for d, block in enumerate(reversed(blocks))
             for layer in block.layers for v in layer.weights}
    optimizers = {}

    def select(variable):
        d = depth.get(id(variable), 0)  # Head variables learn at the top block's rate.
        if d not in optimizers:
            rate = phase.learning_rate * phase.lr_decay ** d
            optimizers[d] = make_optimizer(dataclasses.replace(phase, learning_rate=rate),
                                           steps_per_epoch)
        return optimizers[d]

    return keras.optimizers.MultiOptimizer(select)


def learning_rate(phase, steps_per_epoch=None):
    """Returns the phase's rate: a float, or a warmup + cosine decay schedule."""
    if phase.schedule == "constant":
        return phase.learning_rate
    if not steps_per_epoch:
        raise ValueError(
            "A cosine schedule needs the number of steps per epoch, but the training data's "
            "length is unknown. Use schedule='constant', or give the dataset a known length "
            "with `dataset.apply(tf.data.experimental.assert_cardinality(n))`."
        )
    warmup = phase.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else phase.learning_rate,
        decay_steps=max(phase.epochs * steps_per_epoch - warmup, 1),
        warmup_target=phase.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
