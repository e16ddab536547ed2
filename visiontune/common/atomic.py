"""Atomic file writing: a crash leaves the old file or the new one, never half of one.

Every artifact is written to a temporary file in the same folder and then
renamed over its target (`os.replace` is atomic within a file system). This is
a leaf: it imports nothing from visiontune, so every layer can use it.
"""

import contextlib
import json
import os
import tempfile


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
