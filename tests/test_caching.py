import json
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import visiontune
from visiontune.training import caching
from visiontune.tuning import freezing
from visiontune.cli import train
from conftest import color_images, tiny_backbone, write_image_folder
from test_cli import FAST


def fixed_order_data():
    x, y = color_images(16, size=32, seed=1)
    xv, yv = color_images(8, size=32, seed=2)
    return (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
            tf.data.Dataset.from_tensor_slices((xv, yv)).batch(16))


def trained(cache, **kwargs):
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.3,
                                        hidden_units=(8,))
    train_ds, val_ds = fixed_order_data()
    history = visiontune.fine_tune(model, train_ds, val_ds, head_epochs=3, finetune_epochs=3,
                                   unfreeze_blocks=2, cache=cache, shuffle=False, verbose=0,
                                   **kwargs)
    return model, history


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_phases_train_the_same_weights_as_uncached(mode, tmp_path):
    reference, reference_history = trained("off")
    model, history = trained(mode, cache_dir=str(tmp_path))
    assert [p["cache"] for p in history.phases] == [mode, mode]
    assert "head layer 'head_dropout'" in history.phases[0]["cache_reason"]
    assert "block 'block2a'" in history.phases[1]["cache_reason"]
    for before, after in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(after, before, atol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"],
                               reference_history.history["val_loss"], rtol=1e-5)
    if mode == "disk":
        assert sorted(os.listdir(tmp_path)) == ["finetune-train.f32", "finetune-val.f32",
                                                "head-train.f32", "head-val.f32"]


def test_plan_cuts_where_training_starts_and_says_why():
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    head = caching.plan(model, 0, "auto", num_images=100)
    assert head.mode == "memory" and "fits the memory budget" in head.reason
    assert head.bottom.output.shape[1:] == (32,)  # Pooled features of the last block.
    blocks = freezing.count_blocks(model)
    assert caching.plan(model, blocks, "auto", 100).mode == "off"
    assert "whole backbone trains" in caching.plan(model, blocks, "auto", 100).reason
    small = caching.plan(model, 1, "auto", num_images=100, budget_bytes=1000)
    assert small.mode == "disk" and "exceeds the memory budget" in small.reason
    assert caching.plan(model, 1, "off").mode == "off"
    with pytest.raises(ValueError, match="cache"):
        caching.plan(model, 1, "sometimes")


def test_trainer_shares_the_classifiers_variables():
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    freezing.set_trainable_blocks(model, 1)
    plan = caching.plan(model, 1, "memory", 10)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(plan.trainer(plan.bottom(x)), model(x), atol=1e-6)
    classifier_vars = {id(v) for v in model.trainable_variables}
    assert {id(v) for v in plan.trainer.trainable_variables} == classifier_vars


def test_callbacks_see_the_whole_classifier_in_cached_phases(tmp_path):
    best = str(tmp_path / "best.keras")
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    train_ds, val_ds = fixed_order_data()
    history = visiontune.fine_tune(
        model, train_ds, val_ds, head_epochs=4, finetune_epochs=0, cache="memory",
        callbacks=[keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy"), stop],
        verbose=0)
    assert history.phases[0]["epochs"] == 2  # EarlyStopping stopped the cached trainer.
    saved = keras.saving.load_model(best)
    assert saved.input_shape == (None, 32, 32, 3) and saved.output_shape == (None, 3)


def test_cli_reports_the_cache_mode_in_metrics(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=8)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, *FAST[:-1]]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["cache"]["head"]["mode"] == "memory"
    assert metrics["cache"]["finetune"]["mode"] == "memory"
    assert "cached in memory" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "cache"))
    assert keras.saving.load_model(os.path.join(out, "best.keras")).input_shape[1:] == (32, 32, 3)

    augmented = str(tmp_path / "augmented")
    assert train.main(["--data", data, "--output", augmented, "--augment", "light",
                       *FAST[:-1]]) == 0
    metrics = json.load(open(os.path.join(augmented, "metrics.json")))
    assert metrics["cache"]["head"]["mode"] == "off"
    assert "augmentation changes the training images" in capsys.readouterr().out


