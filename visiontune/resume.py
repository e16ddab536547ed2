"""What a killed run needs to continue where it stopped.

Inside a phase, Keras's `BackupAndRestore` saves the weights, the optimizer
state and the epoch after every epoch, and restores them when `fit` starts
again. It cannot span phases: it deletes its backup when `fit` returns, and
each phase compiles a new optimizer. So `Journal` adds what it lacks:

- after each epoch, that epoch's logs (written before the backup, so the logs
  of epochs that will be replayed are dropped on restore);
- after each phase, the model's weights and the merged history, so that a
  resumed run skips finished phases and starts the next one from their end.
"""

import json
import os
import time

import keras
import numpy as np

from visiontune import rundir

STATE = "state.json"


class Journal:
    """Resume state of one `fine_tune` run, kept in `folder`."""

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def restore(self, model, history):
        """Loads the last finished phase into `model` and `history`; returns their names."""
        path = os.path.join(self.folder, STATE)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        with np.load(os.path.join(self.folder, state["weights"])) as saved:
            model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        history.history, history.epoch = state["history"], state["epoch"]
        history.phases = state["phases"]
        return state["completed"]

    def callbacks(self, phase):
        """The per-epoch log and Keras's `BackupAndRestore` for `phase`, in that order."""
        return [_EpochLog(self._log_path(phase)),
                keras.callbacks.BackupAndRestore(self._backup_dir(phase),
                                                 double_checkpoint=True)]

    def finished_epochs(self, phase, start):
        """Logs of the epochs of `phase` that `BackupAndRestore` will not replay."""
        try:
            with open(self._log_path(phase), encoding="utf-8") as f:
                logged = json.load(f)
            with open(os.path.join(self._backup_dir(phase), "training_metadata.json"),
                      encoding="utf-8") as f:
                restored = json.load(f)["epoch"]
        except (OSError, ValueError, KeyError):
            return []
        return [entry for entry in logged if entry["epoch"] < restored][: restored - start]

    def phase_done(self, model, history):
        """Records the weights and history after a phase, weights first."""
        name = history.phases[-1]["name"]
        weights = f"after-{name}.weights.npz"
        with rundir.atomic_path(os.path.join(self.folder, weights)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, *model.get_weights())
        rundir.write_json(os.path.join(self.folder, STATE), {
            "completed": [p["name"] for p in history.phases], "weights": weights,
            "history": history.history, "epoch": history.epoch, "phases": history.phases})

    def _log_path(self, phase):
        return os.path.join(self.folder, f"{phase.name}-epochs.json")

    def _backup_dir(self, phase):
        return os.path.join(self.folder, phase.name)


class _EpochLog(keras.callbacks.Callback):
    """Appends each epoch's logs to a JSON file, atomically."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None):
        try:
            with open(self.path, encoding="utf-8") as f:
                self.entries = json.load(f)
        except (OSError, ValueError):
            self.entries = []

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.entries = [e for e in self.entries if e["epoch"] < epoch]
        self.entries.append({"epoch": epoch, "seconds": time.perf_counter() - self.began,
                             "logs": {k: float(v) for k, v in (logs or {}).items()}})
        rundir.write_json(self.path, self.entries)
