"""Finding images in real folders, and finding out which of them are broken.

Files are recognised by their first bytes, not their extension: a BMP saved as
`.jpg` is an image, a text file called `.jpg` is not. Hidden files and folders
(`.DS_Store`, `.ipynb_checkpoints`) are ignored, and so are files that are
neither images by content nor named like images (`notes.txt`). A file named like
an image that is not one, is empty, or does not decode, is a *bad file*: it is
skipped and reported, never silently dropped. Keras's
`image_dataset_from_directory` trusts extensions and stops at the first file it
cannot decode, which is why visiontune lists and checks files itself.
"""

import concurrent.futures
import dataclasses
import hashlib
import os

import keras
import tensorflow as tf

# First bytes of the formats `tf.io.decode_image` reads.
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".jfif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class BadFile:
    """A file that looks like an image but cannot be used, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class ScanResult:
    """Images that decode, files that do not, and each good image's content hash."""

    good: list
    bad: list
    hashes: dict


def image_format(path):
    """Returns `"jpeg"`, `"png"`, `"gif"` or `"bmp"` from a file's first bytes, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)


def list_images(folder):
    """Returns `(candidates, bad)`: files that are images by content, and bad files.

    Bad files here are the ones named like images that are empty or are not
    JPEG, PNG, GIF or BMP by content.
    """
    candidates, bad = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(root, name)
            if image_format(path):
                candidates.append(path)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                bad.append(BadFile(path, _not_an_image_reason(path)))
    return candidates, bad


def _not_an_image_reason(path):
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if size == 0:
        return "empty file (0 bytes)"
    return (f"not a JPEG, PNG, GIF or BMP by content (starts with {head[:4]!r}); "
            "convert it or remove it")


def check_decodable(paths, verbose=True):
    """Decodes every file once, in threads, and returns a `ScanResult`.

    The same decoder as the training pipeline is used, so a file that passes
    here decodes there. Each good file's SHA-256 is kept to find duplicates.
    """
    progress = keras.utils.Progbar(len(paths), unit_name="image") if verbose and paths else None
    good, bad, hashes = [], [], {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for i, (path, digest, error) in enumerate(pool.map(_decode_one, paths)):
            if error is None:
                good.append(path)
                hashes[path] = digest
            else:
                bad.append(BadFile(path, error))
            if progress is not None:
                progress.update(i + 1)
    return ScanResult(good, bad, hashes)


def _decode_one(path):
    try:
        with open(path, "rb") as f:
            content = f.read()
        tf.io.decode_image(content, channels=3, expand_animations=False)
        return path, hashlib.sha256(content).hexdigest(), None
    except tf.errors.OpError as error:
        message = error.message.strip().splitlines()[0] if error.message else type(error).__name__
        return path, None, f"cannot be decoded: {message}"
    except OSError as error:
        return path, None, f"cannot be read: {error.strerror}"


def format_bad_files(bad, limit=20):
    """Returns a human-readable report: the count, then one line per file."""
    lines = [f"{len(bad)} bad file(s) skipped:"]
    lines += [f"  {b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (all are listed in data_report.json)")
    return "\n".join(lines)


def cross_duplicates(hashes_a, hashes_b):
    """Returns `[(path_a, path_b)]` pairs with identical content across two sets."""
    by_hash = {}
    for path, digest in hashes_a.items():
        by_hash.setdefault(digest, []).append(path)
    return [(a, path) for path, digest in hashes_b.items() for a in by_hash.get(digest, [])]
