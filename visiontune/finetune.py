"""The two-phase recipe: warm the head on a frozen backbone, then unfreeze the top.

`fine_tune` is the whole recipe on one screen; `Phase`, `compile_for_phase` and
`PhasedHistory` hold the mechanics so that other schedules can reuse them.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from visiontune import adapters, caching, distribute, freezing, keras_private, resume

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")
# What phase 2 trains: the top blocks' weights, only their BatchNorm affine parameters and
# biases, only LoRA adapters on them, or nothing (phase 1 alone is a linear probe).
METHODS = ("two-phase", "bn-bias", "lora", "linear-probe")
# Phase 2 peak rates per method. Adapters start at zero and BitFit moves few parameters, so
# both need a high rate (README, "Methods"). For two-phase this is the rate from
# `FULL_RATE_IMAGES` training images up; below that it shrinks in proportion
# (`default_finetune_lr`): the transfer suite found that 200 near-ImageNet photos are
# overfitted at a rate that 600 ultrasound images need (README, "How good is it").
FINETUNE_LR = {"two-phase": 3e-4, "bn-bias": 1e-3, "lora": 1e-3, "linear-probe": None}
FULL_RATE_IMAGES = 1000


def default_finetune_lr(method, train_images=None):
    """Phase 2's default peak rate for `method` and a training set of `train_images`.

    `fine_tune` counts a batched dataset in whole batches (`caching.count_images`),
    so flowers-mini's 200 images in 7 batches of 32 count as 224: 6.7e-5. An
    unknown count gets the full rate, and `fine_tune` says so.
    """
    rate = FINETUNE_LR[method]
    if method == "two-phase" and train_images:
        rate *= min(1.0, train_images / FULL_RATE_IMAGES)
    return rate


@dataclasses.dataclass(frozen=True)
class Phase:
    """One `fit` call: what is unfrozen, for how long, and how fast it learns.

    `method` says what trains in the top `unfreeze_blocks` blocks (see
    `freezing.set_trainable_blocks`); `lora_rank` is used by `"lora"`.
    """

    name: str
    epochs: int
    learning_rate: float
    unfreeze_blocks: int = 0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_epochs: int = 0
    lr_decay: float = 1.0
    method: str = "unfreeze"
    lora_rank: int = 8
    ema: float = 0.0
    block_patterns: tuple = None  # None: the registry's grouping (freezing._blocks)

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
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Expected `lr_decay` in (0, 1]. Received: {self.lr_decay!r}")
        if self.method not in freezing.METHODS:
            raise ValueError(f"Expected `method` in {freezing.METHODS}. "
                             f"Received: {self.method!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"Expected `ema` in [0, 1). Received: {self.ema!r}")
        if self.epochs and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"Expected `warmup_epochs` between 0 and {self.epochs}. "
                             f"Received: {self.warmup_epochs!r}")


# Defaults measured on flowers-mini with EfficientNet-Lite0 (see README, "Defaults").
def fine_tune(model, train, val=None, *, head_epochs=30, head_lr=3e-3, finetune_epochs=10,
              finetune_lr=None, unfreeze_blocks=2, optimizer="adam", finetune_optimizer=None,
              schedule="cosine", warmup_epochs=1, lr_decay=1.0, gradual_epochs=0,
              method="two-phase", lora_rank=8, label_smoothing=0.0, ema=0.0,
              block_patterns=None, class_weight=None, callbacks=None,
              cache="off", cache_dir=None, cache_copies=1, shuffle=True, seed=None,
              backup_dir=None, jit_compile=False, strategy=None, verbose="auto"):
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
        finetune_lr: Phase 2 (peak) learning rate; default
            `default_finetune_lr(method, training images)`.
        unfreeze_blocks: Top blocks to unfreeze in phase 2 (or to give
            adapters, or whose BatchNorm and biases train).
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9), or `"rmsprop"`.
        finetune_optimizer: Phase 2 optimizer; defaults to `optimizer`.
        schedule: Phase 2 rate: `"cosine"` decay to zero after the warmup, or
            `"constant"`.
        warmup_epochs: Phase 2 linear warmup epochs before the cosine decay.
        lr_decay: Discriminative rates in phase 2: the head and the top block
            learn at `finetune_lr`, and each block below at `lr_decay` times
            the rate of the block above it. 1 gives every block the same rate.
        gradual_epochs: Gradual unfreezing (ULMFiT) when above 0: phase 2
            unfreezes the top block for `gradual_epochs` epochs, then one
            more block every `gradual_epochs` epochs, and trains all
            `unfreeze_blocks` blocks for the rest of its `finetune_epochs`.
            Each stage is a phase of its own, `finetune-1`, `finetune-2`, ...
        method: What phase 2 trains in the top `unfreeze_blocks` blocks.
            `"two-phase"`: all their weights except BatchNorm's.
            `"bn-bias"` (BitFit): only BatchNorm scales and offsets and the
            biases; BatchNorm keeps normalising with its moving statistics.
            `"lora"`: only LoRA adapters of rank `lora_rank` on their `Conv2D`
            and `Dense` layers (see `adapters.py`); the model then carries
            adapters, and `merge_lora` (which `save_model` and `export` call)
            folds them into plain kernels. `"linear-probe"`: no phase 2.
        lora_rank: Rank of the LoRA adapters.
        ema: Phase 2 keeps an exponential moving average of the trained
            weights with this momentum per step (Keras's `use_ema`, without
            bias correction), and the model ends with the averaged weights.
            Each epoch's validation figures come from the raw weights. 0
            turns it off.
        block_patterns: Regexes that group the backbone's layers into the
            blocks `unfreeze_blocks` counts (see `freezing.set_trainable_blocks`);
            the cache, LoRA and `lr_decay` use the same grouping. Default: the
            registry's, or one block per layer with weights.
        label_smoothing: Mixes each one-hot target with the uniform
            distribution by this much (Szegedy et al. 2016), in both phases.
            Sparse labels are turned one-hot for it. The `val_loss` that
            `fit` logs (and `ModelCheckpoint` monitors) is then the smoothed
            loss too. Multi-label (sigmoid) models ignore it.
        class_weight: Passed to `fit`.
        callbacks: Keras callbacks, passed to both phases. They always see the
            whole classifier as `self.model`, also when a phase trains on
            cached activations.
        cache: `"off"`, or cache what is fixed in each phase and train the
            rest on it (see `caching.py`): `"auto"` (memory when it fits,
            else disk), `"memory"` or `"disk"`. Only for training data
            without random augmentation: each image is seen as it was on
            the single caching pass.
        cache_dir: Folder for disk caches (default: a temporary folder,
            removed when the phase ends).
        cache_copies: For `train` with random augmentation: phase 1 caches
            this many augmented passes over it and trains each epoch on
            one of them, drawn at random; phase 2 then trains uncached on
            `train` as given. 1 (the default) caches a single pass.
        shuffle: Reshuffle cached training examples every epoch. (Uncached
            data is used as given.)
        seed: Seed of that shuffle.
        backup_dir: Enables resuming: per-epoch backups (Keras
            `BackupAndRestore`) and per-phase state go here, and a call with
            the same `backup_dir` after a crash continues from the last
            finished epoch, skipping finished phases. The settings are
            recorded there too; once progress is saved, a call with other
            settings (phases, rates, method, blocks, label smoothing, class
            weights, the model's architecture) raises `ValueError` naming them.
        jit_compile: Compile the train step with XLA.
        strategy: A `tf.distribute` strategy, or `None`. Build `model` inside
            its scope; each phase compiles inside it. Batches are global
            (split over the replicas). Caching is off under a strategy.
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
    if method not in METHODS:
        raise ValueError(f"Expected `method` in {METHODS}. Received: {method!r}")
    if method in ("bn-bias", "lora") and finetune_epochs and unfreeze_blocks < 1:
        raise ValueError(f"method={method!r} trains parts of the top `unfreeze_blocks` "
                         "blocks, so it needs unfreeze_blocks >= 1. Received: "
                         f"unfreeze_blocks={unfreeze_blocks!r}.")
    patterns = None if block_patterns is None else tuple(block_patterns)
    phases = [Phase("head", head_epochs, head_lr, 0, optimizer, block_patterns=patterns)]
    if method != "linear-probe":
        if finetune_lr is None:
            images = caching.count_images(train)
            finetune_lr = default_finetune_lr(method, images)
            if images is None and method == "two-phase" and finetune_epochs and verbose != 0:
                print(f"Phase 2 rate: the training data's size is unknown, so the default "
                      f"rate is {finetune_lr:g}, meant for {FULL_RATE_IMAGES}+ images; pass "
                      "finetune_lr for a smaller set.")
        phases += finetune_phases(
            finetune_epochs, finetune_lr,
            unfreeze_blocks,
            finetune_optimizer or optimizer, schedule, warmup_epochs, lr_decay,
            gradual_epochs, method="unfreeze" if method == "two-phase" else method,
            lora_rank=lora_rank, ema=ema, block_patterns=patterns)
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"Expected `label_smoothing` in [0, 1). Received: {label_smoothing!r}")
    if isinstance(cache_copies, bool) or not isinstance(cache_copies, (int, np.integer)) \
            or cache_copies < 1:
        raise ValueError(f"Expected `cache_copies` to be an integer >= 1. "
                         f"Received: {cache_copies!r}")
    history = PhasedHistory()
    for phase in phases:
        # Fail before any training.
        freezing.check_block_count(model, phase.unfreeze_blocks, phase.block_patterns)
    journal = resume.Journal(backup_dir) if backup_dir else None
    if journal:
        journal.check_settings(_resume_settings(
            model, phases, label_smoothing=label_smoothing, class_weight=class_weight,
            cache_copies=cache_copies, shuffle=shuffle, seed=seed))
        # Saved LoRA weights load only into a model that has the adapters again.
        completed = journal.completed()
        for phase in phases:
            if phase.name in completed and phase.method == "lora":
                adapters.enable_lora(model, phase.unfreeze_blocks, phase.lora_rank,
                                     block_patterns=phase.block_patterns)
    done = journal.restore(model, history) if journal else []
    if done and verbose != 0:
        print(f"Resuming after the {' and '.join(done)} phase ({len(history.epoch)} epochs) "
              f"from {backup_dir}")
    for phase in (p for p in phases if p.epochs and p.name not in done):
        run_phase(model, phase, train, val, history, callbacks=callbacks,
                  class_weight=class_weight, label_smoothing=label_smoothing, cache=cache,
                  cache_dir=cache_dir, cache_copies=cache_copies, shuffle=shuffle, seed=seed,
                  journal=journal, jit_compile=jit_compile, strategy=strategy, verbose=verbose)
    return history


def _resume_settings(model, phases, **options):
    """What a resumed run must share with the run it continues: the phases, the options
    that change training, and the model's architecture: its weights' shapes and dtypes
    in order (not their names, which Keras numbers per process for unnamed layers).
    Left out: caching, compilation and the strategy, which change the speed and, for
    the cache, only the order in which shuffled examples are drawn."""
    adapters_added = {id(v) for v in adapters.lora_variables(model)}
    architecture = json.dumps([[list(w.shape), str(w.dtype)] for w in model.weights
                               if id(w) not in adapters_added])
    return {"phases": {p.name: dataclasses.asdict(p) for p in phases},
            "model": {"architecture": hashlib.sha256(architecture.encode()).hexdigest()[:12]},
            **options}


def finetune_phases(epochs, learning_rate, unfreeze_blocks, optimizer="adam",
                    schedule="cosine", warmup_epochs=1, lr_decay=1.0, gradual_epochs=0,
                    method="unfreeze", lora_rank=8, ema=0.0, block_patterns=None):
    """Phase 2 as one `Phase`, or with `gradual_epochs` as one stage per unfrozen block."""
    if not gradual_epochs:
        return [Phase("finetune", epochs, learning_rate, unfreeze_blocks, optimizer, schedule,
                      warmup_epochs, lr_decay, method, lora_rank, ema, block_patterns)]
    last = epochs - gradual_epochs * (unfreeze_blocks - 1)
    if unfreeze_blocks < 1 or last < 1:
        raise ValueError(
            f"Gradual unfreezing of {unfreeze_blocks} blocks, {gradual_epochs} epochs each "
            f"before the last, needs finetune_epochs > {gradual_epochs * (unfreeze_blocks - 1)}."
            f" Received: finetune_epochs={epochs}. Raise it, or lower gradual_epochs.")
    return [Phase(f"finetune-{n}", gradual_epochs if n < unfreeze_blocks else last,
                  learning_rate, n, optimizer, schedule, warmup_epochs if n == 1 else 0,
                  lr_decay, method, lora_rank, ema, block_patterns)
            for n in range(1, unfreeze_blocks + 1)]


def run_phase(model, phase, train, val, history, *, callbacks=None, class_weight=None,
              label_smoothing=0.0, cache="off", cache_dir=None, cache_copies=1, shuffle=True,
              seed=None, journal=None, jit_compile=False, strategy=None, verbose="auto"):
    """Sets the trainable blocks, compiles, and fits one phase after `history`'s epochs.

    With `cache` other than `"off"`, the fixed part of the network is run once
    (`caching.plan` says where it ends, and why it did or did not cache) and
    `fit` trains the rest on its output. With a `journal`, the phase can be
    resumed (see `resume.py`).
    """
    began = time.perf_counter()
    report = None
    if phase.method == "lora":
        report = adapters.enable_lora(model, phase.unfreeze_blocks, phase.lora_rank,
                                      block_patterns=phase.block_patterns)
    freezing.set_trainable_blocks(model, phase.unfreeze_blocks, phase.block_patterns,
                                  method=phase.method)
    trainable = freezing.trainable_summary(model).trainable_params
    copies = cache_copies if phase.unfreeze_blocks == 0 else 1
    images = None
    if cache != "off":
        counts = [caching.count_images(d) for d in (train, val) if d is not None]
        images = None if None in counts else counts[0] * copies + sum(counts[1:])
    if cache != "off" and strategy is not None:
        # The cached trainer would be a second model built outside the strategy's scope.
        plan = caching.Plan("off", "not cached: caching is not supported under a "
                                   "tf.distribute strategy")
    elif cache != "off" and cache_copies > 1 and phase.unfreeze_blocks:
        plan = caching.Plan("off", f"not cached: cache_copies={cache_copies} means augmented "
                                   "training data, which phase 2 trains on as given")
    else:
        plan = caching.plan(model, phase.unfreeze_blocks, cache, images,
                            block_patterns=phase.block_patterns)
    if verbose != 0:
        what = {"unfreeze": "unfrozen", "bn-bias": "with trainable BatchNorm and biases",
                "lora": "with LoRA adapters"}[phase.method]
        print(f"Phase {phase.name}: {phase.epochs} epochs, top {phase.unfreeze_blocks} "
              f"backbone blocks {what}, {trainable:,} trainable parameters, "
              f"{phase.optimizer} at {phase.learning_rate:g} ({phase.schedule}); {plan.reason}")
        if report:
            print(f"  {report}")
    with contextlib.ExitStack() as scratch:
        if plan.mode == "disk" and cache_dir is None:  # Removed when the phase ends.
            cache_dir = scratch.enter_context(tempfile.TemporaryDirectory(
                prefix="visiontune-cache-", ignore_cleanup_errors=True))
        trainer, callbacks = model, list(callbacks or [])
        if plan.mode != "off":
            # A progress bar as `fit` shows them: 1 live, 2 one line at the end, 0 none.
            common = dict(seed=seed, cache_dir=cache_dir,
                          verbose=1 if verbose == "auto" else int(verbose))
            train = caching.cache(plan, train, shuffle=shuffle, name=f"{phase.name}-train",
                                  copies=copies, **common)
            val = val if val is None else caching.cache(plan, val, shuffle=False,
                                                        name=f"{phase.name}-val", **common)
            trainer, callbacks = plan.trainer, [_OnFullModel(c, model) for c in callbacks]
        steps = _steps_per_epoch(train)
        # Per-block rates are found from the whole classifier; a cached trainer shares its
        # variables but not its block structure.
        with distribute.scope(strategy):
            optimizer = (discriminative_optimizer(model, phase, steps) if phase.lr_decay != 1
                         else None)
            sparse = _sparse_labels(train)
            if label_smoothing and sparse and not _multi_label(model):
                classes = model.output_shape[-1]
                train, val = (_one_hot(d, classes) for d in (train, val))
                sparse = False
            compile_for_phase(trainer, phase, steps, sparse,
                              jit_compile=jit_compile, multi_label=_multi_label(model),
                              optimizer=optimizer, label_smoothing=label_smoothing)
        start = len(history.epoch)
        callbacks.append(keras.callbacks.TerminateOnNaN())
        finished = []
        if journal:
            callbacks += journal.callbacks(phase)
            finished = journal.finished_epochs(phase, start)
            callbacks = _resumed_best(callbacks, history, finished) + callbacks
        # Or a later phase on the same model would start at the restored epoch.
        keras_private.clear_initial_epoch(trainer)
        with distribute.known_failures(strategy):
            result = trainer.fit(**_as_fit_inputs(train), validation_data=val,
                                 initial_epoch=start, epochs=start + phase.epochs,
                                 callbacks=callbacks, class_weight=class_weight,
                                 verbose=verbose,
                                 shuffle=not isinstance(train, tf.data.Dataset))
    wall = time.perf_counter() - began + sum(e["seconds"] for e in finished)
    history.add_phase(phase, result, trainable, wall, plan, finished)
    losses = result.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDivergedError(
            f"Training stopped: the loss became {losses[-1]} in epoch {len(history.epoch)} "
            f"({phase.name} phase, learning rate {phase.learning_rate:g}). Lower the learning "
            "rate, or check the data for broken values.", history)
    if journal:
        journal.phase_done(model, history)
    return result


class _OnFullModel(keras.callbacks.Callback):
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


class _ModelView:
    """The classifier, except for the training state, which is the trainer's."""

    _TRAINING_STATE = frozenset({"optimizer", "stop_training", "metrics", "train_function",
                                 "make_train_function",
                                 keras_private.INITIAL_EPOCH_ATTRIBUTE})

    def __init__(self, full, trainer):
        object.__setattr__(self, "_full", full)
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name):
        return getattr(self._trainer if name in self._TRAINING_STATE else self._full, name)

    def __setattr__(self, name, value):
        setattr(self._trainer if name in self._TRAINING_STATE else self._full, name, value)


