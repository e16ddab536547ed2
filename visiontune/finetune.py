"""The two-phase recipe: warm the head on a frozen backbone, then unfreeze the top.

`fine_tune` is the whole recipe on one screen; `Phase`, `compile_for_phase` and
`PhasedHistory` hold the mechanics so that other schedules can reuse them.
"""

import dataclasses
import math
import time

import keras
import numpy as np
import tensorflow as tf

from visiontune import freezing

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One `fit` call: what is unfrozen, for how long, and how fast it learns."""

    name: str
    epochs: int
    learning_rate: float
    unfreeze_blocks: int = 0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_epochs: int = 0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) \
                or self.epochs < 0:
            raise ValueError(f"Expected {self.name} epochs >= 0. Received: {self.epochs!r}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"Expected a {self.name} learning rate > 0. Received: {self.learning_rate!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected `optimizer` in {OPTIMIZERS}. "
                             f"Received: {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Expected `schedule` in {SCHEDULES}. Received: {self.schedule!r}")
        if self.epochs and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"Expected `warmup_epochs` between 0 and {self.epochs}. "
                             f"Received: {self.warmup_epochs!r}")


# Defaults measured on flowers-mini with EfficientNet-Lite0 (see README, "Defaults").
def fine_tune(model, train, val=None, *, head_epochs=10, head_lr=3e-3, finetune_epochs=10,
              finetune_lr=3e-5, unfreeze_blocks=2, optimizer="adam", finetune_optimizer=None,
              schedule="cosine", warmup_epochs=1, class_weight=None, callbacks=None,
              jit_compile=False, verbose="auto"):
    """Fine-tunes a classifier in two phases and returns one merged history.

    Phase 1 trains the head on a frozen backbone. Phase 2 unfreezes the top
    `unfreeze_blocks` blocks (BatchNorm stays frozen, in inference mode) and
    continues at a low rate. Epochs are numbered across phases, so callbacks
    such as `CSVLogger` or `TensorBoard` see one continuous run.

    Args:
        model: A classifier from `build_classifier`.
        train: A `tf.data.Dataset` of `(images, labels)` batches, or an
            `(x, y)` pair of arrays.
        val: Validation data in the same form, or `None`.
        head_epochs: Phase 1 epochs; 0 skips the phase.
        head_lr: Phase 1 learning rate.
        finetune_epochs: Phase 2 epochs; 0 skips the phase.
        finetune_lr: Phase 2 (peak) learning rate.
        unfreeze_blocks: Top blocks to unfreeze in phase 2.
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9), or `"rmsprop"`.
        finetune_optimizer: Phase 2 optimizer; defaults to `optimizer`.
        schedule: Phase 2 rate: `"cosine"` decay to zero after the warmup, or
            `"constant"`.
        warmup_epochs: Phase 2 linear warmup epochs before the cosine decay.
        class_weight: Passed to `fit`.
        callbacks: Keras callbacks, passed to both phases.
        jit_compile: Compile the train step with XLA.
        verbose: Passed to `fit`.

    Returns:
        A `PhasedHistory` (a `keras.callbacks.History`): `history.history` has
        one entry per epoch across both phases, with `"phase"` naming each
        epoch's phase, and `history.phases` the per-phase summary.

    Example:

    >>> history = visiontune.fine_tune(model, train_ds, val_ds, head_epochs=5,
    ...                                finetune_epochs=5, unfreeze_blocks=2)
    >>> history.history["phase"][-1]
    'finetune'
    """
    phases = [
        Phase("head", head_epochs, head_lr, 0, optimizer),
        Phase("finetune", finetune_epochs, finetune_lr, unfreeze_blocks,
              finetune_optimizer or optimizer, schedule, warmup_epochs),
    ]
    history = PhasedHistory()
    for phase in phases:
        freezing.check_block_count(model, phase.unfreeze_blocks)  # Fail before any training.
    for phase in (p for p in phases if p.epochs):
        run_phase(model, phase, train, val, history, callbacks=callbacks,
                  class_weight=class_weight, jit_compile=jit_compile, verbose=verbose)
    return history


def run_phase(model, phase, train, val, history, *, callbacks=None, class_weight=None,
              jit_compile=False, verbose="auto"):
    """Sets the trainable blocks, compiles, and fits one phase after `history`'s epochs."""
    freezing.set_trainable_blocks(model, phase.unfreeze_blocks)
    compile_for_phase(model, phase, _steps_per_epoch(train), _sparse_labels(train),
                      jit_compile=jit_compile)
    trainable = freezing.trainable_summary(model).trainable_params
    if verbose != 0:
        print(f"Phase {phase.name}: {phase.epochs} epochs, top {phase.unfreeze_blocks} "
              f"backbone blocks unfrozen, {trainable:,} trainable parameters, "
              f"{phase.optimizer} at {phase.learning_rate:g} ({phase.schedule})")
    start = len(history.epoch)
    began = time.perf_counter()
    result = model.fit(**_as_fit_inputs(train), validation_data=val, initial_epoch=start,
                       epochs=start + phase.epochs,
                       callbacks=[*(callbacks or []), keras.callbacks.TerminateOnNaN()],
                       class_weight=class_weight, verbose=verbose,
                       shuffle=not isinstance(train, tf.data.Dataset))
    history.add_phase(phase, result, trainable, time.perf_counter() - began)
    losses = result.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDivergedError(
            f"Training stopped: the loss became {losses[-1]} in epoch {len(history.epoch)} "
            f"({phase.name} phase, learning rate {phase.learning_rate:g}). Lower the learning "
            "rate, or check the data for broken values.", history)
    return result


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; `.history` holds the epochs run until then."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


