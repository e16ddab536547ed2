"""Each use of Keras internals (`visiontune/keras_private.py`) against the installed Keras."""

import ast
import hashlib
import os
import shutil

import keras
import numpy as np
import pytest

from visiontune.training import callbacks, history as history_lib
from visiontune.common import keras_private


def _compiled(metrics):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", metrics=metrics)
    x, y = np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0.0, 1.0])
    model.evaluate(x, y, verbose=0)  # Builds the metrics, as the first epoch does.
    return model


def _checkpoint(tmp_path, model, **kwargs):
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"),
                                                 save_best_only=True, **kwargs)
    checkpoint.set_model(model)
    return checkpoint


def test_improves_is_the_direction_keras_decides(tmp_path):
    model = _compiled([keras.metrics.AUC(name="auc"), "accuracy"])
    # "auto": from the metric (AUC and accuracy go up, a loss goes down), not its name.
    for monitor, up in [("val_auc", True), ("val_accuracy", True), ("val_loss", False)]:
        better = keras_private.improves(_checkpoint(tmp_path, model, monitor=monitor))
        assert better(0.9, 0.7) is up and better(0.7, 0.9) is not up, monitor
    explicit = keras_private.improves(_checkpoint(tmp_path, model, monitor="val_auc",
                                                  mode="min"))
    assert explicit(0.7, 0.9)


def test_a_resumed_checkpoint_starts_from_the_best_value_logged_before(tmp_path):
    """A guess from the name ("acc" means maximise) would take 0.7 as AUC's best."""
    model = _compiled([keras.metrics.AUC(name="auc")])
    checkpoint = _checkpoint(tmp_path, model, monitor="val_auc")
    history = history_lib.PhasedHistory()
    history.history = {"val_auc": [0.8, float("nan")]}
    finished = [{"epoch": 2, "logs": {"val_auc": 0.9}}, {"epoch": 3, "logs": {"val_auc": 0.7}}]
    (restorer,) = callbacks.resumed_best([checkpoint], history, finished)
    restorer.on_epoch_end(4, {"val_auc": 0.85})
    assert checkpoint.best == 0.9
    # The checkpoint, called next, then does not save an epoch worse than that.
    checkpoint.on_epoch_end(4, {"val_auc": 0.85})
    assert not (tmp_path / "best.keras").exists()
    checkpoint.on_epoch_end(5, {"val_auc": 0.95})
    assert (tmp_path / "best.keras").exists() and checkpoint.best == 0.95


def test_call_tensors_are_the_tensors_of_the_first_call():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(2)
    outputs = dense(inputs)
    keras.Model(inputs, outputs)
    (got_in,), (got_out,) = keras_private.call_tensors(dense)
    assert got_in is inputs and got_out is outputs


def test_lora_base_kernel_is_the_frozen_variable_under_the_adapter():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    base = keras.ops.convert_to_numpy(layer.kernel).copy()
    layer.enable_lora(2, lora_alpha=2)
    layer.lora_kernel_b.assign(np.ones((2, 3), "float32"))
    kernel = keras_private.lora_base_kernel(layer)
    assert isinstance(kernel, keras.Variable) and not kernel.trainable
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel), base)
    update = keras.ops.convert_to_numpy(layer.lora_kernel_a) @ np.ones((2, 3)) * (2 / 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), base + update,
                               rtol=1e-6)


class _Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_backup_and_restore_keeps_its_epoch_where_resume_reads_it(tmp_path):
    """Keras's backup records the epoch to resume from; on restore it sets the
    initial epoch, keeps it after `fit` (which `clear_initial_epoch` undoes)."""
    x, y = np.zeros((4, 2), "float32"), np.zeros((4,), "float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = str(tmp_path / "backup")
    try:
        model.fit(x, y, epochs=4, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup, double_checkpoint=True), _Crash()])
    except KeyboardInterrupt:
        pass
    assert keras_private.backed_up_epoch(backup) == 2  # epochs 0 and 1 finished
    history = model.fit(x, y, epochs=4, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2, 3]
    assert getattr(model, keras_private.INITIAL_EPOCH_ATTRIBUTE) is not None
    assert model.fit(x, y, epochs=2, verbose=0).epoch == []  # still starts at epoch 2
    keras_private.clear_initial_epoch(model)
    assert model.fit(x, y, epochs=2, verbose=0).epoch == [0, 1]


