import json
import os

import pytest

from visiontune.cli import train
from visiontune.runs import config, flags
from conftest import write_image_folder


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_sets_defaults_and_flags_override_it(tmp_path):
    path = write(tmp_path, "head_epochs: 3\nhead_lr: 0.01\nhidden_units: [64, 32]\n"
                           "quiet: true\nweights: null\n")
    cfg = flags.parse_config(["--config", path, "--head-lr", "0.5"])
    assert cfg.head_epochs == 3 and cfg.hidden_units == (64, 32)
    assert cfg.head_lr == 0.5  # the flag wins
    assert cfg.quiet is True and cfg.weights is None
    assert flags.parse_config(["--config", path, "--no-quiet"]).quiet is False
    assert flags.parse_config([]).head_epochs == config.TrainConfig().head_epochs


@pytest.mark.parametrize("text, message", [
    ("head_epoch: 3\n", r"Unknown key 'head_epoch'.*Did you mean 'head_epochs'"),
    ("head_epochs: ten\n", r"Key 'head_epochs' in .*run.yaml must be int. Received: 'ten'"),
    ("head_epochs: true\n", r"Key 'head_epochs'.*must be int"),
    ("hidden_units: 64\n", r"Key 'hidden_units'.*a list of integers"),
    ("dropout: 1.5\n", r"Key 'dropout' in .*run.yaml \(--dropout\) must be at least 0 and below 1"),
    ("optimizer: lion\n", r"Key 'optimizer'.*must be one of"),
    ("- just a list\n", r"must be a mapping"),
    ("head_lr: [\n", r"not valid YAML"),
])
def test_bad_yaml_names_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        flags.parse_config(["--config", write(tmp_path, text)])


def test_out_of_range_flag_names_the_flag():
    with pytest.raises(ValueError, match=r"'finetune_lr' \(--finetune-lr\) must be above 0"):
        flags.parse_config(["--finetune-lr", "0"])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Cannot read config file"):
        flags.parse_config(["--config", str(tmp_path / "nope.yaml")])


def test_saved_config_reproduces_the_run(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=6)
    first = str(tmp_path / "first")
    flags = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32",
             "--head-epochs", "2", "--finetune-epochs", "1", "--batch-size", "6", "--quiet",
             "--seed", "3"]
    assert train.main(["--data", data, "--output", first, *flags]) == 0
    saved = os.path.join(first, "config.yaml")
    values = config.load_yaml(saved)
    assert values["output"] is None and values["overwrite"] is False and values["seed"] == 3
    second = str(tmp_path / "second")
    assert train.main(["--config", saved, "--output", second]) == 0
    metrics = [json.load(open(os.path.join(d, "metrics.json"))) for d in (first, second)]
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]
    assert metrics[0]["val_loss"] == pytest.approx(metrics[1]["val_loss"], rel=1e-5)
