"""The history of a run that spans several phases, and the error that ends a diverged one."""

import math

import keras


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


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; `.history` holds the epochs run until then."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history
