"""One training run from a `TrainConfig`: data, model, the recipe, and the run directory.

`run(config)` is what `python -m visiontune.train` (`cli/train.py`) calls;
notebooks call it with a `TrainConfig` too.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from visiontune.training import caching, distribute, recipe, resume
from visiontune.training.history import TrainingDivergedError
from visiontune.training.worker_loop import WorkerLostError
from visiontune.model import classifier
from visiontune.runs import artifacts, config as config_lib, rundir
from visiontune.data import sources as data, images
from visiontune.tuning import freezing
from visiontune.backbones import registry as backbones, weights as weights_lib
from visiontune.common import atomic
from visiontune.evaluation import label_issues as label_issue_finder, metrics as evaluation
from visiontune.evaluation.interpolate import START_WEIGHTS


def run(config, callbacks=None):
    """Trains a classifier as `config` says and writes its run directory.

    Args:
        config: A `TrainConfig`.
        callbacks: Extra Keras callbacks for both phases.

    Returns:
        The `metrics` dict that is also written to `metrics.json`.

    Example:

    >>> metrics = run(TrainConfig(data="photos/", head_epochs=5, finetune_epochs=5))
    """
    config_lib.check(config)
    say = (lambda *a: None) if config.quiet else print
    if config.resume and config.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one of them.")
    cache = _cache_mode(config)
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    strategy, described = distribute.make_strategy(config.distribute)
    multiworker = distribute.is_multiworker(strategy)
    if multiworker and not config.output:
        raise ValueError("--distribute multiworker needs --output: one run directory on a "
                         "filesystem that every worker sees, named the same on each (the "
                         "default name holds the time, which differs between workers).")
    output = config.output or ("" if config.resume else rundir.default_run_dir(config.backbone))
    # TF_CONFIG names a chief only for a multi-worker strategy: under `mirrored` on a
    # machine whose environment sets it, this process is still the only one.
    chief = not multiworker or distribute.is_chief(strategy)
    shared = output  # The chief's run directory, whose backup every worker resumes from.
    if not chief and output:  # Only the chief writes the run directory; see `_worker_dir`.
        output = _worker_dir(output, strategy)
    _check_names(config)  # Before the run directory exists: a typo must not block a retry.
    created = False
    if config.resume and (chief or os.path.isdir(output)):
        out = rundir.prepare_resume(output)
        config_lib.check_resumable(config, os.path.join(out, "config.yaml"))
    else:
        created = not os.path.exists(output)
        out = rundir.prepare(output, config.overwrite or not chief)
        atomic.write_text(os.path.join(out, "config.yaml"), config_lib.saved_yaml(config))
    say(f"visiontune: run directory {os.path.abspath(out)}"
        + (" (resuming)" if config.resume else "")
        + ("" if chief else " (this worker's scratch copy; the chief writes the run)"))
    say(f"Distribution: {described}")
    if strategy is not None:
        n = distribute.replicas(strategy)
        say(f"Batch size {config.batch_size} is global: {config.batch_size / n:g} images per "
            f"replica on {n} replicas"
            + (f", {config.batch_size * distribute.local_replicas(strategy) / n:g} per worker"
               if multiworker else "")
            + (f"; learning rates scaled by {n} (--scale-lr)" if config.scale_lr else
               "; learning rates as given (--scale-lr multiplies them by the replicas)"))
    backup = os.path.join(shared if multiworker else out, "backup")
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        metrics = _train(config, out, cache, callbacks, say, strategy, backup)
    except TrainingDivergedError:
        raise  # Its history.csv (and best.keras, if any) are what the user must see.
    except Exception as error:
        # Not on Ctrl-C: the user may want to look, or --resume. Nor when a worker was
        # lost: its message says to relaunch with --resume, which needs config.yaml (and
        # with no epoch finished, starts over).
        if created and not isinstance(error, WorkerLostError):
            _discard_if_unstarted(out)
        raise
    finally:
        keras.config.set_dtype_policy(policy)
        if not chief:  # Its scratch copy: every worker resumes from the chief's backup.
            shutil.rmtree(out, ignore_errors=True)
    return metrics


def _check_names(config):
    """Fails fast on a backbone, weights file or data folder that does not exist."""
    backbones.get_spec(config.backbone)
    if str(config.weights).lower() != "none":  # As `_train` reads it.
        weights_lib.resolve(config.weights)
    data.check_folder_exists(config.data, "--data")
    data.check_folder_exists(config.val_data, "--val-data")


def _discard_if_unstarted(out):
    """Removes a run directory that did not exist before this call, when the run failed
    before any epoch finished: nothing in it is worth keeping, and it would block the
    corrected command."""
    if not resume.has_progress(os.path.join(out, "backup")) and \
            not os.path.exists(os.path.join(out, "best.keras")):
        shutil.rmtree(out, ignore_errors=True)


def _worker_dir(output, strategy):
    """A non-chief worker's scratch run directory, removed when its run ends, however.

    Nothing in it is needed to resume: every worker restores the chief's
    checkpoints. Its name is fixed by the run's output and the worker's task.
    """
    task_type, index, _ = distribute.task_of(strategy)
    key = hashlib.sha256(os.path.abspath(output).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"visiontune-{task_type}-{index}-{key}")


def _cache_mode(config):
    """`--cache auto` is off when augmentation makes each epoch's images different.

    Unless `--cache-copies` asks for a fixed number of augmented copies: then
    phase 1 caches them (and `fine_tune` trains phase 2 uncached).
    """
    varied = [f"--{name} {value}" for name, value in
              (("augment", config.augment), ("mix", config.mix)) if value != "none"]
    if config.cache_copies > 1:
        if not varied:
            raise ValueError(
                f"--cache-copies {config.cache_copies} needs --augment or --mix: without "
                "augmentation every copy would be the same. Use --cache-copies 1.")
        if config.cache == "off":
            raise ValueError(f"--cache-copies {config.cache_copies} caches phase 1, which "
                             "--cache off forbids; pass one of them.")
        return config.cache
    if varied and config.cache in ("memory", "disk"):
        raise ValueError(
            f"--cache {config.cache} cannot be combined with {' and '.join(varied)}: a cache "
            "would keep one random version of each image for every epoch. Use --cache auto "
            "or off, --augment none, or --cache-copies N to cache N augmented copies in "
            "phase 1.")
    return "off" if varied else config.cache


def _train(config, out, cache, callbacks, say, strategy=None, backup=None):
    """The run itself: data, model, the recipe, then the run directory's artifacts."""
    keras.utils.set_random_seed(config.seed)
    splits, model = _data_and_model(config, cache, say, strategy)
    multiworker = distribute.is_multiworker(strategy)
    chief = not multiworker or distribute.is_chief(strategy)
    if multiworker:
        say(f"Split sha256 {_split_digest(splits)} (the same on every worker)")
    label_issues = label_issue_summary(config, model, splits, out, say, strategy) \
        if chief else None
    callbacks = [*(callbacks or [])]
    if chief:  # Other workers of a multi-worker run only lend their replicas.
        callbacks += [keras.callbacks.ModelCheckpoint(os.path.join(out, "best.keras"),
                                                      monitor="val_loss", save_best_only=True),
                      keras.callbacks.TensorBoard(os.path.join(out, "logs"))]
    try:
        history = _fine_tune(config, model, splits, out, cache, callbacks, strategy,
                             backup or os.path.join(out, "backup"))
    except TrainingDivergedError as error:
        artifacts.write_history_csv(os.path.join(out, "history.csv"), error.history)
        best = os.path.join(out, "best.keras")
        artifacts.make_plain(best, config.method)
        kept = (f" The best checkpoint so far is kept at {os.path.abspath(best)}."
                if os.path.exists(best) else " No epoch finished with a finite loss.")
        raise TrainingDivergedError(str(error) + kept, error.history) from None
    if multiworker:
        task_type, index, _ = distribute.task_of(strategy)
        say(f"Final weights sha256 {weights_digest(model)} ({task_type} {index})")
        if not chief:
            return {"class_names": list(splits.class_names), "history": history.history}
        # Keras's predict fails under the strategy too: score and save a plain copy.
        model = _outside_strategy(model)
    metrics = artifacts.final_metrics(model, splits, history, out)
    metrics["settings"] = {"method": config.method, "precision": config.precision,
                           "jit_compile": config.jit_compile,
                           "distribute": config.distribute,
                           "replicas": distribute.replicas(strategy)}
    artifacts.write_artifacts(out, model, splits, history, metrics, label_issues)
    artifacts.make_plain(os.path.join(out, "best.keras"), config.method)
    after_head = os.path.join(out, "backup", START_WEIGHTS)
    if os.path.exists(after_head):  # Kept for `python -m visiontune.interpolate`.
        os.replace(after_head, os.path.join(out, START_WEIGHTS))
    for scratch in ("backup", "cache"):  # Resume state and caches are no longer needed.
        shutil.rmtree(os.path.join(out, scratch), ignore_errors=True)
    accuracy = evaluation.describe_accuracy(metrics["val_accuracy"],
                                            metrics["val_accuracy_ci95"], metrics["val_images"])
    say(f"val_accuracy {accuracy}, val_loss {metrics['val_loss']:.4f}")
    say(f"visiontune: model saved to {os.path.abspath(os.path.join(out, 'model.keras'))}")
    return metrics


