"""The learning-rate finder: an exponential sweep of the rate over a few hundred steps.

`lr_find(model, data)` trains `model` for up to `steps` batches while the rate
grows geometrically from `start_lr` to `end_lr`, records the loss of every
batch, and then puts the weights back exactly as they were. The curve of
loss against rate shows where training is fast and where it diverges (Leslie
Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's
`lr_find`). Keras has no such tool, hence this module; the sweep itself is a
Keras `ExponentialDecay` schedule with a growth rate above 1.

    python -m visiontune.lr_find --data photos/ --output lr.png   (cli/lr_find.py)
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from visiontune.training import optimizers, phases
from visiontune.common import targets
from visiontune.evaluation import plots

RULE = ("the rate at the lowest smoothed loss, divided by 10: the loss still falls there, "
        "well before it turns up")


@dataclasses.dataclass
class LRFinderResult:
    """The sweep: rates and losses per step, and the suggested rate with its rule."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestion: float
    rule: str = RULE

    def plot(self, path=None):
        """Returns the loss-against-rate figure; also writes it as a PNG to `path`."""
        return plots.lr_sweep(self.learning_rates, self.smoothed_losses, self.suggestion, path)


def lr_find(model, data, *, start_lr=1e-7, end_lr=1.0, steps=200, optimizer="adam",
            smoothing=0.98, diverge=4.0, verbose=1):
    """Sweeps the learning rate exponentially and returns the losses; the weights are restored.

    Only what is trainable in `model` now trains during the sweep: freeze or
    unfreeze blocks first (`set_trainable_blocks`) to find the rate of a phase.
    `model` is compiled for the sweep, so compile it again before your own
    `fit` (`fine_tune` compiles each phase itself).

    Args:
        model: A classifier from `build_classifier` (or any compiled-able
            Keras classifier with softmax or sigmoid outputs).
        data: A `tf.data.Dataset` of `(images, labels)` batches, or an
            `(x, y)` pair of arrays (batched by 32, shuffled).
        start_lr: First rate of the sweep.
        end_lr: Last rate of the sweep.
        steps: Batches in the sweep; the data repeats if it has fewer.
        optimizer: `"adam"`, `"adamw"`, `"sgd"` or `"rmsprop"`, as in `fine_tune`.
        smoothing: Factor of the exponential moving average of the loss (with
            bias correction), as fastai's.
        diverge: Stop once the smoothed loss exceeds this multiple of its minimum.
        verbose: 1 shows a progress bar, 0 nothing.

    Returns:
        An `LRFinderResult`; `.plot()` draws it.

    Example:

    >>> result = visiontune.lr_find(model, data.train)
    >>> result.suggestion
    0.0031...
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Expected 0 < start_lr < end_lr. Received: start_lr={start_lr}, "
                         f"end_lr={end_lr}.")
    if steps < 10:
        raise ValueError(f"Expected `steps` >= 10 for a useful curve. Received: {steps}.")
    if isinstance(data, tuple):
        data = tf.data.Dataset.from_tensor_slices(data).shuffle(len(data[0]), seed=0).batch(32)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        start_lr, decay_steps=steps - 1, decay_rate=end_lr / start_lr)  # A rate > 1 grows.
    phase = phases.Phase("lr_find", 1, start_lr, optimizer=optimizer)
    saved = [np.array(w) for w in model.get_weights()]
    try:
        optimizers.compile_for_phase(model, phase, sparse_labels=targets.is_sparse(data),
                                   optimizer=optimizers.make_optimizer(phase, rate=schedule))
        recorder = _Recorder(schedule, steps, smoothing, diverge, verbose)
        # One batch per "epoch": Keras logs the exact loss of each batch at epoch end,
        # where batch-end logs hold a running mean.
        model.fit(data.repeat(), steps_per_epoch=1, epochs=steps, callbacks=[recorder],
                  shuffle=False, verbose=0)  # The dataset shuffles itself.
    finally:
        model.set_weights(saved)
    if len(recorder.losses) < 2:
        raise ValueError("The loss was not finite from the first steps: check the data, or "
                         "lower start_lr.")
    rates, smooth = np.asarray(recorder.rates), np.asarray(recorder.smoothed)
    return LRFinderResult(rates, np.asarray(recorder.losses), smooth,
                          float(rates[int(np.argmin(smooth))] / 10))


class _Recorder(keras.callbacks.Callback):
    def __init__(self, schedule, steps, smoothing, diverge, verbose):
        super().__init__()
        self.schedule, self.smoothing, self.diverge = schedule, smoothing, diverge
        self.rates, self.losses, self.smoothed = [], [], []
        self.average = 0.0
        self.bar = keras.utils.Progbar(steps, verbose=verbose, unit_name="step")

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            self.model.stop_training = True
            return
        self.average = self.smoothing * self.average + (1 - self.smoothing) * loss
        smooth = self.average / (1 - self.smoothing ** (epoch + 1))
        self.rates.append(float(self.schedule(epoch)))
        self.losses.append(loss)
        self.smoothed.append(smooth)
        self.bar.update(epoch + 1, [("lr", self.rates[-1]), ("loss", smooth)])
        if epoch > 10 and smooth > self.diverge * min(self.smoothed):
            self.model.stop_training = True
