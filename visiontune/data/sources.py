"""One entry point for data: `load_data` turns any source into batched `tf.data` pipelines.

Sources: a folder of class subfolders (or with `train/`, `val/` and `test/`
subfolders), `tfds:NAME[:SPLIT]`, `builtin:digits`, or an `(images, labels)`
pair of numpy arrays. Every source ends in the same pipeline: resize, cache the
uint8 pixels when they fit in memory, shuffle, batch, augment, prefetch. The
pipelines yield float32 RGB in [0, 255] with integer labels (multi-hot for
multi-label arrays), which is what visiontune's models take.
"""

import os

import numpy as np
import tensorflow as tf

from visiontune.data import augment, images, pipeline as pipelines
from visiontune.common import network, targets
from visiontune.data.splits import (
    DataSplits,
    ImageFiles,
    reuse_split,
    split_subfolders,
    stratified_split,
    validation_mask,
)

RESIZE_POLICIES = ("crop", "stretch")
BUILTIN, TFDS = "builtin:", "tfds:"  # Sources that are not folders start with these.
_TFDS_HOST = "https://storage.googleapis.com"


def load_data(source, image_size, *, batch_size=32, validation_split=0.2, seed=0,
              val_source=None, augment_preset="none", mix="none", resize="crop", strict=False,
              split_file=None, verbose=True):
    """Loads training and validation pipelines from any supported source.

    Args:
        source: A folder, `"tfds:NAME[:SPLIT]"`, `"builtin:digits"`, or an
            `(images, labels)` pair of arrays (uint8 or float RGB in [0, 255]).
        image_size: Side length or `(height, width)`.
        batch_size: Batch size of every pipeline.
        validation_split: Fraction held out (per class, seeded) when there is
            no separate validation data.
        seed: Seed of the split, the shuffling and the augmentation.
        val_source: Separate validation data, in the same forms as `source`.
        augment_preset: `"none"`, `"light"` or `"strong"` (training only).
        mix: `"none"`, `"mixup"` or `"cutmix"` (training only).
        resize: `"crop"` keeps the aspect ratio and crops the centre (the
            ImageNet evaluation protocol, so objects keep their shape);
            `"stretch"` resizes the whole image to the target shape.
        strict: Stop with an error naming every bad file instead of skipping.
        split_file: A `split.json` from an earlier run; its files are reused.
        verbose: Show the pre-scan's progress bar.

    Returns:
        `DataSplits`.

    Example:

    >>> data = visiontune.load_data("photos/", 224, augment_preset="light")
    >>> data.train_files.counts()
    {'cats': 120, 'dogs': 98}
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"Expected `resize` in {RESIZE_POLICIES}. Received: {resize!r}")
    if isinstance(source, (tuple, list)):
        train_x, train_y = source
        val_x, val_y = val_source if val_source is not None else (None, None)
        splits = load_arrays(train_x, train_y, val_x, val_y, image_size, batch_size,
                             validation_split, seed, resize)
    elif str(source).startswith(BUILTIN):
        splits = load_builtin(source.split(":", 1)[1], image_size, batch_size,
                              validation_split, seed, resize)
    elif str(source).startswith(TFDS):
        splits = load_tfds(source, image_size, batch_size, validation_split, seed, val_source,
                           resize)
    else:
        splits = load_image_folder(source, image_size, batch_size, validation_split, seed,
                                   val_source, resize, strict, split_file, verbose)
    splits.train = augment.apply(splits.train, augment_preset, mix, len(splits.class_names),
                                 seed).prefetch(tf.data.AUTOTUNE)
    if mix != "none":  # Mixed labels are one-hot; evaluation data must match the loss.
        one_hot = lambda x, y: (x, tf.one_hot(y, len(splits.class_names)))  # noqa: E731
        splits.val = splits.val.map(one_hot)
        splits.test = splits.test.map(one_hot) if splits.test is not None else None
    return splits


def check_folder_exists(source, flag="--data"):
    """Raises `FileNotFoundError` when `source` names a folder that does not exist.

    Cheap, so a run can check its sources before it creates its run directory.
    """
    if (source and isinstance(source, (str, os.PathLike))
            and not str(source).startswith((BUILTIN, TFDS)) and not os.path.isdir(source)):
        raise FileNotFoundError(f"{flag} {str(source)!r}: no such folder. Pass a folder of "
                                "class subfolders, builtin:digits, or tfds:NAME.")


def load_first_available(sources, image_size, **kwargs):
    """Loads the first of `sources` that can be loaded here; returns `(source, splits)`.

    For examples that should run anywhere, e.g. a local folder, else a TFDS
    dataset (which needs the network or a prepared copy), else the offline
    `"builtin:digits"`. Each source that fails is printed with the reason.
    `kwargs` go to `load_data`.
    """
    for source in sources:
        try:
            return source, load_data(source, image_size, **kwargs)
        except (OSError, ValueError) as error:  # FileNotFoundError is an OSError.
            print(f"Skipping {source!r}: {error}")
    raise ValueError(f"None of the data sources could be loaded: {list(sources)}")


def scan_folder(path, class_names=None, check=True, verbose=False):
    """Lists the usable images in a folder of class subfolders.

    Args:
        path: Folder whose subfolders are the classes.
        class_names: Expected classes (the training classes when scanning a
            validation folder); a mismatch is an error.
        check: Decode every image once to find broken ones.
        verbose: Show a progress bar while decoding.

    Returns:
        An `ImageFiles`, with bad files listed in `.bad`.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Data folder {path!r} does not exist or is not a folder. "
                                "Pass a folder of class subfolders (--data DIR).")
    found = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if class_names is not None and found != list(class_names):
        raise ValueError(f"Classes in {path!r} differ from the training classes. "
                         f"Expected: {list(class_names)}. Found: {found}. "
                         "Give both folders the same class subfolders.")
    if len(found) < 2:
        raise ValueError(f"Expected at least two class subfolders in {path!r}. Found: {found}. "
                         "Put each class's images in a subfolder named after it.")
    per_class = [images.list_images(os.path.join(path, name)) for name in found]
    candidates = [p for good, _ in per_class for p in good]
    scan = images.check_decodable(candidates, verbose) if check else images.ScanResult(
        candidates, [], {})
    usable = set(scan.good)
    paths, labels = [], []
    for label, (name, (good, _)) in enumerate(zip(found, per_class)):
        mine = [p for p in good if p in usable]
        if not mine:
            raise ValueError(f"Class folder {os.path.join(path, name)!r} has no usable images "
                             "(JPEG, PNG, GIF or BMP that decode). Add images or remove it.")
        paths += mine
        labels += [label] * len(mine)
    bad = [b for _, listed_bad in per_class for b in listed_bad] + scan.bad
    return ImageFiles(paths, labels, found, sorted(bad, key=lambda b: b.path), scan.hashes)