def test_always_in_inference_mode_keeps_a_trainable_batchnorm_on_its_statistics():
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(0).normal(5.0, 2.0, (16, 3)).astype("float32")
    keras_private.always_in_inference_mode(bn)
    model.fit(x, np.zeros_like(x), epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), 0)
    assert not np.allclose(keras.ops.convert_to_numpy(bn.beta), 0)  # the offset trained
    np.testing.assert_allclose(model(x, training=True), model(x, training=False))
    keras_private.release_inference_mode(bn)
    assert not np.allclose(model(x, training=True), model(x, training=False))


def test_set_untracked_keeps_variables_out_of_the_layers_weights():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    extra = keras.Variable(np.zeros(3, "float32"))
    # Keras's own __setattr__ tracks variables, and refuses new ones once built ...
    with pytest.raises(ValueError, match="already built"):
        layer.extra = (extra,)
    keras_private.set_untracked(layer, "extra", (extra,))  # ... this leaves them out.
    assert len(layer.weights) == 2 and layer.extra == (extra,)


def test_keras_home_is_where_get_file_keeps_files(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"visiontune")
    folder = os.path.join(os.path.expanduser(keras_private.keras_home()), "visiontune-test")
    try:
        path = keras.utils.get_file("probe.bin", source.as_uri(), cache_subdir="visiontune-test")
        assert os.path.samefile(path, os.path.join(folder, "probe.bin"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_file_matches_hash_is_get_files_check(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"weights")
    assert keras_private.file_matches_hash(str(path), hashlib.sha256(b"weights").hexdigest())
    assert keras_private.file_matches_hash(str(path), hashlib.md5(b"weights").hexdigest())
    assert not keras_private.file_matches_hash(str(path), "0" * 64)


def test_replaced_get_file_sees_keras_applications_downloads():
    class Intercepted(Exception):
        pass

    seen = []

    def replacement(original):
        seen.append(original)

        def get_file(fname=None, origin=None, **kwargs):
            raise Intercepted(fname, origin)
        return get_file

    with keras_private.replaced_get_file(replacement), pytest.raises(Intercepted) as caught:
        keras.applications.ResNet50(weights="imagenet", include_top=False,
                                    input_shape=(32, 32, 3))
    fname, origin = caught.value.args
    assert fname.endswith("_notop.h5") and origin.startswith("https://")
    # Restored on exit: the next replacement is handed the public function again,
    # not the intercepting one.
    with keras_private.replaced_get_file(replacement):
        pass
    assert seen == [keras.utils.get_file, keras.utils.get_file]


def test_no_other_module_imports_keras_internals():
    # The whole package, subpackages included (keras_private.py is in common/).
    package = os.path.dirname(os.path.dirname(keras_private.__file__))
    importers, scanned = [], 0
    for root, _, names in os.walk(package):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(root, name)
            if path == os.path.abspath(keras_private.__file__):
                continue
            scanned += 1
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                       for alias in node.names]
            modules += [node.module or "" for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom)]
            if any(m == "keras.src" or m.startswith("keras.src.") for m in modules):
                importers.append(os.path.relpath(path, package))
    assert importers == []
    assert scanned > 50  # Every module, not one folder of them.


def test_fit_draws_the_iterators_per_epoch_the_worker_loop_mirrors():
    """Each iterator over a reshuffling dataset draws a new order; `fit` must see, per
    epoch, the order `FIT_ITERATORS_PER_EPOCH` draws further on."""
    import tensorflow as tf

    def data():
        return tf.data.Dataset.range(6).shuffle(6, seed=1, reshuffle_each_iteration=True)

    orders = [[int(v) for v in ds] for ds in [data()] for _ in range(9)]
    seen = []

    class Record(keras.layers.Layer):
        def call(self, x):
            seen.append([int(v) for v in np.asarray(x).ravel()])
            return x

    model = keras.Sequential([keras.Input((1,)), Record(), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)
    batches = data().map(lambda v: (tf.reshape(tf.cast(v, "float32"), [1]), 0.0)).batch(6)
    model.fit(batches, epochs=3, verbose=0)
    step = keras_private.FIT_ITERATORS_PER_EPOCH
    assert seen == [orders[epoch * step] for epoch in range(3)]
