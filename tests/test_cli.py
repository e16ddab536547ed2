import json
import os
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest

import visiontune
from visiontune.cli import train
from visiontune.runs import config, flags
from visiontune.training import history
from visiontune.tuning import freezing
from visiontune.export import serving
from conftest import write_image_folder

FAST = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32",
        "--head-epochs", "2", "--finetune-epochs", "1", "--batch-size", "8", "--quiet"]


def test_cli_trains_end_to_end_and_the_model_loads(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, *FAST]) == 0
    for name in ("model.keras", "labels.txt", "config.yaml", "history.csv", "metrics.json",
                 "learning_curves.png", "confusion_matrix.png", "val_predictions.png",
                 "reliability.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if "partial" in f]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["class_names"] == ["blue", "green", "red"]
    assert metrics["epochs"] == {"head": 2, "finetune": 1}
    assert metrics["trainable_params"]["finetune"] > metrics["trainable_params"]["head"]
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.sum() == 6 and set(metrics["per_class"]) == {"blue", "green", "red"}
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["val_accuracy"])
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.output_shape == (None, 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, atol=1e-5)
    # The reported loss is what model.evaluate gives on the saved validation split.
    val_paths = json.load(open(os.path.join(out, "split.json")))["val"]
    val_labels = np.asarray([metrics["class_names"].index(os.path.basename(os.path.dirname(p)))
                             for p in val_paths])
    pixels = serving.load_images(val_paths, (32, 32)).astype("float32")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    evaluated = model.evaluate(pixels, val_labels, verbose=0, return_dict=True)
    assert metrics["val_loss"] == pytest.approx(evaluated["loss"], rel=1e-4)
    assert metrics["val_accuracy"] == pytest.approx(evaluated["accuracy"])
    # NLL is the loss without the head's penalties; ECE is in [0, 1] with its interval.
    penalties = sum(float(loss) for loss in model.losses)
    assert metrics["val_nll"] == pytest.approx(evaluated["loss"] - penalties, abs=1e-4)
    # Mistakes in val_predictions.png have their Grad-CAM beside them: two columns each.
    with Image.open(os.path.join(out, "val_predictions.png")) as grid:
        assert grid.size[0] == (1760 if metrics["val_accuracy"] < 1 else 1040)
    assert 0 <= metrics["val_ece"] <= 1
    assert 0 <= metrics["val_ece_ci95"][0] <= metrics["val_ece_ci95"][1] <= 1
    history = open(os.path.join(out, "history.csv")).read().splitlines()
    assert history[0].startswith("epoch,phase") and len(history) == 4
    assert [row.split(",")[1] for row in history[1:]] == ["head", "head", "finetune"]


def test_existing_run_directory_is_refused(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert train.main(["--data", data, "--output", str(out), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path / "nope"), "--output", str(tmp_path / "r"),
                       *FAST]) == 2
    assert "nope" in capsys.readouterr().err


def test_flags_map_to_config_fields():
    args = flags.build_parser().parse_args(
        ["--data", "d", "--hidden-units", "512,128", "--unfreeze-blocks", "4",
         "--finetune-lr", "3e-5", "--l2", "0"])
    cfg = flags.config_from_args(args)
    assert cfg.hidden_units == (512, 128) and cfg.unfreeze_blocks == 4
    assert cfg.finetune_lr == 3e-5 and cfg.l2 == 0.0


# A plain shell: TensorFlow's log level unset (conftest and CI set it).
_PLAIN_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def test_help_groups_and_explains_every_flag():
    result = subprocess.run([sys.executable, "-m", "visiontune.train", "--help"],
                            capture_output=True, text=True, check=True, env=_PLAIN_ENV)
    assert result.stderr == ""  # Not even TensorFlow's C++ start-up lines (quiet_start.py).
    assert "--verbose" in result.stdout
    for group in ("Data:", "Model:", "Schedule:", "Output:"):
        assert group in result.stdout
    for flag in ("--data", "--backbone", "--weights", "--image-size", "--batch-size",
                 "--head-epochs", "--head-lr", "--finetune-epochs", "--finetune-lr",
                 "--unfreeze-blocks", "--dropout", "--l2", "--seed", "--output"):
        assert flag in result.stdout


