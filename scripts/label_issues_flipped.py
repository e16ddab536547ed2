"""How well the label-issue finder finds labels flipped on purpose, on the shared datasets.

For each dataset, every image (all splits) is passed once through the backbone
(`visiontune.evaluation.label_issues.pooled_features`, as `find_label_issues`
and `python -m visiontune.doctor --label-issues` do). Then, for each seed, some
labels are flipped to another class at random (10 training images on
flowers-mini, as the issue asks; 5% of the images elsewhere) and the finder runs
on the flipped labels: flipping changes no pixel, so the features are reused.

Reported per dataset, as mean (min-max) over the seeds:
- top-k: flipped images among the 2 x flips most suspicious (the ranking);
- precision and recall of the flagged set against the flipped images. The
  datasets' own labels are not perfect, so a flagged image that was not flipped
  may still be mislabelled: precision here is a lower bound.

    python scripts/label_issues_flipped.py                     # all datasets, 5 seeds
    python scripts/label_issues_flipped.py --datasets flowers-mini --seeds 5

Results are stored in `scripts/results/label_issues_flipped.json`, keyed by
dataset, seed and the code's version, and reused. Exact duplicates are kept in
one fold, as the doctor keeps them (monkeys has 67 pairs, trashnet 3, busi 1).
"""

import argparse
import hashlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from visiontune.backbones import registry  # noqa: E402
from visiontune.common import atomic  # noqa: E402
from visiontune.data import pipeline, sources, splits as split_lib  # noqa: E402
from visiontune.evaluation import label_issues  # noqa: E402
from visiontune.model import classifier  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "datasets")
DATASETS = ("flowers-mini", "magnetic-tile", "busi", "monkeys", "trashnet")
RESULTS = os.path.join(HERE, "results", "label_issues_flipped.json")


def code_version():
    """SHA-256 of the finder's module and this script: a change reruns the rows."""
    digest = hashlib.sha256()
    for path in (label_issues.__file__, __file__):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def features_of(folder, backbone):
    """Pooled features, labels and splits of every image in `folder`, in a fixed order."""
    layout = split_lib.split_subfolders(folder) or {"train": folder}
    names, files, where = None, [], []
    for split, path in layout.items():
        scanned = sources.scan_folder(path, names)
        names = names or scanned.class_names
        files.append(scanned)
        where += [split] * len(scanned.paths)
    every = split_lib.ImageFiles([p for f in files for p in f.paths],
                                 [label for f in files for label in f.labels], names)
    size = registry.get_spec(backbone).default_size
    model = classifier.build_classifier(backbone, len(names), "imagenet", size)
    features, labels = label_issues.pooled_features(
        model, pipeline.file_pipeline(every, size, 32, keep=False), verbose=1)
    return features, labels, np.asarray(where), names, label_issues.content_groups(files)


def flip(labels, where, classes, count, seed):
    """`count` labels (training images only when there is a split) moved to another class."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(where == "train")
    chosen = rng.choice(pool, count, replace=False)
    flipped = labels.copy()
    flipped[chosen] = (labels[chosen] + rng.integers(1, classes, count)) % classes
    return flipped, chosen


def measure(features, labels, where, names, groups, count, seed):
    given, chosen = flip(labels, where, len(names), count, seed)
    began = time.perf_counter()
    report = label_issues.examine(features, given, [str(i) for i in range(len(given))], names,
                                  list(where), seed=seed, groups=groups)
    seconds = time.perf_counter() - began
    flipped, flagged = set(chosen.tolist()), set(np.flatnonzero(report.flagged).tolist())
    top = set(report.ranking()[:2 * count].tolist())
    return {"flips": count, "images": len(given), "top_k": 2 * count,
            "in_top_k": len(top & flipped), "flagged": len(flagged),
            "true_flagged": len(flagged & flipped),
            "precision": round(len(flagged & flipped) / max(1, len(flagged)), 3),
            "recall": round(len(flagged & flipped) / count, 3), "seconds": round(seconds, 1)}


def _spread(rows, field, digits=2):
    values = [r[field] for r in rows]
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args()
    stored = {}
    if os.path.exists(args.results):
        with open(args.results, encoding="utf-8") as f:
            stored = json.load(f)
    version = code_version()
    print("| dataset | images | flipped | flipped in top 2x | flagged | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        keys = [f"{name}|{args.backbone}|seed{s}|{version}" for s in range(args.seeds)]
        if not all(k in stored for k in keys):
            features, labels, where, names, groups = features_of(
                os.path.join(SHARED, name), args.backbone)
            count = 10 if name == "flowers-mini" else max(1, round(0.05 * len(labels)))
            for seed, key in enumerate(keys):
                if key not in stored:
                    stored[key] = measure(features, labels, where, names, groups, count, seed)
                    atomic.write_json(args.results, stored)
        rows = [stored[k] for k in keys]
        print(f"| {name} | {rows[0]['images']} | {rows[0]['flips']} | "
              f"{_spread(rows, 'in_top_k', 1)} of {rows[0]['top_k']} | "
              f"{_spread(rows, 'flagged', 0)} | {_spread(rows, 'precision')} | "
              f"{_spread(rows, 'recall')} |")
    print(f"Seeds 0-{args.seeds - 1}, {args.backbone} ImageNet features, code {version}.")


if __name__ == "__main__":
    main()
