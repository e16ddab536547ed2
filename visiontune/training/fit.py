"""Running one phase: what trains, whether to cache, compiling, and Keras's `fit`
(or, across machines, `worker_loop.fit_on_workers`)."""

import contextlib
import math
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from visiontune.common import keras_private, targets
from visiontune.training import (caching, callbacks as phase_callbacks, distribute, optimizers,
                                 worker_loop)
from visiontune.training.history import TrainingDivergedError
from visiontune.tuning import adapters, freezing

_WHAT_TRAINS = {"two-phase": "unfrozen", "bn-bias": "with trainable BatchNorm and biases",
                "lora": "with LoRA adapters"}


def run_phase(model, phase, train, val, history, *, callbacks=None, class_weight=None,
              label_smoothing=0.0, cache="off", cache_dir=None, cache_copies=1, shuffle=True,
              seed=None, journal=None, jit_compile=False, strategy=None, epochs_elsewhere=0,
              verbose="auto"):
    """Sets the trainable blocks, compiles, and fits one phase after `history`'s epochs.

    With `cache` other than `"off"`, the fixed part of the network is run once
    (`caching.plan` says where it ends, and why it did or did not cache) and
    `fit` trains the rest on its output. With a `journal`, the phase can be
    resumed (see `resume.py`). `epochs_elsewhere` counts the epochs before this
    phase that an earlier process ran (see `worker_loop.fit_on_workers`).
    """
    began = time.perf_counter()
    with distribute.scope(strategy):  # LoRA adapters are variables: they belong there too.
        trainable, report = _set_trainable(model, phase)
    copies = cache_copies if phase.unfreeze_blocks == 0 else 1
    plan = _cache_plan(model, phase, train, val, cache, cache_copies, copies, strategy)
    if verbose != 0:
        print(f"Phase {phase.name}: {phase.epochs} epochs, top {phase.unfreeze_blocks} "
              f"backbone blocks {_WHAT_TRAINS[phase.method]}, {trainable:,} trainable "
              f"parameters, {phase.optimizer} at {phase.learning_rate:g} ({phase.schedule}); "
              f"{plan.reason}")
        if report:
            print(f"  {report}")
    with contextlib.ExitStack() as scratch:
        if plan.mode == "disk" and cache_dir is None:  # Removed when the phase ends.
            cache_dir = scratch.enter_context(tempfile.TemporaryDirectory(
                prefix="visiontune-cache-", ignore_cleanup_errors=True))
        trainer, train, val, callbacks = _cached(
            plan, model, phase, train, val, list(callbacks or []), copies=copies,
            shuffle=shuffle, seed=seed, cache_dir=cache_dir, verbose=verbose)
        train, val = _compile(model, trainer, phase, train, val, label_smoothing,
                              jit_compile, strategy)
        start = len(history.epoch)
        # Across machines Keras's fit fails (keras-team/keras#20585): visiontune's loop
        # trains, checkpoints, and stops on a NaN loss itself.
        multiworker = distribute.is_multiworker(strategy)
        if not multiworker:
            callbacks.append(keras.callbacks.TerminateOnNaN())
        finished, checkpoints = [], None
        if journal:
            callbacks += journal.callbacks(phase, worker_loop=multiworker)
            finished = journal.finished_epochs(phase, start, worker_loop=multiworker)
            checkpoints = journal.checkpoints(phase) if multiworker else None
            callbacks = phase_callbacks.resumed_best(callbacks, history, finished) + callbacks
        if multiworker:
            result = worker_loop.fit_on_workers(
                trainer, train, val, strategy=strategy, initial_epoch=start,
                epochs=start + phase.epochs, callbacks=callbacks, class_weight=class_weight,
                checkpoints=checkpoints, epochs_elsewhere=epochs_elsewhere, verbose=verbose)
        else:
            # Or a later phase on the same model would start at the restored epoch.
            keras_private.clear_initial_epoch(trainer)
            result = trainer.fit(**_as_fit_inputs(train), validation_data=val,
                                 initial_epoch=start, epochs=start + phase.epochs,
                                 callbacks=callbacks, class_weight=class_weight,
                                 verbose=verbose,
                                 shuffle=not isinstance(train, tf.data.Dataset))
    wall = time.perf_counter() - began + sum(e["seconds"] for e in finished)
    history.add_phase(phase, result, trainable, wall, plan, finished)
    _stop_if_diverged(result, history, phase)
    if journal:
        journal.phase_done(model, history)
    return result


