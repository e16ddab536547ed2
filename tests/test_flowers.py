"""Real photos, real ImageNet weights, the default recipe: the number users care about."""

import os

import pytest

from visiontune import config, train
from conftest import FLOWERS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(FLOWERS),
                       reason=f"flowers-mini not found at {FLOWERS} (../shared is absent)"),
]


def test_default_recipe_beats_the_linear_probe_on_flowers_mini(tmp_path):
    """A logistic-regression probe on Lite0's pooled features reaches 0.88 here;
    fine-tuning with the defaults must do no worse."""
    metrics = train.run(config.TrainConfig(data=FLOWERS, output=str(tmp_path / "run"),
                                           quiet=True))
    print(f"flowers-mini, defaults: val_accuracy {metrics['val_accuracy']:.3f}, "
          f"wall time {metrics['wall_time_s']}")
    assert metrics["class_names"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert metrics["epochs"] == {"head": 30, "finetune": 10}
    assert metrics["val_images"] == 100
    assert metrics["val_accuracy"] >= 0.88