def test_cli_reports_data_and_reuses_a_saved_split(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    (tmp_path / "photos" / "red" / "broken.jpg").write_text("not an image")
    first = str(tmp_path / "first")
    assert train.main(["--data", data, "--output", first, "--augment", "light",
                       "--class-weight", "balanced", *FAST]) == 0
    report = json.load(open(os.path.join(first, "data_report.json")))
    assert report["bad_file_count"] == 1 and report["bad_files"][0]["path"].endswith("broken.jpg")
    assert report["suspected_label_issues"]["count"] is None  # Random weights judge nothing.
    assert "random weights" in report["suspected_label_issues"]["reason"]
    split = json.load(open(os.path.join(first, "split.json")))
    assert len(split["val"]) == 6 and not set(split["val"]) & set(split["train"])
    # A different seed would split differently; --split keeps the saved files.
    second = str(tmp_path / "second")
    assert train.main(["--data", data, "--output", second, "--seed", "7", "--split",
                       os.path.join(first, "split.json"), *FAST]) == 0
    assert json.load(open(os.path.join(second, "split.json")))["val"] == split["val"]


def test_strict_flag_fails_on_a_bad_file(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    (tmp_path / "photos" / "red" / "empty.jpg").write_bytes(b"")
    assert train.main(["--data", data, "--output", str(tmp_path / "run"), "--strict",
                       *FAST]) == 2
    assert "empty.jpg" in capsys.readouterr().err


def test_nan_loss_stops_the_run_and_keeps_the_best_checkpoint(tmp_path, capsys):
    """A callback poisons the head as epoch 3 begins; the run must stop with a clear message."""
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=6)
    out = tmp_path / "run"

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                kernel = self.model.get_layer("head_output").kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    cfg = flags.parse_config(["--data", data, "--output", str(out), *FAST,
                               "--head-epochs", "4"])
    with pytest.raises(history.TrainingDivergedError, match=r"loss became nan in epoch 3 "
                       r"\(head phase.*best checkpoint so far is kept"):
        train.run(cfg, callbacks=[Poison()])
    best = keras.saving.load_model(str(out / "best.keras"))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.isfinite(best.predict(x, verbose=0)).all()
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[-1].split(",")[1] == "head"  # 3 epochs, no phase 2
    assert not (out / "model.keras").exists()


def test_overwrite_replaces_a_run_but_never_a_foreign_folder(tmp_path):
    from visiontune.runs import rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "stale.png").write_bytes(b"old")
    rundir.prepare(str(run), overwrite=True)
    assert list(run.iterdir()) == []
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a visiontune run directory"):
        rundir.prepare(str(foreign), overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    out = tmp_path / "run"
    # Caught before the run directory is made: a mistyped backbone, a missing folder.
    assert train.main(["--data", data, "--output", str(out), *FAST,
                       "--backbone", "mobilenet_v"]) == 2
    assert "Did you mean 'mobilenetv2'?" in capsys.readouterr().err
    assert train.main(["--data", str(tmp_path / "nope"), "--output", str(out), *FAST]) == 2
    assert not out.exists()
    # Caught after it was made, before any epoch finished: the run removes what it made.
    assert train.main(["--data", data, "--output", str(out), *FAST,
                       "--unfreeze-blocks", "999"]) == 2
    assert "999" in capsys.readouterr().err and not out.exists()
    assert train.main(["--data", data, "--output", str(out), *FAST]) == 0
    finished = sorted(os.listdir(out))
    assert "model.keras" in finished
    # --overwrite with a typo fails before the finished run is emptied.
    assert train.main(["--data", data, "--output", str(out), *FAST, "--overwrite",
                       "--backbone", "resnet5"]) == 2
    assert sorted(os.listdir(out)) == finished
    # A folder that existed before the call is never removed, even an empty one.
    mine = tmp_path / "mine"
    mine.mkdir()
    assert train.main(["--data", data, "--output", str(mine), *FAST,
                       "--unfreeze-blocks", "999"]) == 2
    assert mine.is_dir()


def test_unknown_backbone_suggests_the_name_meant():
    from visiontune.backbones import registry as backbones

    for typed, meant in (("efficientnet_lite", "efficientnet_lite0"), ("resnet5", "resnet50"),
                         ("MobileNetV3-Larg", "mobilenetv3large")):
        with pytest.raises(ValueError, match=f"Did you mean '{meant}'"):
            backbones.get_spec(typed)
    with pytest.raises(ValueError) as error:
        backbones.get_spec("vgg16")
    assert "Did you mean" not in str(error.value) and "resnet50" in str(error.value)


def test_help_gives_each_default_once():
    text = " ".join(flags.build_parser().format_help().split())
    assert "(default: none) (default:" not in text
    assert "(default: the backbone's own) (default: None)" not in text
    assert text.count("(default:") >= 20  # Flags whose help does not say it still get one.


def test_errors_still_reach_stderr_after_the_quiet_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "visiontune.train", "--data",
                             str(tmp_path / "nope"), "--output", str(tmp_path / "run")],
                            capture_output=True, text=True, env=_PLAIN_ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"visiontune.train: error: --data {str(tmp_path / 'nope')!r}: no such folder. Pass a "
        "folder of class subfolders, builtin:digits, or tfds:NAME."]


