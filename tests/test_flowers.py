"""Real photos, real ImageNet weights, the default recipe: the number users care about."""

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
