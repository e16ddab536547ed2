"""Each use of Keras internals (`visiontune/keras_private.py`) against the installed Keras."""

import keras
import numpy as np

from visiontune import finetune, keras_private


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
    history = finetune.PhasedHistory()
    history.history = {"val_auc": [0.8, float("nan")]}
    finished = [{"epoch": 2, "logs": {"val_auc": 0.9}}, {"epoch": 3, "logs": {"val_auc": 0.7}}]
    (restorer,) = finetune._resumed_best([checkpoint], history, finished)
    restorer.on_epoch_end(4, {"val_auc": 0.85})
    assert checkpoint.best == 0.9
    # The checkpoint, called next, then does not save an epoch worse than that.
    checkpoint.on_epoch_end(4, {"val_auc": 0.85})
    assert not (tmp_path / "best.keras").exists()
    checkpoint.on_epoch_end(5, {"val_auc": 0.95})
    assert (tmp_path / "best.keras").exists() and checkpoint.best == 0.95