def _data_and_model(config, cache, say, strategy):
    """Loads the data as `config` says and builds the classifier (in the strategy's scope)."""
    weights = None if str(config.weights).lower() == "none" else config.weights
    image_size = config.image_size or _default_size(config.backbone)
    splits = data.load_data(
        config.data, image_size, batch_size=config.batch_size,
        validation_split=config.validation_split, seed=config.seed, val_source=config.val_data,
        augment_preset=config.augment, mix=config.mix, resize=config.resize,
        strict=config.strict, split_file=config.split, verbose=not config.quiet)
    _report_data(splits, config, say)
    with distribute.scope(strategy):
        model = classifier.build_classifier(
            config.backbone, len(splits.class_names), weights, image_size,
            pooling=config.pooling, dropout=config.dropout, hidden_units=config.hidden_units,
            l2=config.l2, l1=config.l1, **config.backbone_args)
    say(freezing.trainable_summary(model))
    if config.method == "linear-probe" and config.finetune_epochs:
        say("Method linear-probe: phase 1 only; the phase 2 settings are not used")
    # Under a strategy `fine_tune` turns caching off itself and says why in each phase line.
    if cache == "off" and config.cache == "auto":
        say("Cache: off, because augmentation changes the training images every epoch")
    return splits, model


def label_issue_summary(config, model, splits, out, say, strategy=None):
    """Before training, while the backbone is still the pretrained one: ranks the
    training images whose label looks wrong (`evaluation/label_issues.py`) into
    `label_issues.csv`, and returns what `data_report.json` records about them."""
    csv_path = os.path.join(out, "label_issues.csv")
    ordered = splits.train_in_order
    skipped = (
        "off (--no-label-issues)" if not config.label_issues else
        "skipped: random weights (--weights none) give no features to judge labels by"
        if str(config.weights).lower() == "none" else
        "skipped: this data source has no in-order training pipeline" if ordered is None else
        "skipped: multi-label data" if len(ordered.element_spec[1].shape) != 1 else
        "skipped under --distribute multiworker (run python -m visiontune.doctor "
        "--label-issues instead)" if distribute.is_multiworker(strategy) else None)
    if skipped:
        if os.path.exists(csv_path):  # From an earlier attempt of this run, with it on.
            os.remove(csv_path)
        return {"count": None, "reason": skipped}
    labels = np.asarray(splits.train_files.labels)
    say(f"Label issues: pooled features of {len(labels)} training images, then 5-fold "
        "logistic regression (--no-label-issues skips this)")
    began = time.perf_counter()
    features, found = label_issue_finder.pooled_features(model, ordered, verbose=0)
    if not np.array_equal(found, labels):  # The in-order pipeline must match the file list.
        raise RuntimeError("label issues: the in-order training pipeline does not match "
                           "train_files (a bug in visiontune.data)")
    try:
        report = label_issue_finder.examine(
            features, labels, splits.train_files.paths, splits.class_names, seed=config.seed,
            groups=label_issue_finder.content_groups(splits.train_files))
    except label_issue_finder.TooFewImages as error:
        say(f"Label issues: skipped ({error})")
        return {"count": None, "reason": f"skipped: {error}"}
    report.write_csv(csv_path)
    say(f"Label issues: {report.count} of {len(labels)} training images have a label the "
        f"pretrained features doubt, listed in label_issues.csv (candidates for a person to "
        f"review, not verdicts)")
    return {**report.summary(), "weights": str(config.weights),
            "seconds": round(time.perf_counter() - began, 1)}


