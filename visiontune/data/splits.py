"""Which images train and which validate: seeded stratified splits, saved and reused.

The split is a function of the file list and the seed alone, so every run (and
every worker of a multi-worker run) computes the same one; `DataSplits` keeps
the file lists beside the pipelines so a run can save them (`split.json`).
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from visiontune.common import atomic

_SPLIT_DIRS = {"val": ("val", "validation", "valid"), "test": ("test",)}


@dataclasses.dataclass
class ImageFiles:
    """Image paths with integer labels indexing `class_names`, plus what was skipped."""

    paths: list
    labels: list
    class_names: list
    bad: list = dataclasses.field(default_factory=list)
    hashes: dict = dataclasses.field(default_factory=dict)

    def counts(self):
        """Returns `{class name: number of images}`."""
        found = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.class_names))
        return dict(zip(self.class_names, found.tolist()))

    def subset(self, mask):
        """Returns the files where `mask` is true, keeping their hashes."""
        paths = [p for p, keep in zip(self.paths, mask) if keep]
        return ImageFiles(paths, np.asarray(self.labels)[np.asarray(mask)].tolist(),
                          self.class_names, hashes={p: self.hashes[p] for p in paths
                                                    if p in self.hashes})


@dataclasses.dataclass
class DataSplits:
    """Training and validation pipelines (and test, if given) and what made them."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_names: list
    train_files: ImageFiles
    val_files: ImageFiles
    test: tf.data.Dataset = None
    bad_files: list = dataclasses.field(default_factory=list)
    duplicates: list = dataclasses.field(default_factory=list)
    # The training images in `train_files` order, neither shuffled nor augmented: what
    # the label-issue finder (`evaluation/label_issues.py`) reads.
    train_in_order: tf.data.Dataset = None

    def class_weight(self):
        """Returns balanced class weights, `n / (classes * count)`, as a `fit` dict."""
        counts = np.asarray(list(self.train_files.counts().values()), dtype=float)
        return {i: float(counts.sum() / (len(counts) * c)) for i, c in enumerate(counts) if c}

    def report(self):
        """Returns what a run's `data_report.json` holds."""
        return {"class_counts": {"train": self.train_files.counts(),
                                 "val": self.val_files.counts()},
                "bad_files": [dataclasses.asdict(b) for b in self.bad_files],
                "bad_file_count": len(self.bad_files),
                "train_val_duplicates": [list(pair) for pair in self.duplicates]}

    def save_split(self, path):
        """Writes the train and validation file lists, so a rerun uses the same files."""
        atomic.write_json(path, {"class_names": self.class_names,
                                 "train": self.train_files.paths, "val": self.val_files.paths})


def stratified_split(files, fraction, seed=0):
    """Splits `files` into (train, val), taking `fraction` of every class for val.

    Each class keeps at least one training and one validation image. The same
    seed and files always give the same split.
    """
    is_val = validation_mask(files.labels, files.class_names, fraction, seed)
    return files.subset(~is_val), files.subset(is_val)


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


def split_subfolders(path):
    """Returns `{"train": ..., "val": ..., "test": ...}` subfolders that exist, or {}."""
    if not os.path.isdir(os.path.join(path, "train")):
        return {}
    found = {"train": os.path.join(path, "train")}
    for kind, names in _SPLIT_DIRS.items():
        existing = [os.path.join(path, n) for n in names if os.path.isdir(os.path.join(path, n))]
        if existing:
            found[kind] = existing[0]
    return found


def reuse_split(files, split_file):
    """Splits `files` as a run's saved `split.json` did, so a rerun or resume uses the same
    images; fails when the classes differ or a listed image is gone."""
    with open(split_file, encoding="utf-8") as f:
        saved = json.load(f)
    if saved["class_names"] != files.class_names:
        raise ValueError(f"Split file {split_file!r} has classes {saved['class_names']}, but "
                         f"the data folder has {files.class_names}.")
    index = {p: i for i, p in enumerate(files.paths)}
    missing = [p for p in saved["train"] + saved["val"] if p not in index]
    if missing:
        raise ValueError(f"Split file {split_file!r} names {len(missing)} image(s) that are "
                         f"gone or unreadable, e.g. {missing[0]!r}. Restore them, or start "
                         "a new run without the saved split.")
    val = set(saved["val"])
    keep = np.isin(np.arange(len(files.paths)), [index[p] for p in saved["train"] + saved["val"]])
    is_val = np.asarray([p in val for p in files.paths])
    return files.subset(keep & ~is_val), files.subset(keep & is_val)
