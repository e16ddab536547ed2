"""The two-phase recipe: warm the head on a frozen backbone, then unfreeze the top.

`fine_tune` is the whole recipe on one screen: plan the phases, pick up a
resumed run, run each phase. The mechanics are in the modules it calls, so
other schedules can reuse them: `phases` (`Phase`), `fit` (`run_phase`),
`optimizers` and `history` (`PhasedHistory`).
"""

import dataclasses
import hashlib
import json

from visiontune.common import checks
from visiontune.training import caching, distribute, resume
from visiontune.training.fit import run_phase
from visiontune.training.history import PhasedHistory
from visiontune.training.phases import Phase, finetune_phases
from visiontune.tuning import adapters, freezing

# What phase 2 trains (`freezing.METHODS`: the top blocks' weights, only their BatchNorm
# affine parameters and biases, or only LoRA adapters on them), or nothing: phase 1 alone
# is a linear probe.
METHODS = freezing.METHODS + ("linear-probe",)
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
            Under `MultiWorkerMirroredStrategy` every worker makes the same
            call; `worker_loop.py` trains instead of `fit` (which fails
            there), `callbacks` run on every worker, and `backup_dir` must be
            one folder on a filesystem that every worker sees: the chief
            writes it, and the others read it to resume.
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
    _check_method(method, finetune_epochs, unfreeze_blocks)
    phases = plan_phases(
        train, head_epochs=head_epochs, head_lr=head_lr, finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr, unfreeze_blocks=unfreeze_blocks, optimizer=optimizer,
        finetune_optimizer=finetune_optimizer, schedule=schedule, warmup_epochs=warmup_epochs,
        lr_decay=lr_decay, gradual_epochs=gradual_epochs, method=method, lora_rank=lora_rank,
        ema=ema, block_patterns=block_patterns, verbose=verbose)
    _check_options(label_smoothing, cache_copies)
    for phase in phases:
        # Fail before any training.
        freezing.check_block_count(model, phase.unfreeze_blocks, phase.block_patterns)
    history = PhasedHistory()
    journal = None
    if backup_dir and distribute.is_multiworker(strategy):
        journal = resume.Journal.for_task(backup_dir, distribute.task_of(strategy))
    elif backup_dir:
        journal = resume.Journal(backup_dir)
    if distribute.is_multiworker(strategy) and not distribute.is_chief(strategy):
        verbose = 0  # The chief shows the progress; every worker logs the same.
    try:
        with distribute.scope(strategy):  # A resumed LoRA phase's adapters are variables.
            done = _resume(journal, model, phases, history, verbose,
                           label_smoothing=label_smoothing, class_weight=class_weight,
                           cache_copies=cache_copies, shuffle=shuffle, seed=seed)
        elsewhere = len(history.epoch)  # Restored epochs, which this process did not run.
        for phase in (p for p in phases if p.epochs and p.name not in done):
            run_phase(model, phase, train, val, history, callbacks=callbacks,
                      class_weight=class_weight, label_smoothing=label_smoothing, cache=cache,
                      cache_dir=cache_dir, cache_copies=cache_copies, shuffle=shuffle,
                      seed=seed, journal=journal, jit_compile=jit_compile, strategy=strategy,
                      epochs_elsewhere=elsewhere, verbose=verbose)
            elsewhere = 0
    finally:
        if journal:
            journal.close()  # However the run ends: see `Journal.close`.
    return history


def _check_method(method, finetune_epochs, unfreeze_blocks):
    if method not in METHODS:
        raise ValueError(f"Expected `method` in {METHODS}. Received: {method!r}")
    if method in ("bn-bias", "lora") and finetune_epochs and unfreeze_blocks < 1:
        raise ValueError(f"method={method!r} trains parts of the top `unfreeze_blocks` "
                         "blocks, so it needs unfreeze_blocks >= 1. Received: "
                         f"unfreeze_blocks={unfreeze_blocks!r}.")


def _check_options(label_smoothing, cache_copies):
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"Expected `label_smoothing` in [0, 1). Received: {label_smoothing!r}")
    checks.check_int(cache_copies, "cache_copies", 1)


def plan_phases(train, *, head_epochs, head_lr, finetune_epochs, finetune_lr, unfreeze_blocks,
                optimizer, finetune_optimizer, schedule, warmup_epochs, lr_decay,
                gradual_epochs, method, lora_rank, ema, block_patterns, verbose="auto"):
    """The recipe's phases: the head, then phase 2 (or its gradual stages) unless the
    method is the linear probe. Phase 2's rate defaults to `default_finetune_lr`."""
    patterns = None if block_patterns is None else tuple(block_patterns)
    phases = [Phase("head", head_epochs, head_lr, 0, optimizer, block_patterns=patterns)]
    if method == "linear-probe":
        return phases
    if finetune_lr is None:
        images = caching.count_images(train)
        finetune_lr = default_finetune_lr(method, images)
        if images is None and method == "two-phase" and finetune_epochs and verbose != 0:
            print(f"Phase 2 rate: the training data's size is unknown, so the default "
                  f"rate is {finetune_lr:g}, meant for {FULL_RATE_IMAGES}+ images; pass "
                  "finetune_lr for a smaller set.")
    return phases + finetune_phases(
        finetune_epochs, finetune_lr, unfreeze_blocks, finetune_optimizer or optimizer,
        schedule, warmup_epochs, lr_decay, gradual_epochs, method=method,
        lora_rank=lora_rank, ema=ema, block_patterns=patterns)


def _resume(journal, model, phases, history, verbose, **options):
    """Checks a resumed run's settings and restores its finished phases into `model` and
    `history`; returns their names (none without a journal)."""
    if not journal:
        return []
    journal.check_settings(_resume_settings(model, phases, **options))
    # Saved LoRA weights load only into a model that has the adapters again.
    completed = journal.completed()
    for phase in phases:
        if phase.name in completed and phase.method == "lora":
            adapters.enable_lora(model, phase.unfreeze_blocks, phase.lora_rank,
                                 block_patterns=phase.block_patterns)
    done = journal.restore(model, history)
    if done and verbose != 0:
        print(f"Resuming after the {' and '.join(done)} phase ({len(history.epoch)} epochs) "
              f"from {journal.folder}")
    return done


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
