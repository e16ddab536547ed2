"""Image folders (or `builtin:digits`) in, batched `tf.data` pipelines of raw RGB pixels out.

A folder either holds class subfolders directly (split here into training and
validation, stratified and seeded) or has `train/` and `val/` subfolders that
hold them. Files are recognised as images by their first bytes, not by their
extension, so a BMP saved as `.jpg` loads and a text file called `.jpg` is
ignored. Keras's `image_dataset_from_directory` trusts extensions and has no
way to skip a file it cannot decode, which is why this module lists files itself.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from visiontune import backbones

# First bytes of the formats `tf.io.decode_image` reads.
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}
_VAL_DIRS = ("val", "validation", "valid")
_CACHE_BUDGET_BYTES = 2 * 1024**3


@dataclasses.dataclass
class ImageFiles:
    """Image paths with integer labels indexing `class_names`."""

    paths: list
    labels: list
    class_names: list

    def counts(self):
        """Returns `{class name: number of images}`."""
        found = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.class_names))
        return dict(zip(self.class_names, found.tolist()))


@dataclasses.dataclass
class DataSplits:
    """Batched training and validation pipelines plus what they were made from."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_names: list
    train_files: ImageFiles
    val_files: ImageFiles


def image_format(path):
    """Returns `"jpeg"`, `"png"`, `"gif"` or `"bmp"` from a file's first bytes, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    for signature, name in _SIGNATURES.items():
        if head.startswith(signature):
            return name
    return None


def scan_folder(path, class_names=None):
    """Lists the images in a folder of class subfolders.

    Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`) and files
    that are not JPEG, PNG, GIF or BMP by content are skipped.

    Args:
        path: Folder whose subfolders are the classes.
        class_names: Expected classes, e.g. the training classes when
            scanning a validation folder; a mismatch is an error.

    Returns:
        An `ImageFiles` sorted by class, then path.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Data folder {path!r} does not exist or is not a folder. "
                                "Pass a folder of class subfolders (--data DIR).")
    found = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if class_names is not None and found != list(class_names):
        raise ValueError(
            f"Classes in {path!r} differ from the training classes. "
            f"Expected: {list(class_names)}. Found: {found}. "
            "Give both folders the same class subfolders."
        )
    if len(found) < 2:
        raise ValueError(f"Expected at least two class subfolders in {path!r}. Found: {found}. "
                         "Put each class's images in a subfolder named after it.")
    paths, labels = [], []
    for label, name in enumerate(found):
        images = _images_under(os.path.join(path, name))
        if not images:
            raise ValueError(f"Class folder {os.path.join(path, name)!r} has no images "
                             "(JPEG, PNG, GIF or BMP). Add images or remove the folder.")
        paths += images
        labels += [label] * len(images)
    return ImageFiles(paths, labels, found)


def _images_under(folder):
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images += [os.path.join(root, f) for f in sorted(files)
                   if not f.startswith(".") and image_format(os.path.join(root, f))]
    return images


def stratified_split(files, fraction, seed=0):
    """Splits `files` into (train, val), taking `fraction` of every class for val.

    Each class keeps at least one training and one validation image. The same
    seed and files always give the same split.
    """
    is_val = validation_mask(files.labels, files.class_names, fraction, seed)
    labels = np.asarray(files.labels)
    pick = lambda mask: ImageFiles([p for p, m in zip(files.paths, mask) if m],  # noqa: E731
                                   labels[mask].tolist(), files.class_names)
    return pick(~is_val), pick(is_val)


def validation_mask(labels, class_names, fraction, seed=0):
    """Returns a boolean mask that holds out `fraction` of every class, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected `validation_split` in (0, 1). Received: {fraction!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    is_val = np.zeros(len(labels), bool)
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise ValueError(f"Class {name!r} has {len(members)} image(s); splitting off a "
                             "validation set needs at least 2 per class.")
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1)
        is_val[rng.permutation(members)[:n_val]] = True
    return is_val


def load_data(source, image_size, batch_size=32, validation_split=0.2, seed=0, val_source=None):
    """Loads training and validation pipelines from a folder or `builtin:digits`.

    Args:
        source: A folder (see `load_image_folder`) or `"builtin:digits"`.
        image_size: Side length or `(height, width)`.
        batch_size: Batch size of both pipelines.
        validation_split: Fraction of each class held out when there is no
            separate validation data.
        seed: Seed of the split and the shuffling.
        val_source: An explicit validation folder.

    Returns:
        `DataSplits`.
    """
    if str(source).startswith("builtin:"):
        return load_builtin(source.split(":", 1)[1], image_size, batch_size,
                            validation_split, seed)
    return load_image_folder(source, image_size, batch_size, validation_split, seed, val_source)


def load_builtin(name, image_size, batch_size=32, validation_split=0.2, seed=0):
    """Loads a dataset that ships with an installed package, so it works offline.

    `"digits"` is scikit-learn's 1,797 handwritten digits (8x8, 10 classes),
    turned to RGB and resized to `image_size`.
    """
    if name != "digits":
        raise ValueError(f"Unknown built-in dataset {name!r}. Expected: builtin:digits.")
    from sklearn.datasets import load_digits  # Imported here: only this dataset needs it.

    digits = load_digits()
    images = np.repeat(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None],
                       3, axis=-1)
    class_names = [str(d) for d in digits.target_names]
    is_val = validation_mask(digits.target, class_names, validation_split, seed)

    def split(mask):
        return ImageFiles([f"digits[{i}]" for i in np.flatnonzero(mask)],
                          digits.target[mask].tolist(), class_names)

    return DataSplits(
        train=array_pipeline(images[~is_val], digits.target[~is_val], image_size, batch_size,
                             shuffle=True, seed=seed),
        val=array_pipeline(images[is_val], digits.target[is_val], image_size, batch_size),
        class_names=class_names, train_files=split(~is_val), val_files=split(is_val))


def array_pipeline(images, labels, image_size, batch_size=32, shuffle=False, seed=0):
    """Returns a batched pipeline from in-memory uint8 RGB images of any one size."""
    height, width = backbones.normalize_size(image_size)
    ds = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int32)))
    ds = ds.map(lambda x, y: (_to_uint8(tf.image.resize(tf.cast(x, tf.float32),
                                                        (height, width))), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, len(images), height, width, batch_size, shuffle, seed)


def load_image_folder(path, image_size, batch_size=32, validation_split=0.2, seed=0,
                      val_path=None):
    """Loads a folder of class subfolders as training and validation pipelines.

    Args:
        path: A folder of class subfolders, or one with `train/` and `val/`
            subfolders that hold them.
        image_size: Side length or `(height, width)` to resize to.
        batch_size: Batch size of both pipelines.
        validation_split: Fraction of each class held out when there is no
            validation folder.
        seed: Seed of the split and the shuffling.
        val_path: An explicit validation folder.

    Returns:
        `DataSplits` whose pipelines yield `(float32 images in [0, 255], int labels)`.

    Example:

    >>> data = visiontune.load_image_folder("photos/", 224)
    >>> model = visiontune.build_classifier("efficientnetb0", len(data.class_names))
    """
    train_dir = os.path.join(path, "train")
    split_val = next((os.path.join(path, d) for d in _VAL_DIRS
                      if os.path.isdir(os.path.join(path, d))), None)
    if val_path is None and os.path.isdir(train_dir) and split_val:
        path, val_path = train_dir, split_val
    train_files = scan_folder(path)
    if val_path is None:
        train_files, val_files = stratified_split(train_files, validation_split, seed)
    else:
        val_files = scan_folder(val_path, class_names=train_files.class_names)
    return DataSplits(
        train=make_pipeline(train_files, image_size, batch_size, shuffle=True, seed=seed),
        val=make_pipeline(val_files, image_size, batch_size, shuffle=False),
        class_names=train_files.class_names,
        train_files=train_files,
        val_files=val_files,
    )


def make_pipeline(files, image_size, batch_size=32, shuffle=False, seed=0):
    """Returns a batched, prefetched pipeline of decoded, resized images.

    Images are resized keeping their aspect ratio and centre-cropped, then
    cached in memory as uint8 when they fit in the cache budget.
    """
    height, width = backbones.normalize_size(image_size)
    resize = keras.layers.Resizing(height, width, crop_to_aspect_ratio=True)

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return _to_uint8(resize(tf.cast(image, tf.float32))), label

    ds = tf.data.Dataset.from_tensor_slices((files.paths, np.asarray(files.labels, np.int32)))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, len(files.paths), height, width, batch_size, shuffle, seed)


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _finish(ds, count, height, width, batch_size, shuffle, seed):
    """Caches decoded uint8 images when they fit, shuffles, batches and prefetches."""
    if count * height * width * 3 <= _CACHE_BUDGET_BYTES:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)
