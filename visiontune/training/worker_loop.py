"""The training loop for `--distribute multiworker`, where Keras's `fit` cannot run.

Keras 3 (checked up to 3.15.1 with TensorFlow 2.21) fails in `fit`, `evaluate`
and `predict` under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras#20585). What works, with public APIs only, is the loop
TensorFlow documents for custom training: a `tf.function` that calls
`strategy.run(step)`, where the step takes the gradient with `GradientTape`
and `optimizer.apply_gradients` sums it over every replica of every worker.
`fit_on_workers` is that loop, shaped to stand in for `model.fit` in
`run_phase`:

- It uses what `compile_for_phase` set: the model's optimizer (with its
  schedule, EMA or per-block rates) and loss. The loss of each global batch
  is its mean over the batch's images, plus the model's L2/L1 penalties once,
  exactly as `fit` computes it on one device.
- Each worker trains on its slice of every global batch
  (`distribute_datasets_from_function`, sliced by input pipeline), so the
  workers together see the same batches as one process. A partial last batch
  is split as evenly as it goes, and a worker whose slice is empty still
  takes part in the step.
- Validation is a distributed step too; the logs (`loss`, `accuracy`,
  `val_loss`, `val_accuracy`) are what `fit` logs, weighted as `fit` weights
  them, and identical on every worker.
- Keras callbacks run on every worker with those logs (`ProgbarLogger`
  only where `verbose` asks, which `fine_tune` sets on the chief alone).
- With a `Checkpoints` (from `resume.Journal`), every worker saves the model,
  the optimizer and the epoch after every epoch (the save is collective), and
  every worker restores the chief's latest checkpoint when the phase starts.
- A worker that loses a peer stops with `WorkerLostError` instead of waiting.
"""

import dataclasses
import math
import os
import shutil

import keras
import tensorflow as tf

from visiontune.common import keras_private, targets

# What a collective op raises on a worker whose peer died or stopped answering.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)


