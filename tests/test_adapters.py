"""Phase 2 methods other than unfreezing: LoRA adapters, bn-bias (BitFit), linear probe."""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import visiontune
from visiontune.tuning import adapters, freezing
from visiontune.training import compare
from visiontune.export import saving
from visiontune.cli import train
from visiontune.runs import flags
from visiontune.evaluation import plots
from visiontune.export import parity, serving
from conftest import color_images, tiny_backbone, write_image_folder
from test_cli import FAST
from test_resume import Epochs, Interrupt, fit_1_plus_3


def classifier(seed=0):
    keras.utils.set_random_seed(seed)
    return visiontune.build_classifier(tiny_backbone(), 3, None, hidden_units=(8,))


def values(model):
    """Every variable by path, except the dropout seed state (which moves on every call)."""
    return {v.path: np.array(v) for v in model.weights if "seed_generator" not in v.path}


def changed(before, model):
    after = values(model)
    return {path for path in before if not np.array_equal(before[path], after[path])}


HEAD = {"head_hidden_1/kernel", "head_hidden_1/bias", "head_output/kernel", "head_output/bias"}


def test_lora_trains_only_adapters_and_head_and_merges_to_a_plain_model(tmp_path):
    model = classifier()
    x, y = color_images(16, size=32)
    visiontune.fine_tune(model, (x, y), head_epochs=1, finetune_epochs=0, verbose=0)
    before = values(model)
    history = visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=3,
                                   finetune_lr=1e-2, unfreeze_blocks=2, method="lora",
                                   lora_rank=2, cache="memory", verbose=0)
    assert history.phases[0]["method"] == "lora"
    lora = {f"block{i}a_conv/lora_kernel_{ab}" for i in (2, 3) for ab in "ab"}
    assert {v.path for v in model.trainable_variables} == lora | HEAD
    assert changed(before, model) == HEAD  # The backbone's own weights never moved.
    assert {p for p in values(model) if "lora" in p} == lora
    adapted = adapters.lora_layers(model)
    assert all(np.abs(np.array(layer.lora_kernel_b)).max() > 0 for layer in adapted)
    assert history.phases[0]["trainable_params"] == sum(
        int(np.prod(v.shape)) for v in model.trainable_variables)

    expected = model.predict(x, verbose=0)
    plain = adapters.merge_lora(model)
    assert not adapters.lora_layers(plain) and plain is not model
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, atol=1e-5)
    # Saving merges too; plain Keras (no visiontune import) loads the same predictions.
    path = str(tmp_path / "model.keras")
    saving.save_model(model, path)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
            "assert 'lora' not in str(m.get_config()); "
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))")
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "x.npy"),
                    str(tmp_path / "p.npy")], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-5)


def test_lora_on_efficientnet_lite_says_only_1x1_convolutions_take_adapters():
    model = visiontune.build_classifier("efficientnet_lite0", 3, None, 64)
    report = adapters.enable_lora(model, 2, rank=4)
    assert report.adapted == ("block7a_expand_conv", "block7a_project_conv", "top_conv")
    assert set(report.kernel_sizes) == {"1x1"} and report.ineligible == 1
    assert "only the 1x1 convolutions" in str(report)
    assert "depthwise" in str(report)
    with pytest.raises(ValueError, match="lora_rank"):
        adapters.enable_lora(model, 2, rank=0)


@pytest.mark.slow  # trains three times or more
def test_lora_resumes_after_a_crash_in_a_later_gradual_stage(tmp_path):
    fit = functools.partial(fit_1_plus_3, gradual_epochs=1, method="lora", lora_rank=2)
    reference = fit(str(tmp_path / "whole"))
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(backup, [Interrupt(3)])  # In finetune-2, after the LoRA stage finetune-1 ended.
    epochs = Epochs()
    resumed = fit(backup, [epochs])
    assert epochs.trained == [3]  # Restarting finetune-2 would train epoch 2 again.
    assert len(resumed.get_weights()) == len(reference.get_weights())
    for expected, got in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bn_bias_trains_batchnorm_affine_and_biases_in_inference_mode():
    model = classifier()
    x, y = color_images(16, size=32)
    before = values(model)
    history = visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=2,
                                   finetune_lr=1e-2, unfreeze_blocks=2, method="bn-bias",
                                   cache="memory", verbose=0)
    trainable = {f"block{i}a_{name}" for i in (2, 3)
                 for name in ("conv/bias", "bn/gamma", "bn/beta")}
    assert {v.path for v in model.trainable_variables} == trainable | HEAD
    assert changed(before, model) == trainable | HEAD  # Moving statistics and kernels fixed.
    assert history.phases[0]["trainable_params"] == sum(
        int(np.prod(v.shape)) for v in model.trainable_variables)
    # Inference mode: the forward pass does not depend on `training` (dropout aside).
    backbone = visiontune.find_backbone(model)
    np.testing.assert_allclose(backbone(x, training=True), backbone(x, training=False),
                               atol=1e-6)
    # A later phase that unfreezes gets the kernels back.
    freezing.set_trainable_blocks(model, 1)
    assert "block3a_conv/kernel" in {v.path for v in model.trainable_variables}