def load_image_folder(path, image_size, batch_size=32, validation_split=0.2, seed=0,
                      val_path=None, resize="crop", strict=False, split_file=None,
                      verbose=False):
    """Loads a folder of class subfolders; see `load_data` for the arguments."""
    test_path = None
    layout = split_subfolders(path)
    if layout and (val_path or layout.get("val")):
        path, val_path, test_path = layout["train"], val_path or layout["val"], layout.get("test")
    train_files = scan_folder(path, verbose=verbose)
    bad = list(train_files.bad)
    if split_file and os.path.exists(split_file):
        train_files, val_files = reuse_split(train_files, split_file)
    elif val_path is None:
        train_files, val_files = stratified_split(train_files, validation_split, seed)
    else:
        val_files = scan_folder(val_path, train_files.class_names, verbose=verbose)
        bad += val_files.bad
    if strict and bad:
        raise ValueError("--strict: bad image files found. "
                         + images.format_bad_files(bad, limit=len(bad)))
    test = None
    if test_path:
        test_files = scan_folder(test_path, train_files.class_names, verbose=verbose)
        bad += test_files.bad
        test = pipelines.file_pipeline(test_files, image_size, batch_size, resize=resize)
    return DataSplits(
        train=pipelines.file_pipeline(train_files, image_size, batch_size, True, seed, resize),
        val=pipelines.file_pipeline(val_files, image_size, batch_size, resize=resize),
        class_names=train_files.class_names, train_files=train_files, val_files=val_files,
        test=test, bad_files=bad,
        duplicates=images.cross_duplicates(train_files.hashes, val_files.hashes),
        train_in_order=pipelines.file_pipeline(train_files, image_size, batch_size,
                                               resize=resize, keep=False))


def load_builtin(name, image_size, batch_size=32, validation_split=0.2, seed=0,
                 resize="crop"):
    """Loads a dataset that ships with an installed package, so it works offline.

    `"digits"` is scikit-learn's 1,797 handwritten digits (8x8, 10 classes),
    turned to RGB and resized to `image_size`.
    """
    if name != "digits":
        raise ValueError(f"Unknown built-in dataset {name!r}. Expected: builtin:digits.")
    from sklearn.datasets import load_digits  # Imported here: only this dataset needs it.

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    return load_arrays(rgb, digits.target, None, None, image_size, batch_size,
                       validation_split, seed, resize,
                       class_names=[str(d) for d in digits.target_names], name="digits")