class WorkerLostError(RuntimeError):
    """A worker stopped answering during multi-worker training."""


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where this worker saves the phase's checkpoints, and where it restores them from.

    The chief saves into the run's backup folder (`restore_dir`); every other
    worker into a scratch folder of its own, removed when the phase ends.
    """

    save_dir: str
    restore_dir: str


def fit_on_workers(model, train, val, *, strategy, initial_epoch, epochs, callbacks=(),
                   class_weight=None, checkpoints=None, epochs_elsewhere=0, verbose="auto"):
    """Trains `model` (compiled, built in `strategy`'s scope) like `model.fit` would.

    Args:
        model: The compiled model; its variables must live in `strategy`'s scope.
        train: A `tf.data.Dataset` of global `(images, labels)` batches.
        val: Validation batches in the same form, or `None`.
        strategy: The `tf.distribute` strategy (any: one process works too).
        initial_epoch: Epoch number of the phase's first epoch.
        epochs: Epoch number to stop before, as in `fit`.
        callbacks: Keras callbacks; each epoch's logs are the same on every worker.
        class_weight: `{class index: weight}` for the training loss, as in `fit`.
        checkpoints: A `Checkpoints`, to save every epoch and resume; or `None`.
        epochs_elsewhere: Epochs before `initial_epoch` that another process ran
            (phases a resumed run restored), for the data order; see below.
        verbose: 0 for silence, else a progress bar as `fit`'s.

    Returns:
        A `keras.callbacks.History` of the epochs run by this call.
    """
    _check_callbacks(callbacks)
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "--precision mixed_float16 cannot train across workers: its loss scaling decides "
            "on each worker alone whether the gradients are finite, and workers that "
            "disagree wait on each other for ever. Use --precision float32 or mixed_bfloat16.")
    if class_weight and targets.is_multi_label(model):
        raise ValueError("class_weight needs single-label (softmax) classes; this model is "
                         "multi-label (sigmoid). Leave class weights out.")
    with strategy.scope():  # Slots and the epoch counter are created where `fit` would.
        optimizer.build(model.trainable_variables)
        epoch_variable = tf.Variable(initial_epoch, dtype=tf.int64, trainable=False)
    manager, start = _restore(model, optimizer, epoch_variable, checkpoints)
    # No worker goes on (and the chief, done with the phase, deletes its checkpoints)
    # before every worker has restored.
    _meet(strategy)
    # The training data reshuffles each time it is iterated, and `fit` iterates it twice
    # per epoch. This loop does the same, so that it sees `fit`'s batches; and a resumed
    # run passes over the iterations of the epochs that an earlier process ran, so that
    # it sees the batches that an uninterrupted run would. Creating an iterator draws its
    # order without reading any data.
    _draw_orders(train, (epochs_elsewhere + start - initial_epoch)
                 * keras_private.FIT_ITERATORS_PER_EPOCH)
    steps = _length(train)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*callbacks, history], add_progbar=verbose != 0, model=model,
        verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=steps)
    distributed_train = _distribute(strategy, train)
    distributed_val = None if val is None else _distribute(strategy, val)
    train_step, val_step = _steps(
        model, strategy, class_weight, distributed_train.element_spec,
        None if val is None else distributed_val.element_spec)
    model.stop_training = False
    try:
        callback_list.on_train_begin()
        for epoch in range(start, epochs):
            callback_list.on_epoch_begin(epoch)
            logs = _run_epoch(distributed_train, train_step, callback_list, model)
            _draw_orders(train, keras_private.FIT_ITERATORS_PER_EPOCH - 1)
            if distributed_val is not None:
                logs.update(_validate(distributed_val, val_step, callback_list))
            callback_list.on_epoch_end(epoch, logs)
            epoch_variable.assign(epoch + 1)
            if manager is not None:
                manager.save()  # On every worker: the save reads distributed variables.
            if model.stop_training:
                break
        optimizer.finalize_variable_values(model.trainable_variables)  # EMA, as `fit` ends.
        callback_list.on_train_end()
    except _PEER_ERRORS as error:
        raise WorkerLostError(
            f"Lost contact with another worker during multi-worker training ({type(error).__name__}"
            f": {str(error).splitlines()[0][:200]}). Every worker must run until the end; "
            "relaunch all of them with the same command and --resume (or the same "
            "backup_dir) to continue from the last finished epoch.") from None
    if checkpoints is not None and checkpoints.save_dir != checkpoints.restore_dir:
        shutil.rmtree(checkpoints.save_dir, ignore_errors=True)
    return history


def _meet(strategy):
    """Returns once every worker has called it: an all-reduce of one number."""
    @tf.function
    def meet():
        return strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    meet()


def _draw_orders(data, count):
    for _ in range(count):
        iter(data)


def _check_callbacks(callbacks):
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            raise ValueError(
                "BackupAndRestore cannot run under --distribute multiworker: every worker "
                "would write the same backup. Pass backup_dir to fine_tune (the CLI's "
                "--resume) instead: it checkpoints every epoch on every worker.")


def _restore(model, optimizer, epoch_variable, checkpoints):
    """Restores the chief's latest checkpoint, if any; returns `(manager, first epoch)`."""
    if checkpoints is None:
        return None, int(epoch_variable.numpy())
    # The optimizer's variables by position too: a per-block `MultiOptimizer` (lr_decay)
    # keeps its inner optimizers in a list that the object graph does not reach.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_variable,
                                     optimizer_variables=list(optimizer.variables))
    latest = tf.train.latest_checkpoint(checkpoints.restore_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    manager = tf.train.CheckpointManager(checkpoint, checkpoints.save_dir, max_to_keep=2)
    return manager, int(epoch_variable.numpy())


def restored_epoch(restore_dir):
    """The epoch a phase resumes at from the checkpoints in `restore_dir` (None: none)."""
    latest = tf.train.latest_checkpoint(restore_dir) if os.path.isdir(restore_dir) else None
    if not latest:
        return None
    return int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def _length(data):
    steps = int(data.cardinality())
    return steps if steps > 0 else None


def _distribute(strategy, data):
    """This worker's slices of every global batch of `data`, one per local replica.

    Every worker iterates the same global batches (the data is built the same
    way from the same seed on each) and keeps rows `[lo, hi)` of each for each
    of its replicas, with a weight per row (1, or 0 for a stand-in) and the
    global batch's size beside them for the loss.
    """
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def slices(x, y):
            count = tf.shape(x)[0]

            def one(replica):
                lo = count * (first + tf.cast(replica, tf.int32)) // replicas
                hi = count * (first + tf.cast(replica, tf.int32) + 1) // replicas
                # A last batch smaller than the replicas leaves some of them no rows.
                # They get the batch's first row with weight 0 instead: the model is not
                # called on zero images (TensorFlow's CPU convolutions fail on them), the
                # row adds nothing to the loss, gradients or logs, and the step has no
                # branch (a tf.cond around the model made phase 1 half as slow again).
                empty = hi <= lo
                lo, hi = tf.where(empty, 0, lo), tf.where(empty, 1, hi)
                kept = tf.fill([hi - lo], tf.where(empty, 0.0, 1.0))
                return x[lo:hi], y[lo:hi], kept, count

            return tf.data.Dataset.range(local).map(one)

        return data.flat_map(slices)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _steps(model, strategy, class_weight, train_spec, val_spec):
    """The distributed train and validation steps; each returns global sums as tensors.

    Each is traced once, for its data's element spec (any batch size), so a
    partial last batch does not trace it again.
    """
    replicas = strategy.num_replicas_in_sync
    loss_fn = model.loss
    multi_label = targets.is_multi_label(model)
    weights = None
    if class_weight:
        size = max(int(k) for k in class_weight) + 1
        weights = tf.constant([float(class_weight.get(i, 1.0)) for i in range(size)])

    def per_image(y, y_pred):
        """Each image's loss and whether it is right, as `fit`'s loss and accuracy see it."""
        y_pred = tf.cast(y_pred, tf.float32)
        losses = loss_fn.call(y, y_pred)
        if multi_label:
            correct = tf.reduce_mean(tf.cast(
                tf.equal(tf.cast(y, tf.float32), tf.cast(y_pred > 0.5, tf.float32)),
                tf.float32), axis=-1)
        else:
            labels = (tf.reshape(tf.cast(y, tf.int64), [-1]) if y.shape.rank == 1
                      or y.shape[-1] == 1 else tf.argmax(y, axis=-1))
            correct = tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), labels), tf.float32)
        return tf.reshape(losses, [-1]), correct, labels if not multi_label else None

    def penalties():
        return tf.add_n(model.losses) / replicas if model.losses else 0.0

    def sums(x, y, kept, training):
        """The slice's (class-weighted) loss sum, right answers and images; `kept` is 0
        for the stand-in row of a replica without images (see `_distribute`)."""
        losses, correct, labels = per_image(y, model(x, training=training))
        sample_weight = (tf.gather(weights, labels) if training and weights is not None
                         else tf.ones_like(losses))
        # Keras 3.15's fit weights the loss by class, but not the accuracy it logs.
        return (tf.reduce_sum(losses * sample_weight * kept), tf.reduce_sum(correct * kept),
                tf.reduce_sum(kept))

    def train_step(x, y, kept, count):
        with tf.GradientTape() as tape:
            total, right, seen = sums(x, y, kept, training=True)
            # Keras's mean over the batch divides the weighted sum by the image count.
            loss = total / tf.cast(count, tf.float32) + penalties()
            scaled = model.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(gradients, variables))
        return loss, right, seen

    def val_step(x, y, kept, count):
        total, right, seen = sums(x, y, kept, training=False)
        return total / tf.cast(count, tf.float32) + penalties(), right, seen

    def distributed(step, spec):
        if spec is None:
            return None

        @tf.function(input_signature=[spec])
        def run(batch):
            x, y, kept, count = batch
            results = strategy.run(step, args=(x, y, kept, count))
            # Every replica holds the same `count`: take it from the first.
            count = strategy.experimental_local_results(count)[0]
            return (*[strategy.reduce("SUM", r, axis=None) for r in results], count)
        return run

    return distributed(train_step, train_spec), distributed(val_step, val_spec)


def _run_epoch(distributed, step, callback_list, model):
    """One pass over the training batches; returns `fit`'s epoch logs."""
    loss_sum = correct = weight = images = 0.0
    for batch, data in enumerate(distributed):
        callback_list.on_train_batch_begin(batch)
        loss, right, weights, count = (float(t) for t in step(data))
        loss_sum, correct, weight, images = (loss_sum + loss * count, correct + right,
                                             weight + weights, images + count)
        logs = {"loss": loss_sum / images, "accuracy": correct / max(weight, 1e-12)}
        callback_list.on_train_batch_end(batch, logs)
        if not math.isfinite(loss):  # As Keras's TerminateOnNaN.
            model.stop_training = True
            break
    return logs


def _validate(distributed, step, callback_list):
    callback_list.on_test_begin()
    loss_sum = correct = total = images = 0.0
    for data in distributed:
        loss, right, seen, count = (float(t) for t in step(data))
        loss_sum, correct, total, images = (loss_sum + loss * count, correct + right,
                                            total + seen, images + count)
    logs = {"loss": loss_sum / max(images, 1), "accuracy": correct / max(total, 1)}
    callback_list.on_test_end(logs)
    return {"val_" + key: value for key, value in logs.items()}