def test_quiet_start_drops_tensorflow_notices_and_keeps_everything_else(capfd):
    from visiontune.common import quiet_start

    with quiet_start.native_notices_hidden():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1795504355.414024   21900 port.cc:153] oneDNN custom "
                    b"operations are on.\n")
        os.write(2, b"F0000 00:00:1795504355.4 21900 cpu_feature_guard.cc:1] abort: AVX\n")
        os.write(2, b"ImportError: numpy.core.multiarray failed to import\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err.splitlines() == [
        "F0000 00:00:1795504355.4 21900 cpu_feature_guard.cc:1] abort: AVX",
        "ImportError: numpy.core.multiarray failed to import", "after"]


def test_backbone_arg_trains_mobilenet_alpha_from_the_keras_cache_offline(tmp_path):
    """A user with mobilenet_2_5_224_tf_no_top.h5 in KERAS_HOME trains it from the shell."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    keras.utils.set_random_seed(3)
    cached = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                          input_shape=(224, 224, 3))
    cached.save(str(home / "models" / "mobilenet_2_5_224_tf_no_top.h5"))  # Keras's format.
    data = tmp_path / "data"
    write_image_folder(str(data), n_per_class=4)
    (tmp_path / "run.yaml").write_text("backbone: mobilenet\nbackbone_args: {alpha: 1.0}\n")
    env = {**os.environ, "KERAS_HOME": str(home),
           # No network: a download attempt would fail, not hang.
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "visiontune.train", "--config", str(tmp_path / "run.yaml"),
         "--data", str(data), "--backbone-arg", "alpha=0.25", "--head-epochs", "1",
         "--finetune-epochs", "0", "--batch-size", "6", "--quiet",
         "--output", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    model, _, _ = serving.load_run(str(tmp_path / "run"))
    backbone = freezing.find_backbone(model)
    assert backbone.output_shape[-1] == 256  # alpha 0.25 (the flag beat the YAML's 1.0)
    for layer in ("conv1", "conv_pw_13"):  # Frozen in phase 1: still the cached file's.
        for got, want in zip(backbone.get_layer(layer).get_weights(),
                             cached.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(got, want)
    saved = config.load_yaml(str(tmp_path / "run" / "config.yaml"))
    assert saved["backbone_args"] == {"alpha": 0.25}


@pytest.mark.parametrize("argv, message", [
    (["--backbone-arg", "alpah=0.5"], "Unknown backbone argument 'alpah' for mobilenet. "
                                      "Did you mean 'alpha'?"),
    (["--backbone-arg", "alpha=wide"], "'alpha' of mobilenet must be float"),
    (["--backbone-arg", "alpha=true"], "'alpha' of mobilenet must be float"),
    (["--backbone", "convnexttiny", "--backbone-arg", "include_preprocessing=false"],
     "Unknown backbone argument 'include_preprocessing' for convnexttiny"),
    (["--backbone", "resnet5", "--backbone-arg", "alpha=0.5"], "Unknown backbone 'resnet5'"),
    (["--backbone-arg", "depth_multiplier=1.5"], "'depth_multiplier' of mobilenet must be int"),
    (["--backbone", "efficientnet_lite0", "--backbone-arg", "alpha=0.5"],
     "It accepts: none"),
])
def test_backbone_arg_errors_name_the_argument(argv, message):
    with pytest.raises(ValueError, match="--backbone") as error:
        flags.parse_config(["--backbone", "mobilenet", *argv])
    assert message in str(error.value)


def test_backbone_args_from_yaml_and_flags_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: mobilenet\nbackbone_args: {alpha: 0.5, depth_multiplier: 1}\n")
    parsed = flags.parse_config(["--config", str(path), "--backbone-arg", "alpha=0.25"])
    assert parsed.backbone_args == {"alpha": 0.25, "depth_multiplier": 1}
    path.write_text("backbone_args: [alpha]\n")
    with pytest.raises(ValueError, match="'backbone_args' in .* must be a mapping"):
        flags.parse_config(["--config", str(path)])
    assert flags.parse_config([]).backbone_args == {}
    # An int for a float argument is that float: one setting, one suite key, one resume.
    assert flags.parse_config(["--backbone", "mobilenet", "--backbone-arg", "alpha=1",
                                "--backbone-arg", "dropout=1e-3"]).backbone_args == \
        {"alpha": 1.0, "dropout": 0.001}


def test_resume_notices_backbone_args_a_run_saved_before_they_existed(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("backbone: mobilenet\n")  # No backbone_args key: an older run.
    config.check_resumable(flags.parse_config(["--backbone", "mobilenet"]), str(saved))
    with pytest.raises(ValueError, match=r"backbone_args \(\{\} -> \{'alpha': 0.5\}\)"):
        config.check_resumable(flags.parse_config(
            ["--backbone", "mobilenet", "--backbone-arg", "alpha=0.5"]), str(saved))


def test_visiontune_command_runs_each_module_and_lists_them_all(tmp_path, capsys):
    from visiontune.cli import main as cli

    # Every `python -m visiontune.X` entry point (a module, or a package's __main__.py, that
    # runs as __main__) is a subcommand, and each subcommand's module is in cli/.
    package = os.path.dirname(visiontune.__file__)

    def runs_as_main(name):
        path = os.path.join(package, name)
        path = os.path.join(path, "__main__.py") if os.path.isdir(path) else path + ".py"
        return os.path.isfile(path) and "__main__" in open(path, encoding="utf-8").read()

    entry_points = {n.removesuffix(".py") for n in os.listdir(package)
                    if n != "__init__.py" and runs_as_main(n.removesuffix(".py"))}
    assert {module.rsplit(".", 1)[1] for module, _ in cli.COMMANDS.values()} == entry_points
    assert all(module.startswith("visiontune.cli.") for module, _ in cli.COMMANDS.values())
    # The console command is installed, and its help names every command.
    result = subprocess.run(["visiontune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in cli.COMMANDS:
        assert f"  {name} " in result.stdout
    # A subcommand is the module's own main, with the same flags and exit codes.
    assert cli.main(["doctor", "--data", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("visiontune.doctor: error: Data folder")
    with pytest.raises(SystemExit):
        cli.main(["trian"])
    assert "Did you mean 'train'?" in capsys.readouterr().err


def test_verbose_may_be_abbreviated_as_argparse_allows():
    from visiontune.common import quiet_start

    assert quiet_start.asks_for_verbose(["--data", "x", "--verb"])
    assert quiet_start.asks_for_verbose(["--verbose"])
    assert not quiet_start.asks_for_verbose(["--v", "--val-data", "x", "--verbosity"])
    parser = flags.build_parser()
    assert parser.parse_args(["--verb"]).verbose  # What argparse itself accepts.


def test_import_tensorflow_shows_the_notices_for_an_abbreviated_verbose(monkeypatch):
    from visiontune.common import quiet_start

    def hidden():
        raise AssertionError("the notices were hidden despite --verb")

    monkeypatch.setattr(quiet_start, "native_notices_hidden", hidden)
    monkeypatch.setattr(sys, "argv", ["visiontune", "train", "--verb"])
    assert quiet_start.import_tensorflow().__name__ == "tensorflow"
    monkeypatch.setattr(sys, "argv", ["visiontune", "train"])
    with pytest.raises(AssertionError, match="hidden"):
        quiet_start.import_tensorflow()


def test_a_missing_folder_is_named_before_the_run_directory_exists(tmp_path, monkeypatch,
                                                                    capsys):
    """Also a relative name with a colon, which the old check took for a `scheme:` source
    and let through to fail later, after the run directory was made."""
    monkeypatch.chdir(tmp_path)
    assert train.main(["--data", "a:b", "--output", "r", *FAST]) == 2
    assert "--data 'a:b': no such folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    from visiontune.data import sources

    for fine in ("builtin:digits", "tfds:beans", str(tmp_path), None):
        sources.check_folder_exists(fine)  # No error.