def compile_for_phase(model, phase, steps_per_epoch=None, sparse_labels=True,
                      jit_compile=False):
    """Compiles `model` with the phase's optimizer and a loss that fits its output."""
    multi_label = model.layers[-1].get_config().get("activation") == "sigmoid"
    if multi_label:
        loss = keras.losses.BinaryCrossentropy()
    elif sparse_labels:
        loss = keras.losses.SparseCategoricalCrossentropy()
    else:
        loss = keras.losses.CategoricalCrossentropy()
    model.compile(optimizer=make_optimizer(phase, steps_per_epoch), loss=loss,
                  metrics=["accuracy"], jit_compile=jit_compile)


def make_optimizer(phase, steps_per_epoch=None):
    """Returns a fresh Keras optimizer for `phase`, with its learning-rate schedule."""
    rate = learning_rate(phase, steps_per_epoch)
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9)
    if phase.optimizer == "adamw":
        return keras.optimizers.AdamW(rate)
    if phase.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    return keras.optimizers.Adam(rate)


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


class PhasedHistory(keras.callbacks.History):
    """A Keras `History` that spans several phases.

    `history[key]` lists each epoch's value across phases (`NaN` where a
    phase did not log `key`), `history["phase"]` names each epoch's phase,
    and `phases` lists `{"name", "epochs", "trainable_params",
    "wall_time_s"}` per phase.
    """

    def __init__(self):
        super().__init__()
        self.history = {"phase": []}
        self.epoch = []
        self.phases = []

    def add_phase(self, phase, result, trainable_params, wall_time_s):
        n = len(result.epoch)
        for key in set(self.history) | set(result.history):
            if key == "phase":
                continue
            past = self.history.setdefault(key, [math.nan] * len(self.epoch))
            past.extend(result.history.get(key, [math.nan] * n))
        self.history["phase"].extend([phase.name] * n)
        self.epoch.extend(result.epoch)
        self.phases.append({"name": phase.name, "epochs": n,
                            "trainable_params": trainable_params,
                            "wall_time_s": wall_time_s})


def _as_fit_inputs(data):
    if isinstance(data, tuple) and len(data) == 2:
        return {"x": data[0], "y": data[1]}
    return {"x": data}


def _steps_per_epoch(data):
    if isinstance(data, tf.data.Dataset):
        steps = int(data.cardinality())
        return steps if steps > 0 else None
    if not isinstance(data, tuple):
        return None
    return math.ceil(len(data[0]) / 32)  # Arrays: `fit` batches them by 32.


def _sparse_labels(data):
    if isinstance(data, tf.data.Dataset):
        label_spec = data.element_spec[1]
        return label_spec.shape.rank is not None and label_spec.shape.rank <= 1
    labels = np.asarray(data[1])
    return labels.ndim == 1 or labels.shape[-1] == 1
