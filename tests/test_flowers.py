"""Real photos, real ImageNet weights, the default recipe: the number users care about."""

import csv
import json
import os

import pytest

from visiontune.cli import train
from visiontune.runs import config

pytestmark = pytest.mark.slow


def test_default_recipe_beats_the_linear_probe_on_flowers_mini(tmp_path, flowers):
    """A logistic-regression probe on Lite0's pooled features reaches 0.88 here;
    fine-tuning with the defaults must do no worse."""
    metrics = train.run(config.TrainConfig(data=flowers, output=str(tmp_path / "run"),
                                           quiet=True))
    print(f"flowers-mini, defaults: val_accuracy {metrics['val_accuracy']:.3f}, "
          f"wall time {metrics['wall_time_s']}")
    assert metrics["class_names"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert metrics["epochs"] == {"head": 30, "finetune": 10}
    assert metrics["val_images"] == 100
    assert metrics["val_accuracy"] >= 0.88
    # Before training, the run ranked its 200 training images by how much the
    # pretrained features doubt their label (evaluation/label_issues.py).
    out = str(tmp_path / "run")
    with open(os.path.join(out, "data_report.json"), encoding="utf-8") as f:
        found = json.load(f)["suspected_label_issues"]
    with open(os.path.join(out, "label_issues.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(out, "split.json"), encoding="utf-8") as f:
        train_files = json.load(f)["train"]
    assert sorted(r["path"] for r in rows) == sorted(train_files)
    assert found["count"] == sum(r["flagged"] == "True" for r in rows)
    assert found["examined"] == 200 and found["count"] < 30  # flowers-mini is clean.
