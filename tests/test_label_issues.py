"""The label-issue finder: confident learning on out-of-fold probabilities."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

import visiontune
from visiontune.cli import doctor
from visiontune.evaluation import label_issues


def test_confident_learning_flags_the_confident_mismatch_not_the_ambiguous_image():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    p = np.array([[.9, .1], [.8, .2], [.7, .3], [.2, .8],    # image 3: surely class 1
                  [.1, .9], [.2, .8], [.3, .7], [.6, .4]])   # image 7: unsure
    # Thresholds 0.65 and 0.7: image 3 is confidently 1, image 7 is confidently nothing.
    # argmax != label, or one threshold of 0.5, would flag image 7 as well.
    assert np.flatnonzero(label_issues.confident_issues(p, labels)).tolist() == [3]
    report = label_issues.LabelIssueReport([f"i{i}" for i in range(8)], np.array(labels), p,
                                           ["a", "b"], label_issues.confident_issues(p, labels),
                                           ["train"] * 8)
    assert report.ranking()[:2].tolist() == [3, 7]  # Lowest self-confidence first.
    assert [(r["path"], r["given_label"], r["suggested_label"]) for r in report.rows()] == \
        [("i3", "a", "b")]
    assert len(report.rows(flagged_only=False)) == 8


def test_calibration_scales_the_estimate_to_the_class_size():
    # Class 0 has 6 images, of which only 4 are confidently of some class.
    labels = [0] * 6 + [1] * 4
    p = np.array([[.95, .05], [.10, .90], [.60, .40], [.45, .55], [.40, .60], [.50, .50],
                  [.05, .95], [.10, .90], [.20, .80], [.15, .85]])
    # t0 = mean(.95,.1,.6,.45,.4,.5) = 0.5; image 2 (.6) and image 5 (.5) pass it. Redo the
    # sums: class 0's confident row is {0: images 0, 2, 5; 1: image 1 (.9 >= t1 = 0.875)}.
    flagged = label_issues.confident_issues(p, labels)
    # Joint row 0 = [3, 1] over 4 of 6 images: calibrated [4.5, 1.5], so round(1.5) = 2
    # issues: the two lowest p0 are images 1 (.10) and 4 (.40), both likelier class 1.
    # Without calibration only image 1 would be flagged.
    assert np.flatnonzero(flagged).tolist() == [1, 4]


def test_out_of_fold_probabilities_never_score_an_image_with_its_own_label():
    # Pure noise with random labels: a model that saw each image's label would give it
    # a high probability (200 features, 60 images); out of fold it is chance.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 200)), rng.integers(0, 3, 60)
    p = label_issues.out_of_fold_probabilities(x, y)
    assert p.shape == (60, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-6)
    assert label_issues.label_quality(p, y).mean() < 0.45


def test_too_few_images_in_a_class_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 images each; the smallest class here "
                                         "has 1"):
        label_issues.out_of_fold_probabilities(np.zeros((5, 3)), [0, 0, 1, 1, 2])


def _flipped_flowers(flowers, root, count=10, seed=0):
    """flowers-mini as symlinks, with `count` training images put in another class."""
    rng = np.random.default_rng(seed)
    train = os.path.join(flowers, "train")
    classes = sorted(os.listdir(train))
    files = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(train, c)))]
    flipped = {files[i] for i in rng.choice(len(files), count, replace=False)}
    moved = set()
    for split in ("train", "val"):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for c in classes:
            for f in sorted(os.listdir(os.path.join(flowers, split, c))):
                target = c
                if split == "train" and (c, f) in flipped:
                    others = [o for o in classes if o != c]
                    target = others[rng.integers(len(others))]
                    moved.add(os.path.join(root, split, target, f))
                os.symlink(os.path.join(flowers, split, c, f), os.path.join(root, split, target, f))
    return moved


@pytest.mark.slow
def test_doctor_finds_flipped_flowers_labels(tmp_path, flowers, capsys):
    """Ten training labels of flowers-mini flipped on purpose: the issue asks for at least
    7 of them among the 20 most suspicious images (Lite0's ImageNet features)."""
    data = str(tmp_path / "flowers-flipped")
    flipped = _flipped_flowers(flowers, data)
    out = str(tmp_path / "issues")
    assert doctor.main(["--data", data, "--label-issues", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "candidates for a person to review, not verdicts" in printed
    with open(os.path.join(out, "label_issues.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and [int(r["rank"]) for r in rows] == list(range(1, 301))
    assert {r["split"] for r in rows} == {"train", "val"}
    top = {r["path"] for r in rows[:20]}
    flagged = {r["path"] for r in rows if r["flagged"] == "True"}
    found = len(top & flipped)
    precision = len(flagged & flipped) / max(1, len(flagged))
    with capsys.disabled():
        print(f"\nflowers-mini: flipped in the top 20: {found}/10; flagged {len(flagged)}, "
              f"precision {precision:.2f}, recall {len(flagged & flipped) / 10:.2f}")
    assert found >= 7
    for row in rows[:20]:  # The suggested label of a flipped image is its true class.
        if row["path"] in flipped:
            true_class = os.path.basename(os.path.dirname(os.path.realpath(row["path"])))
            assert row["given_label"] != true_class
    with Image.open(os.path.join(out, "label_issues.png")) as sheet:
        assert sheet.size[0] > 400 and sheet.size[1] > 400
    # Nothing is replaced silently.
    assert doctor.main(["--data", data, "--label-issues", "--output", out]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_find_label_issues_on_arrays_finds_a_swapped_colour(tmp_path):
    """The API on arrays, with random weights on an easy task: plain colours, which
    even random features separate."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    x = rng.uniform(0, 30, (36, 32, 32, 3))
    x[np.arange(36), :, :, y] += 200
    given = y.copy()
    given[5] = (y[5] + 1) % 3
    report = visiontune.find_label_issues((x, given), backbone="mobilenetv2", weights=None,
                                          image_size=32, verbose=0)
    assert report.paths[5] == "array[5]"
    assert report.ranking()[0] == 5
    assert report.flagged[5]
    path = str(tmp_path / "issues.csv")
    report.write_csv(path)
    with open(path, encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    assert first["path"] == "array[5]" and first["flagged"] == "True"
