"""Which given labels look wrong: confident learning on a frozen backbone's features.

Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021. Every image gets out-of-fold predicted
probabilities p (k-fold logistic regression on the backbone's global-average-
pooled features, so no image is scored by a model that saw its label). Then:

1. Class j's threshold t_j is the mean of p_j over the images labelled j.
2. An image labelled i is counted as "confidently of class j" when p_j >= t_j
   (the largest such p_j when several pass); these counts form the confident
   joint C[i, j].
3. C is calibrated so that each row sums to the number of images labelled i,
   and the off-diagonal sum of row i estimates how many labels i are wrong.
4. That many images labelled i are flagged: those with the lowest p_i
   ("prune by class"), except any whose likeliest class is its given label.

This follows the paper; cleanlab's `find_label_issues(filter_by="prune_by_class")`
differs in details (it takes the overall argmax when several classes pass their
thresholds, and rounds the estimates so that each row keeps its total).
Exact duplicate images are kept in one fold (grouped by content hash), so that
a copy cannot vouch for a wrong label.

Images are ranked by self-confidence p_i (lowest first), the ranking cleanlab
uses by default. Written here because cleanlab is a large dependency for these
forty lines of numpy, and scikit-learn (already a dependency) does the rest.

The flags are candidates for a person to review, not verdicts: an image the
features find ambiguous is flagged as readily as a mislabelled one.
"""

import csv
import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from visiontune.backbones import registry
from visiontune.common import atomic, keras_private
from visiontune.data import pipeline, sources, splits as split_lib
from visiontune.model import classifier
from visiontune.tuning import freezing

# Inverse L2 penalties tried; the one with the lowest out-of-fold log loss is kept.
C_GRID = np.logspace(-3, 1, 5)
REVIEW_NOTE = ("These are candidates for a person to review, not verdicts: an ambiguous "
               "or unusual image is flagged as readily as a mislabelled one.")


class TooFewImages(ValueError):
    """A class has too few images for cross-validation."""


@dataclasses.dataclass
class LabelIssueReport:
    """Out-of-fold probabilities of every image and the ones whose label looks wrong.

    Attributes:
        paths: One name per image (a file path, or `name[i]` for arrays).
        labels: Given labels, class indices.
        probabilities: Out-of-fold predicted probabilities, `(n, classes)`.
        class_names: Names of the classes.
        flagged: Boolean mask of the suspected label issues.
        splits: Which split each image came from (`"train"`, `"val"`, ...).
    """

    paths: list
    labels: np.ndarray
    probabilities: np.ndarray
    class_names: list
    flagged: np.ndarray
    splits: list

    @property
    def count(self):
        """How many images are flagged."""
        return int(self.flagged.sum())

    def ranking(self):
        """Indices of all images, the most suspicious first (lowest self-confidence)."""
        return np.argsort(label_quality(self.probabilities, self.labels), kind="stable")

    def rows(self, flagged_only=True):
        """One dict per image (or flagged image), the most suspicious first."""
        quality = label_quality(self.probabilities, self.labels)
        suggested = self.probabilities.argmax(axis=1)
        rows = []
        for rank, i in enumerate(self.ranking(), start=1):
            if flagged_only and not self.flagged[i]:
                continue
            rows.append({"rank": rank, "path": self.paths[i], "split": self.splits[i],
                         "given_label": self.class_names[self.labels[i]],
                         "suggested_label": self.class_names[suggested[i]],
                         "given_label_probability": round(float(quality[i]), 4),
                         "suggested_label_probability":
                             round(float(self.probabilities[i, suggested[i]]), 4),
                         "flagged": bool(self.flagged[i])})
        return rows

    def write_csv(self, path, flagged_only=False):
        """Writes `rows()` to a CSV file, atomically: every image, the most suspicious
        first, with a `flagged` column."""
        fields = ["rank", "path", "split", "given_label", "suggested_label",
                  "given_label_probability", "suggested_label_probability", "flagged"]
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(self.rows(flagged_only))

    def summary(self):
        """What a run's `data_report.json` records."""
        return {"count": self.count, "examined": len(self.labels),
                "per_split": {s: int(sum(f for f, t in zip(self.flagged, self.splits) if t == s))
                              for s in dict.fromkeys(self.splits)},
                "method": "confident learning (prune by class) on out-of-fold logistic "
                          "regression over the frozen backbone's pooled features",
                "note": REVIEW_NOTE}


def label_quality(probabilities, labels):
    """Self-confidence: each image's out-of-fold probability of its given label."""
    return np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)]


