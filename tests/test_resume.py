import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import visiontune
from conftest import tiny_backbone, write_image_folder
from test_caching import fixed_order_data
from test_cli import FAST


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch` (counted across phases)."""

    def __init__(self, epoch):
        super().__init__()
        self.at, self.epoch = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at:
            raise KeyboardInterrupt("simulated crash")


class Epochs(keras.callbacks.Callback):
    """Records the epochs (counted across phases) that a call actually trains."""

    def __init__(self):
        super().__init__()
        self.trained = []

    def on_epoch_begin(self, epoch, logs=None):
        self.trained.append(epoch)


def fit(backup_dir, cache, callbacks=()):
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    train, val = fixed_order_data()
    # Phase 2 at 1e-3 moves the weights, so a resume that lost Adam's state would show.
    history = visiontune.fine_tune(model, train, val, head_epochs=3, finetune_epochs=4,
                                   finetune_lr=1e-3, unfreeze_blocks=2, cache=cache,
                                   shuffle=False, backup_dir=backup_dir,
                                   callbacks=list(callbacks), verbose=0)
    return model, history


@pytest.mark.slow  # trains three times or more
@pytest.mark.parametrize("cache", ["off", "memory"])
@pytest.mark.parametrize("crash_epoch", [1, 5])
def test_resume_after_a_crash_continues_in_the_right_phase(tmp_path, cache, crash_epoch):
    reference, reference_history = fit(str(tmp_path / "uninterrupted"), cache)
    assert not os.path.exists(tmp_path / "uninterrupted" / "finetune")  # Backup deleted.
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(backup, cache, [Interrupt(crash_epoch)])
    state = os.path.join(backup, "state.json")
    assert os.path.exists(state) == (crash_epoch >= 3)  # Phase 1 finished before the crash.
    # With a fixed data order, restarting the interrupted phase from its start would end
    # on the same weights as resuming it, so count the epochs the resumed call trains:
    # only those after the last one backed up (the crash was inside `crash_epoch`).
    restarted = str(tmp_path / "restarted")
    shutil.copytree(backup, restarted)
    epochs = Epochs()
    model, history = fit(backup, cache, [epochs])
    assert epochs.trained == list(range(crash_epoch, 7))
    # A journal that ignored the mid-phase backup would restart the phase; this check
    # tells the two apart, as it does here when that backup is gone.
    phase = "head" if crash_epoch < 3 else "finetune"
    shutil.rmtree(os.path.join(restarted, phase))
    from_the_start = Epochs()
    fit(restarted, cache, [from_the_start])
    assert from_the_start.trained == list(range(0 if phase == "head" else 3, 7))
    for expected, got in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert history.epoch == list(range(7))
    assert history.history["phase"] == ["head"] * 3 + ["finetune"] * 4
    np.testing.assert_allclose(history.history["val_loss"],
                               reference_history.history["val_loss"], rtol=1e-4)
    assert [p["epochs"] for p in history.phases] == [3, 4]


KILLER = """
import os, signal, sys, keras
from visiontune.cli import train
from visiontune.runs import config, flags

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == {epoch} and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

train.run(flags.parse_config(sys.argv[1:]), callbacks=[Kill()])
"""


@pytest.mark.slow  # trains three times or more
def test_sigkill_in_phase_2_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=12)
    # 24 training images in batches of 8: 3 steps per epoch; phase 2 is epochs 2 to 4.
    flags = ["--data", data, "--backbone", "mobilenetv2", "--weights", "none",
             "--image-size", "32", "--head-epochs", "2", "--finetune-epochs", "3",
             "--batch-size", "8", "--quiet"]  # The default --cache auto.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    subprocess.run([sys.executable, "-m", "visiontune.train", "--output", reference, *flags],
                   check=True, env=env, timeout=600)
    crash = subprocess.run([sys.executable, "-c", KILLER.format(epoch=3), "--output", killed,
                            *flags], env=env, timeout=600, capture_output=True, text=True)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert not os.path.exists(os.path.join(killed, "metrics.json"))
    # A plain command line, without TF_CPP_MIN_LOG_LEVEL: its output must show no
    # TensorFlow C++ log lines (see quiet_start.py).
    plain = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    resumed = subprocess.run([sys.executable, "-m", "visiontune.train", "--output", killed,
                              "--resume", "--no-quiet"], env=plain, timeout=600,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    native = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda drivers", re.M)
    assert not native.search(resumed.stdout + resumed.stderr), resumed.stderr
    assert "Resuming after the head phase" in resumed.stdout
    expected = json.load(open(os.path.join(reference, "metrics.json")))
    got = json.load(open(os.path.join(killed, "metrics.json")))
    # The kill came in epoch 4 (phase 2's second), so the resumed process trains epochs
    # 4 and 5 only; restarting phase 2 would train epoch 3 again.
    trained = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    assert trained == ["Epoch 4/5", "Epoch 5/5"], resumed.stdout
    assert got["epochs"] == expected["epochs"] == {"head": 2, "finetune": 3}
    # Loose: a resumed epoch reshuffles from the start of its process, so its batches are
    # not the ones the uninterrupted run drew (the weights match only approximately).
    assert abs(got["val_accuracy"] - expected["val_accuracy"]) <= 0.01
    assert abs(got["val_loss"] - expected["val_loss"]) <= 0.01
    history = open(os.path.join(killed, "history.csv")).read().splitlines()
    assert [row.split(",")[:2] for row in history[1:]] == [
        ["1", "head"], ["2", "head"], ["3", "finetune"], ["4", "finetune"], ["5", "finetune"]]
    assert not os.path.exists(os.path.join(killed, "backup"))


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path, capsys):
    from visiontune.cli import train
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    out = str(tmp_path / "run")
    assert train.main(["--output", out, "--resume", *FAST]) == 2
    assert "no unfinished run" in capsys.readouterr().err
    os.makedirs(out)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(f"data: {data}\nhead_lr: 0.01\n")
    assert train.main(["--data", data, "--output", out, "--resume", "--head-lr", "0.02",
                       *FAST]) == 2
    assert "head_lr (0.01 -> 0.02)" in capsys.readouterr().err
    open(os.path.join(out, "metrics.json"), "w").write("{}")
    assert train.main(["--output", out, "--resume", *FAST]) == 2
    assert "already finished" in capsys.readouterr().err
    assert train.main(["--output", out, "--resume", "--overwrite", *FAST]) == 2


def fit_1_plus_3(backup, callbacks=(), finetune_lr=1e-3, **fine_tune_kwargs):
    """One head epoch and three phase 2 epochs (top 2 blocks) of the tiny classifier.

    Phase 2 runs at 1e-3, not at the default for 48 images (1.4e-5): Adam moves each
    weight by about the rate per step, so below 1e-5 a lost optimizer state would
    hide inside the tests' tolerance.
    """
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    train, val = fixed_order_data()
    visiontune.fine_tune(model, train, val, head_epochs=1, finetune_epochs=3,
                         finetune_lr=finetune_lr, unfreeze_blocks=2, shuffle=False,
                         backup_dir=backup, callbacks=list(callbacks), verbose=0,
                         **fine_tune_kwargs)
    return model


@pytest.mark.slow  # trains three times or more
def test_resume_with_discriminative_rates_restores_every_blocks_optimizer(tmp_path):
    fit = functools.partial(fit_1_plus_3, lr_decay=0.5)
    reference = fit(str(tmp_path / "whole"))
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(backup, [Interrupt(3)])  # Phase 2's third epoch; Adam has two epochs of state.
    # Keras's backup of phase 2 is there, so the resumed run continues from epoch 3 with
    # the restored optimizers; a reset Adam would not reproduce the weights.
    assert os.path.isfile(os.path.join(backup, "finetune", "training_metadata.json"))
    epochs = Epochs()
    resumed = fit(backup, [epochs])
    assert epochs.trained == [3]  # Restarting phase 2 would train epochs 1 to 3 again.
    for expected, got in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_api_resume_refuses_other_settings_and_names_them(tmp_path):
    """`fine_tune(backup_dir=...)` with another method, depth, rate or backbone must not
    continue the saved run as if it were the same one."""
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit_1_plus_3(backup, [Interrupt(2)])
    for changed, message in [
            (dict(method="bn-bias"), "phases.finetune.method (two-phase -> bn-bias)"),
            (dict(unfreeze_blocks=1), "phases.finetune.unfreeze_blocks (2 -> 1)"),
            (dict(finetune_lr=3e-4), "phases.finetune.learning_rate (0.001 -> 0.0003)"),
            (dict(label_smoothing=0.1), "label_smoothing (0.0 -> 0.1)")]:
        kwargs = {"unfreeze_blocks": 2, **changed}
        with pytest.raises(ValueError, match=re.escape(message)):
            _fit_with(backup, **kwargs)
    keras.utils.set_random_seed(0)
    other = visiontune.build_classifier(tiny_backbone(size=32), 3, None, dropout=0.0,
                                        hidden_units=(8,))
    with pytest.raises(ValueError, match=r"model\.architecture"):
        visiontune.fine_tune(other, *fixed_order_data(), head_epochs=1, finetune_epochs=3,
                             finetune_lr=1e-3, unfreeze_blocks=2, shuffle=False,
                             backup_dir=backup, verbose=0)
    epochs = Epochs()
    fit_1_plus_3(backup, [epochs])  # The same settings resume.
    assert epochs.trained == [2, 3]


def _fit_with(backup, unfreeze_blocks, **kwargs):
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    visiontune.fine_tune(model, *fixed_order_data(), head_epochs=1, finetune_epochs=3,
                         **{"finetune_lr": 1e-3, **kwargs}, unfreeze_blocks=unfreeze_blocks,
                         shuffle=False, backup_dir=backup, verbose=0)


def _auto_named_model():
    """A model whose layers Keras names itself: the names count up within a process."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    backbone = keras.Model(inputs, keras.layers.Conv2D(8, 3, strides=2)(x))
    return visiontune.build_classifier(backbone, 3, None, dropout=0.0)


def test_api_resume_accepts_the_same_settings_in_the_same_process(tmp_path):
    """Rebuilt in one process, unnamed layers get new names (conv2d_1, ...), and a
    dict of class weights from NumPy has NumPy keys: neither is another setting."""
    backup = str(tmp_path / "backup")
    train_ds, val_ds = fixed_order_data()
    weights = dict(zip(np.arange(3), [1.0, 2.0, 1.0]))  # np.int64 keys

    def run(callbacks=(), class_weight=weights):
        keras.utils.set_random_seed(0)
        model = _auto_named_model()
        visiontune.fine_tune(model, train_ds, val_ds, head_epochs=1, finetune_epochs=2,
                             finetune_lr=1e-3, unfreeze_blocks=1, shuffle=False,
                             class_weight=class_weight, backup_dir=backup,
                             callbacks=list(callbacks), verbose=0)
        return model

    with pytest.raises(KeyboardInterrupt):
        run([Interrupt(2)])
    epochs = Epochs()
    run([epochs], class_weight={0: 1.0, 1: 2.0, 2: 1.0})
    assert epochs.trained == [2]


def test_a_first_call_that_failed_before_any_progress_can_be_retried_with_new_settings(
        tmp_path):
    backup = str(tmp_path / "backup")
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    with pytest.raises(KeyboardInterrupt):  # in the first batch: nothing saved yet
        visiontune.fine_tune(model, *fixed_order_data(), head_epochs=1, finetune_epochs=1,
                             head_lr=1.0, backup_dir=backup, callbacks=[Interrupt(0)],
                             verbose=0)
    assert os.path.exists(os.path.join(backup, "settings.json"))
    assert not os.path.exists(os.path.join(backup, "state.json"))
    visiontune.fine_tune(model, *fixed_order_data(), head_epochs=1, finetune_epochs=1,
                         head_lr=1e-3, backup_dir=backup, verbose=0)  # not refused


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_a_resumed_checkpoint_does_not_take_the_first_resumed_epoch_for_the_best(
        tmp_path, cache):
    """`mode="max"` on the validation loss makes the first epoch the best (the loss
    falls), so no resumed epoch may save. Without the restored best, or with a
    restorer that missed the checkpoint inside the cached run's wrapper, one would."""
    backup, best = str(tmp_path / "backup"), str(tmp_path / "best.keras")
    monitor = "val_loss"

    def checkpoint():
        return keras.callbacks.ModelCheckpoint(best, monitor=monitor, mode="max",
                                               save_best_only=True)

    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    with pytest.raises(KeyboardInterrupt):
        visiontune.fine_tune(model, *fixed_order_data(), head_epochs=2, finetune_epochs=3,
                             finetune_lr=1e-3, unfreeze_blocks=2, cache=cache, shuffle=False,
                             backup_dir=backup, callbacks=[checkpoint(), Interrupt(4)],
                             verbose=0)
    assert os.path.exists(best)
    os.remove(best)
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    history = visiontune.fine_tune(model, *fixed_order_data(), head_epochs=2,
                                   finetune_epochs=3, finetune_lr=1e-3, unfreeze_blocks=2,
                                   cache=cache, shuffle=False, backup_dir=backup,
                                   callbacks=[checkpoint()], verbose=0)
    losses = history.history[monitor]
    assert losses[0] == max(losses)  # what makes "no save" the right answer
    assert not os.path.exists(best)


def test_a_run_saved_under_the_old_method_name_resumes(tmp_path):
    """Before one vocabulary, `Phase.method` was "unfreeze" for the two-phase method, and
    backups saved it so; such a run must resume, and report today's name."""
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit_1_plus_3(backup, [Interrupt(2)])  # After the head phase, inside phase 2.
    for name in ("settings.json", "state.json"):
        path = os.path.join(backup, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert '"method": "two-phase"' in text
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace('"method": "two-phase"', '"method": "unfreeze"'))
    epochs = Epochs()
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    history = visiontune.fine_tune(model, *fixed_order_data(), head_epochs=1,
                                   finetune_epochs=3, finetune_lr=1e-3, unfreeze_blocks=2,
                                   shuffle=False, backup_dir=backup, callbacks=[epochs],
                                   verbose=0)
    assert epochs.trained == [2, 3]
    assert [p["method"] for p in history.phases] == ["two-phase", "two-phase"]