def _set_trainable(model, phase):
    """Adds the phase's LoRA adapters, sets what trains; returns `(trainable params, report)`."""
    report = None
    if phase.method == "lora":
        report = adapters.enable_lora(model, phase.unfreeze_blocks, phase.lora_rank,
                                      block_patterns=phase.block_patterns)
    freezing.set_trainable_blocks(model, phase.unfreeze_blocks, phase.block_patterns,
                                  method=phase.method)
    return freezing.trainable_summary(model).trainable_params, report


def _cache_plan(model, phase, train, val, cache, cache_copies, copies, strategy):
    """`caching.plan` for the phase, or why this phase does not cache."""
    if cache == "off":
        return caching.plan(model, phase.unfreeze_blocks, cache,
                            block_patterns=phase.block_patterns)
    if strategy is not None:
        # The cached trainer would be a second model built outside the strategy's scope.
        return caching.Plan("off", "not cached: caching is not supported under a "
                                   "tf.distribute strategy")
    if cache_copies > 1 and phase.unfreeze_blocks:
        return caching.Plan("off", f"not cached: cache_copies={cache_copies} means "
                                   "augmented training data, which phase 2 trains on as given")
    counts = [caching.count_images(d) for d in (train, val) if d is not None]
    images = None if None in counts else counts[0] * copies + sum(counts[1:])
    return caching.plan(model, phase.unfreeze_blocks, cache, images,
                        block_patterns=phase.block_patterns)


def _cached(plan, model, phase, train, val, callbacks, *, copies, shuffle, seed, cache_dir,
            verbose):
    """What `fit` trains, on what, with which callbacks: the model itself, or the plan's
    trainer on cached activations, with each callback shown the whole model."""
    if plan.mode == "off":
        return model, train, val, callbacks
    # A progress bar as `fit` shows them: 1 live, 2 one line at the end, 0 none.
    common = dict(seed=seed, cache_dir=cache_dir, verbose=1 if verbose == "auto" else int(verbose))
    train = caching.cache(plan, train, shuffle=shuffle, name=f"{phase.name}-train",
                          copies=copies, **common)
    val = val if val is None else caching.cache(plan, val, shuffle=False,
                                                name=f"{phase.name}-val", **common)
    return plan.trainer, train, val, [phase_callbacks.OnFullModel(c, model) for c in callbacks]


def _compile(model, trainer, phase, train, val, label_smoothing, jit_compile, strategy):
    """Compiles `trainer` for the phase; returns `(train, val)`, one-hot for smoothing."""
    steps = _steps_per_epoch(train)
    multi_label = targets.is_multi_label(model)
    # Per-block rates are found from the whole classifier; a cached trainer shares its
    # variables but not its block structure.
    with distribute.scope(strategy):
        optimizer = (optimizers.discriminative_optimizer(model, phase, steps)
                     if phase.lr_decay != 1 else None)
        sparse = targets.is_sparse(train if isinstance(train, tf.data.Dataset) else train[1])
        if label_smoothing and sparse and not multi_label:
            classes = model.output_shape[-1]
            train, val = (_one_hot(d, classes) for d in (train, val))
            sparse = False
        optimizers.compile_for_phase(trainer, phase, steps, sparse, jit_compile=jit_compile,
                                     multi_label=multi_label, optimizer=optimizer,
                                     label_smoothing=label_smoothing)
    return train, val


def _stop_if_diverged(result, history, phase):
    losses = result.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDivergedError(
            f"Training stopped: the loss became {losses[-1]} in epoch {len(history.epoch)} "
            f"({phase.name} phase, learning rate {phase.learning_rate:g}). Lower the learning "
            "rate, or check the data for broken values.", history)


def _one_hot(data, classes):
    """Sparse integer labels -> one-hot float labels, for a dataset or an `(x, y)` pair."""
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        def encode(x, y, *sample_weight):
            return (x, tf.one_hot(tf.reshape(tf.cast(y, "int32"), [-1]), classes),
                    *sample_weight)
        return data.map(encode)
    x, y, *sample_weight = data
    return (x, np.eye(classes, dtype="float32")[np.asarray(y).reshape(-1).astype(int)],
            *sample_weight)


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
