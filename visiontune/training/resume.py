"""What a killed run needs to continue where it stopped.

Inside a phase, Keras's `BackupAndRestore` saves the weights, the optimizer
state and the epoch after every epoch, and restores them when `fit` starts
again. It cannot span phases: it deletes its backup when `fit` returns, and
each phase compiles a new optimizer. So `Journal` adds what it lacks:

- after each epoch, that epoch's logs (written before the backup, so the logs
  of epochs that will be replayed are dropped on restore);
- after each phase, the model's weights and the merged history, so that a
  resumed run skips finished phases and starts the next one from their end;
- for LoRA phases, the adapters themselves (see `_KeepAdapters`);
- the settings the run was started with (`settings.json`), so that a call with
  other settings is refused instead of continuing a different run.

Across machines (`worker_loop.py`), `fit` and so `BackupAndRestore` cannot
run: every worker saves a `tf.train.Checkpoint` after every epoch instead
(`checkpoints`). The journal lives in the chief's run directory on the shared
filesystem; only the chief writes it, and every worker reads it to know which
phases are finished and which checkpoint to restore.
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from visiontune.tuning import adapters
from visiontune.common import atomic, forwarding, keras_private
from visiontune.training import worker_loop as worker_loop_lib

STATE = "state.json"
SETTINGS = "settings.json"


def has_progress(folder):
    """Whether `folder` (a `backup_dir`) holds a finished phase or a Keras epoch backup."""
    return os.path.isdir(folder) and (os.path.exists(os.path.join(folder, STATE)) or any(
        os.path.isdir(os.path.join(folder, name)) for name in os.listdir(folder)))


class Journal:
    """Resume state of one `fine_tune` run, kept in `folder`.

    With `writer=False` (a multi-worker run's other workers) it reads the
    chief's journal and writes nothing there; its checkpoints go to `scratch`.
    """

    def __init__(self, folder, writer=True, scratch=None):
        self.folder, self.writer = folder, writer
        self.scratch = scratch or folder
        if writer:
            os.makedirs(folder, exist_ok=True)

    @classmethod
    def for_task(cls, folder, task):
        """The journal of one task `(type, index, is chief)` of a multi-worker run.

        Another worker's checkpoints go to a scratch folder named after the
        journal's folder and the task.
        """
        task_type, index, chief = task
        if chief:
            return cls(folder)
        key = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:12]
        return cls(folder, writer=False, scratch=os.path.join(
            tempfile.gettempdir(), f"visiontune-checkpoints-{task_type}-{index}-{key}"))

    def close(self):
        """Removes this worker's scratch checkpoints (another worker's) once the run ends.

        However it ends: the collective save needs them written, but nothing reads
        them back, since every worker restores the chief's.
        """
        if not self.writer and self.scratch != self.folder:  # Never the chief's journal.
            shutil.rmtree(self.scratch, ignore_errors=True)

    def check_settings(self, settings):
        """Records `settings`; refuses to resume saved progress that was made with others.

        Weights are restored by position and phases by name, so a resume with another
        method, depth, rate or backbone would otherwise continue silently into a
        different run. Before any progress is saved (a first call that failed early),
        new settings simply replace the old.
        """
        path = os.path.join(self.folder, SETTINGS)
        settings = json.loads(json.dumps(_plain(settings), sort_keys=True))
        saved = None
        if self._has_progress():
            try:
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
            except FileNotFoundError:
                pass
        if saved is None:
            if self.writer:
                atomic.write_json(path, settings)
            return
        before, now = _flatten(_renamed(saved)), _flatten(settings)
        changed = [f"{key} ({before.get(key, 'unset')} -> {now.get(key, 'unset')})"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
        if changed:
            raise ValueError(
                f"backup_dir={self.folder!r} holds a run with other settings: "
                f"{', '.join(changed)}. Pass the settings it was started with to resume it, "
                "or another backup_dir (or delete this one) to start a new run.")

    def _has_progress(self):
        return has_progress(self.folder)

    def completed(self):
        """Names of the phases finished before, in order ([] for a new run)."""
        try:
            with open(os.path.join(self.folder, STATE), encoding="utf-8") as f:
                return json.load(f)["completed"]
        except FileNotFoundError:
            return []

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
        history.phases = [_renamed_method(p) for p in state["phases"]]
        return state["completed"]

    def callbacks(self, phase, worker_loop=False):
        """The per-epoch log (the chief's alone), then Keras's `BackupAndRestore`, which
        `worker_loop` replaces with checkpoints of its own (`checkpoints`)."""
        log = [_EpochLog(self._log_path(phase))] if self.writer else []
        if worker_loop:
            return log
        return log + [_BackupAndRestore(self._backup_dir(phase), double_checkpoint=True)]

    def checkpoints(self, phase):
        """Where `worker_loop` saves this worker's checkpoints of `phase`, and restores
        the chief's from."""
        return worker_loop_lib.Checkpoints(save_dir=os.path.join(self.scratch, phase.name),
                                           restore_dir=self._backup_dir(phase))

    def finished_epochs(self, phase, start, worker_loop=False):
        """Logs of the epochs of `phase` that the restored backup will not replay:
        Keras's `BackupAndRestore`, or with `worker_loop` the chief's checkpoint."""
        try:
            with open(self._log_path(phase), encoding="utf-8") as f:
                logged = json.load(f)
            restored = (worker_loop_lib.restored_epoch(self._backup_dir(phase)) if worker_loop
                        else keras_private.backed_up_epoch(self._backup_dir(phase)))
        except (OSError, ValueError, KeyError):
            return []
        if restored is None:
            return []
        return [entry for entry in logged if entry["epoch"] < restored][: restored - start]

    def phase_done(self, model, history):
        """Records the weights and history after a phase, weights first; then drops the
        phase's checkpoints, which the recorded weights replace."""
        if not self.writer:
            return
        name = history.phases[-1]["name"]
        weights = f"after-{name}.weights.npz"
        with atomic.atomic_path(os.path.join(self.folder, weights)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, *model.get_weights())
        atomic.write_json(os.path.join(self.folder, STATE), {
            "completed": [p["name"] for p in history.phases], "weights": weights,
            "history": history.history, "epoch": history.epoch, "phases": history.phases})
        shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def _log_path(self, phase):
        return os.path.join(self.folder, f"{phase.name}-epochs.json")

    def _backup_dir(self, phase):
        return os.path.join(self.folder, phase.name)


def _plain(value):
    """JSON-ready: NumPy scalars as Python numbers, dict keys as strings, tuples as lists,
    so that `{np.int64(0): 1.0}` and `{0: 1.0}` record the same setting."""
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _renamed(saved):
    """Saved settings in today's words (see `_renamed_method`)."""
    phases = saved.get("phases")
    if isinstance(phases, dict):
        saved["phases"] = {name: _renamed_method(p) for name, p in phases.items()}
    return saved


def _renamed_method(phase):
    """Runs begun before visiontune had one vocabulary of methods saved the two-phase
    method as "unfreeze"; they resume under today's name."""
    if isinstance(phase, dict) and phase.get("method") == "unfreeze":
        return {**phase, "method": "two-phase"}
    return phase


def _flatten(value, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}, so that a difference can be named."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


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
        atomic.write_json(self.path, self.entries)


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, which also keeps LoRA adapters (see `_KeepAdapters`)."""

    def set_model(self, model):
        super().set_model(_KeepAdapters(model) if adapters.lora_layers(model) else model)


class _KeepAdapters(forwarding.Forwarding):
    """The model, whose weight files also keep its LoRA adapters as they are.

    Keras saves a LoRA layer's weights with the update merged into the kernel,
    and zeroes the adapters when it loads them. A restored LoRA phase would
    then continue from A = B = 0, where both gradients are zero, and the
    adapters would never learn again. So each weights file gets a companion
    holding the raw kernels and adapters, named by the file's hash (Keras may
    fall back to the previous file when the newest is damaged), and loading
    puts them back.
    """

    def _variables(self):
        return [v for layer in adapters.lora_layers(self._target)
                for v in (keras_private.lora_base_kernel(layer), layer.lora_kernel_a,
                          layer.lora_kernel_b)]

    def save_weights(self, filepath, overwrite=True, **kwargs):
        self._target.save_weights(filepath, overwrite=overwrite, **kwargs)
        folder, keep = os.path.dirname(filepath), _companion(filepath)
        with atomic.atomic_path(keep) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, *[np.asarray(v) for v in self._variables()])
        # Keep the companions of this file and of the previous one (double checkpoint).
        for old in sorted(glob.glob(os.path.join(folder, "adapters-*.npz")),
                          key=os.path.getmtime)[:-2]:
            os.remove(old)

    def load_weights(self, filepath, **kwargs):
        self._target.load_weights(filepath, **kwargs)
        keep = _companion(filepath)
        if not os.path.exists(keep):
            raise FileNotFoundError(
                f"Cannot resume the LoRA phase: {keep}, the adapters that belong to {filepath},"
                " is missing. Delete the backup folder to restart this phase.")
        with np.load(keep) as saved:
            for i, variable in enumerate(self._variables()):
                variable.assign(saved[f"arr_{i}"])


def _companion(weights_path):
    with open(weights_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(os.path.dirname(weights_path), f"adapters-{digest}.npz")