def test_bn_bias_on_convnext_trains_layer_norm_scales_offsets_and_biases():
    """ConvNeXt has no BatchNorm: bn-bias trains its LayerNorms' scale and offset instead."""
    model = visiontune.build_classifier("convnexttiny", 3, None, 32)
    freezing.set_trainable_blocks(model, 1, method="bn-bias")
    backbone = visiontune.find_backbone(model)
    top = "convnext_tiny_stage_3_block_2_"
    expected = {f"{top}{name}" for name in ("depthwise_conv/bias", "layernorm/gamma",
                                            "layernorm/beta", "pointwise_conv_1/bias",
                                            "pointwise_conv_2/bias")}
    got = {v.path for v in backbone.trainable_variables}
    # The final LayerNorm (a generic name, numbered per session) belongs to the last block.
    final = {p for p in got if p.startswith("layer_normalization")}
    assert {p.rsplit("/", 1)[1] for p in final} == {"gamma", "beta"}, got
    assert got - final == expected
    assert not any("layer_scale" in p or "kernel" in p for p in got)
    # Four blocks reach the downsampling block, a nested Sequential: its own LayerNorm and
    # convolution bias train too, and its kernel does not.
    freezing.set_trainable_blocks(model, 4, method="bn-bias")
    down = "convnext_tiny_downsampling_block_2/convnext_tiny_downsampling_"
    got = {v.path for v in backbone.trainable_variables}
    assert {f"{down}layernorm_2/gamma", f"{down}layernorm_2/beta", f"{down}conv_2/bias"} <= got
    assert f"{down}conv_2/kernel" not in got
    assert not any("kernel" in p or "stage_2" in p for p in got), got


def test_linear_probe_trains_only_the_head_on_cached_features():
    model = classifier()
    x, y = color_images(16, size=32)
    history = visiontune.fine_tune(model, (x, y), head_epochs=2, finetune_epochs=5,
                                   method="linear-probe", cache="auto", verbose=0)
    assert [p["name"] for p in history.phases] == ["head"]
    assert history.phases[0]["cache"] == "memory"
    with pytest.raises(ValueError, match="method"):
        visiontune.fine_tune(model, (x, y), method="adapters")
    with pytest.raises(ValueError, match="unfreeze_blocks >= 1"):
        visiontune.fine_tune(model, (x, y), method="lora", unfreeze_blocks=0)


def test_cli_lora_run_saves_plain_models(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, *FAST,
                       "--method", "lora", "--lora-rank", "2"]) == 0
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["settings"]["method"] == "lora"
    assert list(metrics["epochs"]) == ["head", "finetune"]
    for name in ("model.keras", "best.keras"):
        loaded = keras.saving.load_model(os.path.join(out, name))
        assert "lora" not in str(loaded.get_config())


def test_method_flags_are_checked():
    parsed = flags.parse_config(["--method", "bn-bias"])
    assert parsed.method == "bn-bias" and parsed.finetune_lr is None
    with pytest.raises(SystemExit):
        flags.parse_config(["--method", "adapters"])
    with pytest.raises(ValueError, match="lora_rank"):
        flags.parse_config(["--lora-rank", "0"])


def test_lora_export_is_merged_and_matches_the_adapted_model(tmp_path):
    model = classifier()
    x, y = color_images(8, size=32)
    visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=2, finetune_lr=1e-2,
                         unfreeze_blocks=2, method="lora", lora_rank=2, verbose=0)
    path = serving.export(model, str(tmp_path / "exported"))
    assert parity.parity(model, path, "savedmodel", x.astype(np.uint8)) < 1e-5