def _resumed_best(callbacks, history, finished):
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


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; `.history` holds the epochs run until then."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


def compile_for_phase(model, phase, steps_per_epoch=None, sparse_labels=True,
                      jit_compile=False, multi_label=None, optimizer=None, label_smoothing=0.0):
    """Compiles `model` with the phase's optimizer (or `optimizer`) and a fitting loss."""
    if multi_label is None:
        multi_label = _multi_label(model)
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

    def add_phase(self, phase, result, trainable_params, wall_time_s, plan=None,
                  finished=()):
        """Appends a phase's epochs: `finished` ones logged before a resume, then `result`."""
        keys = set(result.history) | {key for e in finished for key in e["logs"]}
        ran = len(result.epoch)
        logs = {key: [e["logs"].get(key, math.nan) for e in finished]
                + list(result.history.get(key, [math.nan] * ran)) for key in keys}
        n = len(finished) + len(result.epoch)
        for key in set(self.history) | set(logs):
            if key == "phase":
                continue
            past = self.history.setdefault(key, [math.nan] * len(self.epoch))
            past.extend(logs.get(key, [math.nan] * n))
        self.history["phase"].extend([phase.name] * n)
        self.epoch.extend([e["epoch"] for e in finished] + list(result.epoch))
        self.phases.append({"name": phase.name, "method": phase.method, "epochs": n,
                            "trainable_params": trainable_params,
                            "wall_time_s": wall_time_s,
                            "cache": plan.mode if plan else "off",
                            "cache_reason": plan.reason if plan else ""})


def _multi_label(model):
    return model.layers[-1].get_config().get("activation") == "sigmoid"


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


def _sparse_labels(data):
    if isinstance(data, tf.data.Dataset):
        label_spec = data.element_spec[1]
        return label_spec.shape.rank is not None and label_spec.shape.rank <= 1
    labels = np.asarray(data[1])
    return labels.ndim == 1 or labels.shape[-1] == 1