def load_arrays(x, y, val_x=None, val_y=None, image_size=224, batch_size=32,
                validation_split=0.2, seed=0, resize="crop", class_names=None, name="array"):
    """Loads in-memory images: `x` is (n, h, w, 3) RGB in [0, 255], `y` int or multi-hot."""
    x, y = np.asarray(x), _indices_if_sparse(y)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
        raise ValueError(f"Expected images of shape (n, height, width, 3) and n labels. "
                         f"Received: images {x.shape}, labels {y.shape}.")
    multi_hot = y.ndim == 2
    num_classes = y.shape[1] if multi_hot else int(y.max()) + 1
    names = class_names or [str(i) for i in range(num_classes)]
    labels = y.argmax(axis=1) if multi_hot else y
    if val_x is None:
        if multi_hot:
            is_val = np.random.default_rng(seed).random(len(y)) < validation_split
        else:
            is_val = validation_mask(labels, names, validation_split, seed)
        x, val_x, y, val_y, labels = x[~is_val], x[is_val], y[~is_val], y[is_val], \
            labels[~is_val]
    val_y = _indices_if_sparse(val_y)
    val_labels = val_y.argmax(axis=1) if multi_hot else val_y
    index = lambda n: [f"{name}[{i}]" for i in range(n)]  # noqa: E731
    return DataSplits(
        train=pipelines.tensor_pipeline(x, y, image_size, batch_size, True, seed, resize),
        val=pipelines.tensor_pipeline(np.asarray(val_x), val_y, image_size, batch_size,
                                      resize=resize),
        class_names=names,
        train_files=ImageFiles(index(len(x)), labels.tolist(), names),
        val_files=ImageFiles(index(len(val_labels)), val_labels.tolist(), names),
        train_in_order=pipelines.tensor_pipeline(x, y, image_size, batch_size, resize=resize,
                                                 keep=False))


def _indices_if_sparse(labels):
    """`(n, 1)` labels as `(n,)` class indices, as everywhere (`common.targets`); wider
    labels stay multi-hot."""
    labels = np.asarray(labels)
    return labels.reshape(-1) if labels.ndim == 2 and targets.is_sparse(labels) else labels


def load_tfds(source, image_size, batch_size=32, validation_split=0.2, seed=0,
              val_source=None, resize="crop"):
    """Loads `tfds:NAME[:SPLIT]` through tensorflow-datasets.

    Without a validation source, the dataset's `validation` split is used if
    it has one, and otherwise the last `validation_split` of the training split.
    """
    import tensorflow_datasets as tfds  # Imported here: only this source needs it.

    _, name, train_split = (source.split(":", 2) + [""])[:3]
    builder = tfds.builder(name)
    if not builder.is_prepared() and not network.host_reachable(_TFDS_HOST):
        raise OSError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and the download "
            f"host cannot be reached. On a machine with network access run "
            f"`tfds build {name}` and copy its data folder to {builder.data_dir}, or point "
            "--data at a folder of images.")
    builder.download_and_prepare()
    train_split = train_split or "train"
    if val_source:
        val_split = val_source.split(":", 2)[2] if val_source.startswith("tfds:") else val_source
    elif "validation" in builder.info.splits:
        val_split = "validation"
    else:
        keep = round(100 * (1 - validation_split))
        train_split, val_split = f"{train_split}[:{keep}%]", f"{train_split}[{keep}%:]"
    image_key, label_key = builder.info.supervised_keys
    names = builder.info.features[label_key].names
    train = builder.as_dataset(split=train_split, as_supervised=True, shuffle_files=False)
    val = builder.as_dataset(split=val_split, as_supervised=True, shuffle_files=False)

    def labels(split):  # Reads labels without decoding a single image.
        raw = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={image_key: tfds.decode.SkipDecoding()})
        return [int(y) for y in raw.map(lambda ex: ex[label_key]).as_numpy_iterator()]

    train_labels, val_labels = labels(train_split), labels(val_split)
    return DataSplits(
        train=pipelines.finish(train.map(pipelines.resize_fn(image_size, resize)),
                               len(train_labels), image_size, batch_size, True, seed),
        val=pipelines.finish(val.map(pipelines.resize_fn(image_size, resize)),
                             len(val_labels), image_size, batch_size),
        class_names=list(names),
        train_files=ImageFiles([f"{name}:{train_split}[{i}]" for i in range(len(train_labels))],
                               train_labels, list(names)),
        val_files=ImageFiles([f"{name}:{val_split}[{i}]" for i in range(len(val_labels))],
                             val_labels, list(names)),
        train_in_order=pipelines.finish(train.map(pipelines.resize_fn(image_size, resize)),
                                        len(train_labels), image_size, batch_size, keep=False))