@pytest.mark.slow  # trains three times or more
def test_compare_methods_starts_every_method_from_the_same_warm_head():
    x, y = color_images(16, size=32)
    build = lambda: visiontune.build_classifier(tiny_backbone(), 3, None)  # noqa: E731
    result = compare.compare_methods(build, (x, y), (x, y), head_epochs=1, finetune_epochs=2,
                                     unfreeze_blocks=2, cache="memory")
    assert [r["method"] for r in result.rows] == ["linear probe", *compare.VARIANTS]
    assert result.rows[0]["phase2_s"] == 0 and all(r["phase2_s"] > 0 for r in result.rows[1:])
    params = {r["method"]: r["trainable_params"] for r in result.rows}
    assert params["linear probe"] < params["bn-bias"] < params["two-phase"]
    assert params["gradual"] == params["two-phase"]  # Its last stage trains both blocks.
    assert "| lora |" in result.table()
    # Every method's fine-tuned model differs from the warm head only where it trains.
    start = {v.path: np.array(v) for v in result.start.weights}
    lora = result.models["lora"]
    for v in lora.weights:
        if v.path in start and "head" not in v.path and "seed_generator" not in v.path:
            np.testing.assert_array_equal(np.array(v), start[v.path], err_msg=v.path)
    accuracy_bars = plots.method_comparison(result.rows).axes[0].patches
    assert [p.get_width() for p in accuracy_bars] == [r["val_accuracy"] for r in result.rows]
    with pytest.raises(ValueError, match="Unknown methods"):
        compare.compare_methods(build, (x, y), None, methods=["adapters"])


LOAD_AND_FIT = """
import sys, numpy as np, keras
path, x, y = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
model = keras.saving.load_model(path)
def walk(m):
    for layer in m.layers:
        yield layer
        yield from walk(layer) if hasattr(layer, "layers") else ()
bn = [l for l in walk(model) if isinstance(l, keras.layers.BatchNormalization)]
before = [np.array(v) for l in bn for v in (l.moving_mean, l.moving_variance)]
print("trainable bn:", sum(l.trainable for l in bn), "of", len(bn))
model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
after = [np.array(v) for l in bn for v in (l.moving_mean, l.moving_variance)]
print("moving statistics changed:", sum(not np.array_equal(a, b) for a, b in zip(before, after)))
"""


def test_a_saved_bn_bias_model_keeps_batchnorm_frozen_in_plain_keras(tmp_path):
    """In plain Keras (no visiontune, so no inference-mode wrapper), `fit` on the saved
    model must not touch the BatchNorm moving statistics."""
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    out = str(tmp_path / "run")
    # No head epochs, so best.keras is a phase 2 (trainable BatchNorm) checkpoint.
    assert train.main(["--data", data, "--output", out, "--method", "bn-bias", *FAST,
                       "--head-epochs", "0"]) == 0
    x, y = color_images(8, size=32, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for name in ("model.keras", "best.keras"):
        run = subprocess.run([sys.executable, "-c", LOAD_AND_FIT, os.path.join(out, name),
                              str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert run.returncode == 0, run.stderr
        assert "trainable bn: 0 of" in run.stdout, (name, run.stdout)
        assert "moving statistics changed: 0" in run.stdout, (name, run.stdout)


def test_the_inference_mode_wrapper_goes_when_batchnorm_is_frozen_again():
    model = classifier()
    freezing.set_trainable_blocks(model, 2, method="bn-bias")
    wrapped = [layer for layer in freezing.all_layers(model)
               if getattr(layer, "_visiontune_inference_only", False)]
    assert wrapped and all("call" in vars(layer) for layer in wrapped)
    freezing.set_trainable_blocks(model, 2)  # A later two-phase phase.
    assert not any("call" in vars(layer) or getattr(layer, "_visiontune_inference_only", False)
                   for layer in freezing.all_layers(model))
    freezing.set_trainable_blocks(model, 2, method="bn-bias")
    with freezing.batchnorm_frozen(model):  # As saving does, and then back to training.
        assert not any(layer.trainable for layer in wrapped)
    assert all(layer.trainable for layer in wrapped)


def test_lora_variables_are_the_adapters_and_leave_the_resume_fingerprint_alone():
    from visiontune.training import recipe

    model = classifier()
    before = recipe._resume_settings(model, [])["model"]
    report = adapters.enable_lora(model, 2, rank=2)
    found = adapters.lora_variables(model)
    assert len(found) == 2 * len(report.adapted) > 0
    assert sorted(v.path.rsplit("/", 1)[-1] for v in found) == \
        sorted(["lora_kernel_a", "lora_kernel_b"] * len(report.adapted))
    assert len({id(v) for v in found}) == len(found)
    # A model that gained adapters (a resumed LoRA phase) is the same architecture.
    assert recipe._resume_settings(model, [])["model"] == before
    assert adapters.lora_variables(classifier(1)) == []
