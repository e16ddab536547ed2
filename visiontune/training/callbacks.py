"""Callbacks that `run_phase` adds around the user's: a cached trainer and a resume."""

import keras
import numpy as np

from visiontune.common import forwarding, keras_private


class OnFullModel(keras.callbacks.Callback):
    """Shows a callback the whole classifier while `fit` trains a cached trainer.

    `ModelCheckpoint` then saves the classifier, not the trainer, while the
    training state (optimizer, metrics, `stop_training`) is the trainer's, so
    `TensorBoard` and `EarlyStopping` work. Keras has no way to give a
    callback another model than the one being fitted, hence this wrapper.
    """

    def __init__(self, callback, model):
        super().__init__()
        self.callback, self.full = callback, model

    def set_model(self, model):
        self.callback.set_model(_ModelView(self.full, model))

    def set_params(self, params):
        self.callback.set_params(params)

    def _forward(name):
        def hook(self, *args, **kwargs):
            return getattr(self.callback, name)(*args, **kwargs)
        hook.__name__ = name
        return hook

    for _name in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
                  "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
                  "on_test_end", "on_test_batch_begin", "on_test_batch_end"):
        locals()[_name] = _forward(_name)
    del _forward, _name


class _ModelView(forwarding.Forwarding):
    """The classifier, except for the training state, which is the trainer's."""

    _TRAINING_STATE = frozenset({"optimizer", "stop_training", "metrics", "train_function",
                                 "make_train_function",
                                 keras_private.INITIAL_EPOCH_ATTRIBUTE})

    _OWN = ("_target", "_trainer")

    def __init__(self, full, trainer):
        super().__init__(full)
        self._own("_trainer", trainer)

    def _route(self, name):
        return self._trainer if name in self._TRAINING_STATE else self._target


def resumed_best(callbacks, history, finished):
    """For each `ModelCheckpoint`, a callback that gives it the best value logged before
    a resume, so that it does not take the first resumed epoch for the best. They go
    before the checkpoints in the list: Keras calls callbacks in order."""
    restorers = []
    for callback in callbacks:
        callback = getattr(callback, "callback", callback)
        if not isinstance(callback, keras.callbacks.ModelCheckpoint):
            continue
        values = [v for v in history.history.get(callback.monitor, []) if np.isfinite(v)]
        values += [e["logs"][callback.monitor] for e in finished
                   if callback.monitor in e["logs"]]
        if values:
            restorers.append(_ResumedBest(callback, values))
    return restorers


class _ResumedBest(keras.callbacks.Callback):
    """Sets a checkpoint's `best` to the best of `values`, judged as the checkpoint
    judges (its `mode`, or the metric's direction). Keras decides the direction once
    the metrics are built, so this runs at the first epoch's end, before the
    checkpoint. (Checkpoints that save the best every N batches already fail in
    Keras 3.15 itself: it decides the direction at epoch ends only.)"""

    def __init__(self, checkpoint, values):
        super().__init__()
        self.checkpoint, self.values = checkpoint, list(values)

    def on_epoch_end(self, epoch, logs=None):
        if not self.values:
            return
        better = keras_private.improves(self.checkpoint)
        best = self.values[0]
        for value in self.values[1:]:
            if better(value, best):
                best = value
        if self.checkpoint.best is None or better(best, self.checkpoint.best):
            self.checkpoint.best = best
        self.values = []