def test_forced_cache_with_augmentation_is_a_clear_error(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    assert train.main(["--data", data, "--output", str(tmp_path / "run"), "--cache", "memory",
                       "--augment", "light", *FAST]) == 2
    assert "--cache memory cannot be combined with --augment light" in capsys.readouterr().err


def test_mixed_bfloat16_run_keeps_a_float32_output_and_restores_the_policy(tmp_path):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=6)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, "--precision", "mixed_bfloat16",
                       *FAST]) == 0
    assert keras.config.dtype_policy().name == "float32"
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["settings"]["precision"] == "mixed_bfloat16"
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    assert model.get_layer("head_dropout").dtype_policy.compute_dtype == "bfloat16"
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict(x, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_jit_compile_trains_cached_phases_like_the_plain_step():
    def run(jit):
        keras.utils.set_random_seed(0)
        model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
        train_ds, val_ds = fixed_order_data()
        history = visiontune.fine_tune(model, train_ds, val_ds, head_epochs=2,
                                       finetune_epochs=2, cache="memory", shuffle=False,
                                       jit_compile=jit, verbose=0)
        return model, history

    reference, _ = run(False)
    model, history = run(True)
    assert [p["cache"] for p in history.phases] == ["memory", "memory"]
    # Without dropout the only difference is XLA's reordering of float operations.
    for before, after in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(after, before, atol=1e-4)


def test_augmented_copies_give_each_epoch_one_whole_copy(tmp_path):
    folder = write_image_folder(str(tmp_path / "photos"), n_per_class=4)
    splits = visiontune.load_data(folder, 32, batch_size=4, augment_preset="light",
                                  verbose=False)
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    plan = caching.plan(model, 0, "memory", 40)
    cached = caching.cache(plan, splits.train, copies=3, seed=0, verbose=False)
    n = len(splits.train_files.paths)
    assert int(cached.cardinality()) == -(-n // 4)
    labels = sorted(splits.train_files.labels)
    epochs = []
    for _ in range(8):
        features, y = (np.concatenate(part) for part in zip(*cached))
        assert sorted(y.tolist()) == labels  # Every image once per epoch.
        epochs.append(frozenset(map(bytes, np.round(features, 5))))
    # 8 epochs drawn from 3 copies: some repeat a copy exactly, and the copies differ
    # because every pass over the pipeline draws new augmentations.
    assert 2 <= len(set(epochs)) <= 3
    with pytest.raises(ValueError, match="copies"):
        caching.cache(plan, splits.train, copies=0)


def test_cli_caches_augmented_copies_in_phase_1_only(tmp_path, capsys):
    data = write_image_folder(str(tmp_path / "photos"), n_per_class=6)
    out = str(tmp_path / "run")
    assert train.main(["--data", data, "--output", out, "--augment", "light",
                       "--cache-copies", "2", *FAST]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["cache"]["head"]["mode"] == "memory"
    assert metrics["cache"]["finetune"]["mode"] == "off"
    assert "cache_copies=2" in metrics["cache"]["finetune"]["reason"]
    assert train.main(["--data", data, "--output", str(tmp_path / "plain"),
                       "--cache-copies", "2", *FAST]) == 2
    assert "--cache-copies 2 needs --augment or --mix" in capsys.readouterr().err


def test_disk_cache_without_a_folder_leaves_no_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, history = trained("disk")
    assert [p["cache"] for p in history.phases] == ["disk", "disk"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("visiontune-cache")]


def _merged_patterns():
    """Top block = block2a and block3a together (a pattern whose group names it)."""
    return [r"^(block1a)_", r"^block[23](a)_"]


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_fine_tune_counts_blocks_with_the_given_block_patterns(cache):
    patterns = _merged_patterns()
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    # The stem (the rescaling), block1a, and "a": blocks 2 and 3 of the registry's grouping.
    assert freezing.count_blocks(model, patterns) == 3
    kernels = {b: visiontune.find_backbone(model).get_layer(f"block{b}a_conv").kernel
               for b in (1, 2, 3)}
    before = {b: keras.ops.convert_to_numpy(k).copy() for b, k in kernels.items()}
    train_ds, val_ds = fixed_order_data()
    history = visiontune.fine_tune(model, train_ds, val_ds, head_epochs=0, finetune_epochs=1,
                                   finetune_lr=1e-3, unfreeze_blocks=1, block_patterns=patterns,
                                   cache=cache, shuffle=False, verbose=0)
    moved = {b: not np.array_equal(keras.ops.convert_to_numpy(k), before[b])
             for b, k in kernels.items()}
    assert moved == {1: False, 2: True, 3: True}  # With the registry's blocks: 3 only.
    if cache == "memory":
        assert history.phases[0]["cache"] == "memory"
        assert "the input of block 'a'" in history.phases[0]["cache_reason"]


def test_the_planner_refuses_a_cut_with_trainable_weights_below_it():
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    freezing.set_trainable_blocks(model, 1, _merged_patterns())  # blocks 2 and 3 train
    plan = caching.plan(model, 1, "memory", 10)  # registry blocks: would cut below block 3
    assert plan.mode == "off"
    assert "weights below the input of block 'block3a'" in plan.reason
    assert "block2a_conv" in plan.reason
    assert caching.plan(model, 1, "memory", 10, block_patterns=_merged_patterns()).mode == \
        "memory"


# One backbone of each family in the registry: residuals, squeeze-excite, depthwise
# convolutions, hard-swish, Caffe-style and [-1, 1] preprocessing, LayerNorm (ConvNeXt),
# Inception's generically named branches, NASNet's cells, EfficientNetV2's fused blocks.
# Each at its smallest input.
FAMILIES = ["resnet50", "resnet50v2", "efficientnetb0", "efficientnetv2b0",
            "efficientnet_lite0", "mobilenet", "mobilenetv2", "mobilenetv3small",
            "convnexttiny", "xception", "inceptionv3", "inceptionresnetv2", "nasnetmobile",
            "densenet121"]
# A NASNet cell reads the two cells before it, so no single tensor separates the top
# cells from the rest: phase 2 runs uncached, and says why.
UNCACHEABLE = {"nasnetmobile": "skip connection across the cut"}


def _kind(spec):
    return spec.block_patterns, spec.preprocessing


@pytest.mark.slow
def test_every_family_trains_the_same_weights_cached_and_uncached():
    # Every grouping and every input normalisation (the fixed part below the cache).
    assert {_kind(visiontune.backbones.registry.get_spec(f)) for f in FAMILIES} == \
        {_kind(spec) for spec in visiontune.BACKBONES.values()}
    failures = []
    for family in FAMILIES:
        size = visiontune.backbones.registry.get_spec(family).min_size
        x, y = color_images(8, size=size, seed=1)
        xv, yv = color_images(4, size=size, seed=2)
        results = {}
        # An uncacheable family runs uncached either way: one run checks that it says so.
        for cache in ("memory",) if family in UNCACHEABLE else ("off", "memory"):
            keras.utils.set_random_seed(0)
            model = visiontune.build_classifier(family, 3, None, size, dropout=0.0)
            train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(12)
            val_ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(12)
            # Phase 2 only: phase 1's cut (the pooled features) is the same in every family.
            history = visiontune.fine_tune(model, train_ds, val_ds, head_epochs=0,
                                           finetune_epochs=1, finetune_lr=1e-3,
                                           schedule="constant", warmup_epochs=0,
                                           unfreeze_blocks=2, cache=cache, shuffle=False,
                                           verbose=0)
            phase = history.phases[0]
            if family in UNCACHEABLE and cache == "memory":
                assert phase["cache"] == "off", family
                assert UNCACHEABLE[family] in phase["cache_reason"], phase["cache_reason"]
            else:
                assert phase["cache"] == cache, (family, phase["cache_reason"])
            results[cache] = (model.get_weights(), history.history["val_loss"])
            keras.backend.clear_session()
        if family in UNCACHEABLE:
            assert np.isfinite(results["memory"][1]).all(), family
            continue
        (plain, plain_loss), (cached, cached_loss) = results["off"], results["memory"]
        gap = max(float(np.max(np.abs(a - b))) for a, b in zip(plain, cached))
        loss_gap = float(np.max(np.abs(np.subtract(plain_loss, cached_loss))))
        if gap > 1e-5 or loss_gap > 1e-5 or not np.isfinite(cached_loss).all():
            failures.append(f"{family}: max weight difference {gap:.2e}, "
                            f"validation loss {loss_gap:.2e}")
    assert not failures, failures


def test_lora_and_discriminative_rates_use_the_given_block_patterns():
    patterns = _merged_patterns()
    x, y = color_images(8, size=32)
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=1, method="lora",
                         lora_rank=2, unfreeze_blocks=1, block_patterns=patterns, verbose=0)
    backbone = visiontune.find_backbone(model)
    assert [backbone.get_layer(f"block{b}a_conv").lora_enabled for b in (1, 2, 3)] == \
        [False, True, True]
    # lr_decay=0.5 per block: blocks 2 and 3 are one block here, so one rate.
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    backbone = visiontune.find_backbone(model)
    kernels = [backbone.get_layer(f"block{b}a_conv").kernel for b in (2, 3)]
    before = [keras.ops.convert_to_numpy(k).copy() for k in kernels]
    visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=1, finetune_lr=1e-3,
                         schedule="constant", warmup_epochs=0, lr_decay=0.5,
                         unfreeze_blocks=2, block_patterns=patterns, verbose=0)
    steps = [np.median(np.abs(keras.ops.convert_to_numpy(k) - b))
             for k, b in zip(kernels, before)]
    np.testing.assert_allclose(steps, [1e-3, 1e-3], rtol=0.02)  # registry blocks: 5e-4, 1e-3