def confident_issues(probabilities, labels):
    """Confident learning, pruned by class: a boolean mask of suspected label issues.

    Args:
        probabilities: Out-of-fold probabilities, `(n, classes)`.
        labels: Given class indices, `(n,)`.
    """
    p = np.asarray(probabilities, dtype="float64")
    labels = np.asarray(labels, dtype=int)
    n, k = p.shape
    counts = np.bincount(labels, minlength=k)
    # 1. Per-class thresholds: the mean self-confidence of the class's own images.
    thresholds = np.array([p[labels == j, j].mean() if counts[j] else np.inf
                           for j in range(k)])
    # 2. The confident joint: the likeliest class among those above their threshold.
    above = p >= thresholds - 1e-12
    masked = np.where(above, p, -1.0)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[confident >= 0], confident[confident >= 0]), 1)
    # 3. Calibrated: row i sums to the count of label i.
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], rows, out=np.zeros_like(joint),
                           where=rows > 0)
    off_diagonal = calibrated.sum(axis=1) - np.diag(calibrated)
    # 4. Prune by class: the lowest self-confidences of the class, as many as estimated,
    # except where the given label is also the likeliest one.
    quality = label_quality(p, labels)
    flagged = np.zeros(n, bool)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        take = min(int(round(off_diagonal[i])), len(members))
        flagged[members[np.argsort(quality[members], kind="stable")[:take]]] = True
    flagged &= p.argmax(axis=1) != labels
    return flagged


def out_of_fold_probabilities(features, labels, folds=5, seed=0, groups=None):
    """k-fold logistic regression: each image's probabilities from a model that never
    saw it. The penalty C is the one of `C_GRID` whose out-of-fold probabilities have
    the lowest log loss (so choosing it costs no fits beyond the k per value).

    `groups` (e.g. content hashes) keeps the images of a group in one fold: an
    exact duplicate with the same label would otherwise vouch for a wrong one.
    """
    labels = np.asarray(labels, dtype=int)
    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2 or counts.min() < 2:
        few = [int(c) for c, n in zip(present, counts) if n < 2]
        raise TooFewImages(
            "Finding label issues needs at least 2 classes with at least 2 images each; "
            + (f"class indices {few} have 1." if few else "there is only one class."))
    k = int(min(folds, counts.min()))
    if groups is not None and len(set(groups)) < len(groups):
        cv = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(
            features, labels, groups))
    else:
        cv = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(features, labels))
    best, best_loss = None, np.inf
    for c in C_GRID:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        out = cross_val_predict(probe, features, labels, cv=cv, method="predict_proba")
        loss = log_loss(labels, out, labels=present)
        if loss < best_loss:
            best, best_loss = out, loss
    full = np.zeros((len(labels), int(labels.max()) + 1))
    full[:, present] = best  # A class with no images gets probability 0.
    return full


def pooled_features(model, dataset, verbose=0):
    """Global-average-pooled output of `model`'s backbone for every image of `dataset`,
    in order, with the labels: the features phase 1 trains the head on.

    `model` is a classifier `build_classifier` made (its backbone's weights are used
    as they are: pass one before training, so the features never saw the labels).
    """
    backbone = freezing.find_backbone(model)
    _, outputs = keras_private.call_tensors(backbone)  # The classifier's call of it.
    pooled = keras.layers.GlobalAveragePooling2D(dtype="float32")(outputs[0])
    extractor = keras.Model(model.input, pooled)
    # Called, not `predict_on_batch`: one trace for every batch size (no retracing
    # warnings), and under a tf.distribute strategy one row per image.
    step = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    features, labels = [], []
    steps = int(dataset.cardinality())
    bar = keras.utils.Progbar(steps if steps > 0 else None, verbose=verbose, unit_name="batch")
    for done, (images, y, *_) in enumerate(dataset, start=1):
        features.append(np.asarray(step(images), dtype="float32"))
        labels.append(np.asarray(y))
        bar.update(done)
    return np.concatenate(features), np.concatenate(labels)


def examine(features, labels, paths, class_names, splits=None, seed=0, groups=None):
    """Out-of-fold probabilities, then confident learning: a `LabelIssueReport`.
    `groups` as in `out_of_fold_probabilities`."""
    labels = np.asarray(labels, dtype=int)
    probabilities = out_of_fold_probabilities(features, labels, seed=seed, groups=groups)
    if probabilities.shape[1] < len(class_names):  # The last classes had no images.
        probabilities = np.pad(probabilities,
                               ((0, 0), (0, len(class_names) - probabilities.shape[1])))
    return LabelIssueReport(list(paths), labels, probabilities, list(class_names),
                            confident_issues(probabilities, labels),
                            list(splits or ["train"] * len(labels)))