def weights_digest(model):
    """SHA-256 of the model's weights, bit for bit, in order: equal models, equal digests."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def _split_digest(splits):
    """SHA-256 of the training and validation file lists and labels."""
    files = [(f.paths, [int(label) for label in np.asarray(f.labels).reshape(-1)])
             if f is not None else None for f in (splits.train_files, splits.val_files)]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def _outside_strategy(model):
    """The same model with plain variables, by a round trip through a `.keras` file."""
    with tempfile.TemporaryDirectory(prefix="visiontune-") as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        # Outside the scope: one device's variables. The optimizer is not needed, and a
        # per-block `MultiOptimizer` (--lr-decay) cannot be rebuilt from a file.
        return keras.saving.load_model(path, compile=False)


def _fine_tune(config, model, splits, out, cache, callbacks, strategy, backup):
    """`fine_tune` with the run's settings; rates scale with the replicas (`--scale-lr`)."""
    scale = distribute.replicas(strategy) if config.scale_lr else 1
    finetune_lr = config.finetune_lr
    if scale != 1 and config.method != "linear-probe":
        finetune_lr = (finetune_lr or recipe.default_finetune_lr(
            config.method, caching.count_images(splits.train))) * scale
    return recipe.fine_tune(
        model, splits.train, splits.val, callbacks=callbacks,
        head_epochs=config.head_epochs, head_lr=config.head_lr * scale,
        finetune_epochs=config.finetune_epochs, finetune_lr=finetune_lr,
        unfreeze_blocks=config.unfreeze_blocks, optimizer=config.optimizer,
        method=config.method, lora_rank=config.lora_rank,
        label_smoothing=config.label_smoothing, ema=config.ema,
        schedule=config.schedule, warmup_epochs=config.warmup_epochs,
        lr_decay=config.lr_decay, gradual_epochs=config.gradual_epochs,
        cache=cache, cache_dir=os.path.join(out, "cache"),
        cache_copies=config.cache_copies, seed=config.seed,
        backup_dir=backup, jit_compile=config.jit_compile,
        strategy=strategy,
        verbose=0 if config.quiet else "auto",
        class_weight=splits.class_weight() if config.class_weight == "balanced" else None)


def _report_data(splits, config, say):
    say(f"Data: {config.data}; training images per class {splits.train_files.counts()}, "
        f"{len(splits.val_files.paths)} validation images")
    if splits.bad_files:
        say(images.format_bad_files(splits.bad_files))
    if splits.duplicates:
        say(f"Warning: {len(splits.duplicates)} validation image(s) duplicate training images "
            f"byte for byte (leakage inflates validation accuracy), e.g. "
            f"{splits.duplicates[0][1]} == {splits.duplicates[0][0]}. "
            "Run python -m visiontune.doctor for the full list.")
    if config.class_weight == "balanced":
        say(f"Class weights: {splits.class_weight()}")


def _default_size(backbone):
    return backbones.get_spec(backbone).default_size
