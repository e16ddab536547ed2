"""The learning-rate finder, weight interpolation (WiSE-FT) and test-time augmentation."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import visiontune
from visiontune.cli import evaluate, predict
from visiontune.cli import interpolate as interpolate_cli, lr_find as lr_find_cli
from visiontune.evaluation import metrics as evaluation
from visiontune.training import optimizers, phases
from visiontune.tuning import freezing
from visiontune.cli import train
from visiontune.evaluation.interpolate import corrupt, interpolate
from visiontune.training.lr_find import lr_find
from conftest import assert_picture, color_images, tiny_backbone, write_image_folder
from test_cli import FAST

# `visiontune.interpolate` and `visiontune.lr_find` are the functions; the command lines
# live in visiontune/cli/.


def classifier(seed=0):
    keras.utils.set_random_seed(seed)
    return visiontune.build_classifier(tiny_backbone(), 3, None, hidden_units=(8,))


def test_lr_find_sweeps_exponentially_and_restores_the_weights_exactly():
    model = classifier()
    freezing.set_trainable_blocks(model, 1)
    before = [np.array(w) for w in model.get_weights()]
    x, y = color_images(32, size=32)
    result = lr_find(model, (x, y), start_lr=1e-5, end_lr=10.0, steps=40, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    rates = result.learning_rates
    ratios = rates[1:] / rates[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-5) ** (1 / 39), rtol=1e-4)
    assert rates[0] == pytest.approx(1e-5)
    assert len(result.losses) == len(rates) <= 40
    best = int(np.argmin(result.smoothed_losses))
    assert result.suggestion == pytest.approx(rates[best] / 10)
    assert result.smoothed_losses[best] < result.smoothed_losses[0]  # It did learn.
    (ax,) = result.plot().axes
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), rates)
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), result.smoothed_losses)
    assert list(ax.get_lines()[1].get_xdata()) == [result.suggestion] * 2


def test_lr_find_rejects_a_bad_range():
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(classifier(), color_images(4), start_lr=1.0, end_lr=1e-3)


def test_interpolate_reproduces_both_ends_and_mixes_between():
    start = classifier()
    end = keras.models.clone_model(start)
    rng = np.random.default_rng(0)
    end.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype)
                     for w in start.get_weights()])
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(interpolate(start, end, 0.0).predict(x, verbose=0),
                               start.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(interpolate(start, end, 1.0).predict(x, verbose=0),
                               end.predict(x, verbose=0), atol=1e-6)
    half = interpolate(start, end, 0.5)
    for a, b, m in zip(start.get_weights(), end.get_weights(), half.get_weights()):
        np.testing.assert_allclose(m, (a + b) / 2, atol=1e-6)
    assert half is not end and half.trainable_weights  # A new model with the same state.


def test_interpolate_refuses_different_architectures():
    start = classifier()
    other = visiontune.build_classifier(tiny_backbone(), 4, None, hidden_units=(8,))
    with pytest.raises(ValueError, match="Cannot interpolate: weight .* same architecture"):
        interpolate(start, other, 0.5)
    smaller = visiontune.build_classifier(tiny_backbone(), 3, None)
    with pytest.raises(ValueError, match="has .* weights"):
        interpolate(start, smaller, 0.5)


def test_corruptions_are_fixed_and_change_every_image():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    shifted = corrupt(pixels)
    assert shifted.dtype == np.uint8 and shifted.shape == pixels.shape
    np.testing.assert_array_equal(shifted, corrupt(pixels))
    changed = np.abs(shifted.astype(int) - pixels).mean(axis=(1, 2, 3))
    assert (changed > 5).all(), changed  # Blur, noise, contrast and JPEG all show.


@pytest.mark.parametrize("layout", ["random split", "train and val folders"])
def test_interpolate_cli_sweeps_a_run_and_saves_the_best(tmp_path, layout):
    data = str(tmp_path / "photos")
    if layout == "random split":
        write_image_folder(data, n_per_class=8)
    else:  # Caught: the run's split.json was checked against train/ alone, and refused.
        write_image_folder(os.path.join(data, "train"), n_per_class=6)
        write_image_folder(os.path.join(data, "val"), n_per_class=3, seed=1)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, *FAST]) == 0
    assert os.path.exists(os.path.join(out, "after-head.weights.npz"))
    assert interpolate_cli.main([out, "--alphas", "0,0.5,1", "--select", "clean"]) == 0
    report = json.load(open(os.path.join(out, "interpolation.json")))
    assert [r["alpha"] for r in report["rows"]] == [0.0, 0.5, 1.0]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    # Alpha 1 is the run's final model, scored on the same validation images.
    assert report["rows"][-1]["clean"] == pytest.approx(metrics["val_accuracy"])
    best = max(r["clean"] for r in report["rows"])
    assert report["rows"][[r["alpha"] for r in report["rows"]].index(report["best_alpha"])][
        "clean"] == best
    assert keras.saving.load_model(os.path.join(out, "interpolated.keras")).output_shape == \
        (None, 3)
    assert_picture(os.path.join(out, "interpolation.png"), size=(600, 400))
    assert interpolate_cli.main([str(tmp_path / "photos"), "--alphas", "0,1"]) == 2


def test_lr_find_cli_writes_the_plot_and_suggests_a_rate(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    plot = str(tmp_path / "lr.png")
    assert lr_find_cli.main(["--data", data, "--backbone", "mobilenetv2", "--weights", "none",
                             "--image-size", "32", "--batch-size", "8", "--steps", "12",
                             "--output", plot]) == 0
    assert "Suggested learning rate" in capsys.readouterr().out
    assert_picture(plot, size=(600, 400))
    assert lr_find_cli.main(["--data", str(tmp_path / "nothing"), "--steps", "12"]) == 2


def test_flip_tta_averages_each_image_with_its_mirror(tmp_path):
    model = classifier()
    x = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    expected = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(evaluation.probabilities(model, x, "flip"), expected, atol=1e-6)
    assert not np.allclose(expected, model.predict(x, verbose=0), atol=1e-4)
    with pytest.raises(ValueError, match="--tta"):
        evaluation.probabilities(model, x, "rotate")

    data = write_image_folder(str(tmp_path / "photos"), n_per_class=6)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, *FAST]) == 0
    assert predict.main([out, data, "--tta", "flip", "--format", "json",
                         "--output", str(tmp_path / "p.json")]) == 0
    assert len(json.load(open(tmp_path / "p.json"))) == 18
    metrics, _ = evaluate.evaluate_folder(out, data, str(tmp_path / "eval"), tta="flip")
    assert metrics["tta"] == "flip" and metrics["images"] == 18


def test_functions_and_their_command_line_modules_share_a_name_cleanly():
    assert interpolate_cli.interpolate is visiontune.interpolate  # Still the function.
    assert lr_find_cli.lr_find is visiontune.lr_find
    run = subprocess.run([sys.executable, "-m", "visiontune.interpolate", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--alphas" in run.stdout
    assert "RuntimeWarning" not in run.stderr, run.stderr


def test_gradual_unfreezing_widens_the_trainable_set_one_block_per_stage():
    model = classifier()
    x, y = color_images(16, size=32)
    history = visiontune.fine_tune(model, (x, y), None, head_epochs=1, finetune_epochs=4,
                                   unfreeze_blocks=3, gradual_epochs=1, cache="memory",
                                   verbose=0)
    stages = [p for p in history.phases if p["name"] != "head"]
    assert [p["name"] for p in stages] == ["finetune-1", "finetune-2", "finetune-3"]
    assert [p["epochs"] for p in stages] == [1, 1, 2]
    for n, stage in enumerate(stages, start=1):
        probe = classifier()
        freezing.set_trainable_blocks(probe, n)
        assert stage["trainable_params"] == \
            freezing.trainable_summary(probe).trainable_params
    assert stages[0]["trainable_params"] < stages[1]["trainable_params"] \
        < stages[2]["trainable_params"]
    with pytest.raises(ValueError, match="needs finetune_epochs > 4"):
        visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=4,
                             unfreeze_blocks=3, gradual_epochs=2)


def blocks_of(model):
    """The tiny backbone's three conv blocks: their first layers are block1a_conv and so on."""
    return [b for b in freezing._blocks(visiontune.find_backbone(model), None)
            if b.name.startswith("block")]


