"""The run directory: created safely, never overwritten silently.

An existing non-empty run directory is never reused silently; its files are written
through `common.atomic`, so a crash leaves either the old file or the new one.
"""

import os
import shutil
import time


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
