"""What is wrong with an image folder, before training (`python -m visiontune.doctor`).

It reports class counts and imbalance, files that cannot be decoded, grayscale,
alpha and CMYK images, image sizes, and exact duplicates by content, above all
across training and validation, where they inflate validation accuracy.
"""

import collections

import numpy as np
from PIL import Image  # Reads only the header: mode and size, without decoding.

from visiontune.data import sources as data, splits as split_lib

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def diagnose(path, val_path=None, verbose=False):
    """Inspects a folder (with `train/` and `val/`, or class subfolders) and returns a report dict.

    Example:

    >>> from visiontune.data import doctor
    >>> report = doctor.diagnose("photos/")
    >>> report["duplicates"]["train_val"]
    []
    """
    layout = split_lib.split_subfolders(path)  # the same layout rules as training
    splits = {"train": layout.get("train", path)}
    if val_path or layout.get("val"):
        splits["val"] = val_path or layout["val"]
    scans = {}
    for name, folder in splits.items():
        scans[name] = data.scan_folder(folder, scans["train"].class_names if scans else None,
                                       verbose=verbose)
    counts = {name: scan.counts() for name, scan in scans.items()}
    train_counts = np.asarray(list(counts["train"].values()))
    every = [p for scan in scans.values() for p in scan.paths]
    return {
        "folders": splits,
        "class_counts": counts,
        "imbalance_ratio": round(float(train_counts.max() / train_counts.min()), 2),
        "bad_files": [{"path": b.path, "reason": b.reason}
                      for scan in scans.values() for b in scan.bad],
        "color_modes": _color_modes(every),
        "image_size": _size_stats(every),
        "duplicates": _duplicates(scans),
    }


def _color_modes(paths):
    modes = collections.Counter()
    for path in paths:
        with Image.open(path) as image:
            mode = image.mode
            has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
        modes["grayscale" if mode in _GRAY_MODES else "cmyk" if mode == "CMYK" else "color"] += 1
        modes["with_alpha"] += has_alpha
    return {k: modes[k] for k in ("color", "grayscale", "cmyk", "with_alpha")}


def _size_stats(paths):
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    widths, heights = np.asarray(sizes).T
    stat = lambda v: {"min": int(v.min()), "median": int(np.median(v)),  # noqa: E731
                      "max": int(v.max())}
    return {"width": stat(widths), "height": stat(heights), "count": len(sizes)}


def _duplicates(scans):
    by_hash = collections.defaultdict(list)
    for name, scan in scans.items():
        for path, digest in scan.hashes.items():
            by_hash[digest].append((name, path))
    groups = [group for group in by_hash.values() if len(group) > 1]
    across = [[p for _, p in g] for g in groups if len({name for name, _ in g}) > 1]
    within = [[p for _, p in g] for g in groups if len({name for name, _ in g}) == 1]
    return {"train_val": across, "within_split": within}


def format_report(report):
    """Returns the report as text for a terminal."""
    lines = [f"Folders: {report['folders']}"]
    for split, counts in report["class_counts"].items():
        lines.append(f"{split}: {sum(counts.values())} images, per class {counts}")
    ratio = report["imbalance_ratio"]
    lines.append(f"Imbalance (largest / smallest training class): {ratio}"
                 + ("  <- consider --class-weight balanced" if ratio >= 3 else ""))
    bad = report["bad_files"]
    lines.append(f"Undecodable or non-image files: {len(bad)}")
    lines += [f"  {b['path']}: {b['reason']}" for b in bad]
    lines.append(f"Colour modes: {report['color_modes']} (all are converted to RGB)")
    size = report["image_size"]
    lines.append(f"Image size (px): width {size['width']}, height {size['height']}")
    dup = report["duplicates"]
    lines.append(f"Exact duplicates across train and val (leakage): {len(dup['train_val'])}")
    lines += [f"  {' == '.join(group)}" for group in dup["train_val"]]
    lines.append(f"Exact duplicates within one split: {len(dup['within_split'])}")
    lines += [f"  {' == '.join(group)}" for group in dup["within_split"][:20]]
    return "\n".join(lines)