def test_discriminative_rates_scale_each_blocks_first_step():
    model = classifier()
    freezing.set_trainable_blocks(model, 3)
    phase = phases.Phase("finetune", 1, 1e-3, 3, lr_decay=0.5)
    optimizers.compile_for_phase(model, phase)
    kernels = [b.layers[0].kernel for b in blocks_of(model)]
    before = [keras.ops.convert_to_numpy(k).copy() for k in kernels]
    x, y = color_images(8, size=32)
    model.train_on_batch(x, y)
    # Adam's first step moves each weight by about its rate (m / sqrt(v) = sign(g)).
    steps = [np.median(np.abs(keras.ops.convert_to_numpy(k) - b))
             for k, b in zip(kernels, before)]
    np.testing.assert_allclose(steps, [2.5e-4, 5e-4, 1e-3], rtol=0.02)

    # In fine_tune, also when phase 2 trains a cached trainer cut below block 2: block 3
    # steps at the rate, block 2 at half of it, and block 1, below the cut, not at all.
    model = classifier()
    kernels = [b.layers[0].kernel for b in blocks_of(model)]
    before = [keras.ops.convert_to_numpy(k).copy() for k in kernels]
    history = visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=1,
                                   finetune_lr=1e-3, schedule="constant", warmup_epochs=0,
                                   unfreeze_blocks=2, lr_decay=0.5, cache="memory", verbose=0)
    assert history.phases[0]["cache"] == "memory"
    steps = [np.median(np.abs(keras.ops.convert_to_numpy(k) - b))
             for k, b in zip(kernels, before)]
    assert steps[0] == 0
    np.testing.assert_allclose(steps[1:], [5e-4, 1e-3], rtol=0.02)
