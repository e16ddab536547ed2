"""The run directory: created safely, written atomically.

An existing non-empty run directory is never reused silently, and every
artifact is written to a temporary file in the same folder and then renamed,
so a crash leaves either the old file or the new one, never half of one.
"""

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time

from visiontune import adapters, freezing


def default_run_dir(backbone, root="runs"):
    """Returns `runs/<timestamp>-<backbone>`."""
    return os.path.join(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}")


# Files only a visiontune run writes; --overwrite empties only folders holding one.
_RUN_MARKERS = ("config.yaml", "model.keras", "best.keras", "split.json", "metrics.json")


def prepare(path, overwrite=False):
    """Creates `path`, refusing an existing non-empty folder unless `overwrite`.

    With `overwrite`, the folder's contents are deleted, but only when it is a
    visiontune run directory, so a mistyped `--output .` cannot empty a project.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--output {path!r} exists and is not a folder. "
                              "Choose another --output.")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise FileExistsError(
                f"Run directory {path!r} already exists and is not empty. "
                "Pass --overwrite to replace its contents, or choose another --output.")
        if not any(os.path.exists(os.path.join(path, m)) for m in _RUN_MARKERS):
            raise FileExistsError(
                f"--overwrite refused: {path!r} is not empty and is not a visiontune run "
                "directory (it has none of " + ", ".join(_RUN_MARKERS) + "). "
                "Choose another --output.")
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
    os.makedirs(path, exist_ok=True)
    return path


def prepare_resume(path):
    """Checks that `path` holds an unfinished run that `--resume` can continue."""
    if not path:
        raise ValueError("--resume needs --output: the run directory to continue.")
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        raise FileNotFoundError(
            f"--resume: {path!r} holds no unfinished run (no config.yaml). "
            "Check --output, or start the run without --resume.")
    if os.path.isfile(os.path.join(path, "metrics.json")):
        raise FileExistsError(
            f"--resume: the run in {path!r} has already finished (it has metrics.json). "
            "Use --overwrite to train it again, or choose another --output.")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; renames it to `path` on success.

    The temporary name keeps `path`'s extension, which `model.save` checks.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, obj):
    """Writes `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_history_csv(path, history):
    """Writes one row per epoch, with its phase, from a `PhasedHistory`."""
    keys = ["epoch", "phase"] + sorted(k for k in history.history if k != "phase")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for i, epoch in enumerate(history.epoch):
            writer.writerow([epoch + 1] + [history.history[k][i] for k in keys[1:]])


def save_model(model, path):
    """Saves `model` to a `.keras` file atomically, with any LoRA adapters merged and every
    BatchNormalization frozen (see `freezing.batchnorm_frozen`)."""
    plain = adapters.merge_lora(model)
    with atomic_path(path) as tmp, freezing.batchnorm_frozen(plain):
        plain.save(tmp)