def contact_sheet(report, path=None, count=20, image_size=96, cols=5):
    """The `count` most suspicious flagged images, each titled with its given label and
    the label the features suggest; needs image files (`report.paths`)."""
    from PIL import Image

    from visiontune.evaluation import plots

    rows = report.rows()[:count]
    thumbnails, titles = [], []
    for row in rows:
        with Image.open(row["path"]) as image:
            image = image.convert("RGB")
            image.thumbnail((image_size, image_size))
            canvas = Image.new("RGB", (image_size, image_size), (255, 255, 255))
            canvas.paste(image, ((image_size - image.width) // 2,
                                 (image_size - image.height) // 2))
        thumbnails.append(np.asarray(canvas))
        titles.append(f"#{row['rank']} {os.path.basename(row['path'])[:18]}\n"
                      f"given: {row['given_label']} ({row['given_label_probability']:.2f})\n"
                      f"suggests: {row['suggested_label']} "
                      f"({row['suggested_label_probability']:.2f})")
    if not rows:
        titles, thumbnails = ["no suspected label issues"], [np.full((8, 8, 3), 255, "uint8")]
    return plots.image_grid(np.asarray(thumbnails), titles, path, cols=min(cols, len(titles)),
                            title="Suspected label issues. " + REVIEW_NOTE)


def find_label_issues(data, backbone="efficientnet_lite0", weights="imagenet", image_size=None,
                      batch_size=32, seed=0, val_data=None, verbose=1, **backbone_args):
    """Ranks the images of a labelled folder whose given label looks wrong.

    Args:
        data: A folder of class subfolders, or one with `train/` and `val/` (and
            `test/`) subfolders, all of which are examined together; or an
            `(images, labels)` pair of arrays, RGB in [0, 255].
        backbone: A registered backbone name; its ImageNet features are used.
        weights: `"imagenet"`, a weights file, or `None` (random features, which
            find nothing useful: for tests only).
        image_size: Input side (default: the backbone's own).
        batch_size: Images per forward pass.
        seed: Seed of the folds.
        val_data: A separate validation folder, examined too.
        verbose: 0 quiet, 1 progress bars.
        **backbone_args: Arguments of the backbone's constructor.

    Returns:
        A `LabelIssueReport`: `.rows()` lists the flagged images, the most
        suspicious first; `.write_csv(path)` and `contact_sheet(report, path)`
        write them. They are candidates for a person to review, not verdicts.

    Example:

    >>> report = visiontune.find_label_issues("photos/")
    >>> report.rows()[0]["path"], report.rows()[0]["suggested_label"]
    ('photos/train/cats/0042.jpg', 'dogs')
    """
    weights = None if str(weights).lower() == "none" else weights
    size = image_size or registry.get_spec(backbone).default_size
    if isinstance(data, (tuple, list)):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if y.ndim != 1:
            raise ValueError("find_label_issues needs one class index per image; received "
                             f"labels of shape {y.shape} (multi-label is not supported).")
        class_names = [str(i) for i in range(int(y.max()) + 1)]
        dataset = pipeline.tensor_pipeline(x, y, size, batch_size, keep=False)
        paths, where = [f"array[{i}]" for i in range(len(y))], ["train"] * len(y)
        groups = None
    else:
        sources.check_folder_exists(data)
        layout = split_lib.split_subfolders(data) or {"train": data}
        if val_data:
            sources.check_folder_exists(val_data, "--val-data")
            layout["val"] = val_data
        class_names, files, where = None, [], []
        for name, folder in layout.items():
            scanned = sources.scan_folder(folder, class_names, verbose=bool(verbose))
            class_names = class_names or scanned.class_names
            files.append(scanned)
            where += [name] * len(scanned.paths)
        every = split_lib.ImageFiles([p for f in files for p in f.paths],
                                     [label for f in files for label in f.labels], class_names)
        dataset = pipeline.file_pipeline(every, size, batch_size, keep=False)
        paths = every.paths
        groups = content_groups(files)
    model = classifier.build_classifier(backbone, len(class_names), weights, size,
                                        **backbone_args)
    if verbose:
        print(f"Label issues: {backbone} features of {len(paths)} images")
    features, labels = pooled_features(model, dataset, verbose=verbose)
    return examine(features, labels, paths, class_names, where, seed, groups)


def content_groups(files):
    """One group per distinct content hash (`ImageFiles.hashes`), in the files' order;
    a file without a hash is its own group."""
    files = files if isinstance(files, (list, tuple)) else [files]
    return [f.hashes.get(p, p) for f in files for p in f.paths]
