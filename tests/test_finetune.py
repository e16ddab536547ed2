import keras
import numpy as np
import pytest
import tensorflow as tf

import visiontune
from visiontune.training import optimizers, phases as phase_lib, recipe
from conftest import color_images, tiny_backbone


def datasets(n_train=48, n_val=24, batch=16):
    x, y = color_images(n_train // 3, size=32, seed=1)
    xv, yv = color_images(n_val // 3, size=32, seed=2)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=0).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch)
    return train, val


def test_two_phases_each_lower_the_validation_loss():
    train, val = datasets()
    model = visiontune.build_classifier(tiny_backbone(), 3, dropout=0.0)
    visiontune.freeze_backbone(model)
    optimizers.compile_for_phase(model, phase_lib.Phase("probe", 0, 1.0))
    start_loss = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    history = visiontune.fine_tune(model, train, val, head_epochs=6, head_lr=3e-3,
                                   finetune_epochs=6, finetune_lr=1e-3, unfreeze_blocks=2,
                                   verbose=0)
    phases = np.asarray(history.history["phase"])
    val_loss = np.asarray(history.history["val_loss"])
    after_head = val_loss[phases == "head"][-1]
    after_finetune = val_loss[phases == "finetune"][-1]
    assert after_head < start_loss
    assert after_finetune < after_head


def test_history_is_merged_with_phases_and_continuous_epochs():
    train, val = datasets()
    model = visiontune.build_classifier(tiny_backbone(), 3)
    seen = []
    logger = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))
    history = visiontune.fine_tune(model, train, val, head_epochs=2, finetune_epochs=3,
                                   callbacks=[logger], verbose=0)
    assert history.history["phase"] == ["head"] * 2 + ["finetune"] * 3
    assert history.epoch == [0, 1, 2, 3, 4] and seen == [0, 1, 2, 3, 4]
    assert all(len(v) == 5 for v in history.history.values())
    assert [p["name"] for p in history.phases] == ["head", "finetune"]
    assert history.phases[0]["trainable_params"] < history.phases[1]["trainable_params"]
    assert isinstance(history, keras.callbacks.History)


def test_zero_epoch_phase_is_skipped():
    train, val = datasets()
    model = visiontune.build_classifier(tiny_backbone(), 3)
    history = visiontune.fine_tune(model, train, val, head_epochs=0, finetune_epochs=1,
                                   verbose=0)
    assert history.history["phase"] == ["finetune"]
    history = visiontune.fine_tune(model, train, val, head_epochs=1, finetune_epochs=0,
                                   verbose=0)
    assert history.history["phase"] == ["head"]


@pytest.mark.parametrize("optimizer, cls", [("adam", "Adam"), ("adamw", "AdamW"),
                                            ("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_optimizer_and_rate_are_set_per_phase(optimizer, cls):
    train, val = datasets()
    model = visiontune.build_classifier(tiny_backbone(), 3)
    visiontune.fine_tune(model, train, val, head_epochs=1, finetune_epochs=1,
                         optimizer=optimizer, finetune_lr=2e-5, schedule="constant",
                         verbose=0)
    assert type(model.optimizer).__name__ == cls
    assert float(model.optimizer.learning_rate) == pytest.approx(2e-5)


def test_cosine_schedule_warms_up_then_decays():
    phase = phase_lib.Phase("finetune", 4, 1e-3, 1, "adam", "cosine", warmup_epochs=1)
    schedule = optimizers.learning_rate(phase, steps_per_epoch=10)
    assert isinstance(optimizers.make_optimizer(phase, 10)._learning_rate,
                      keras.optimizers.schedules.CosineDecay)
    values = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert values[0] == pytest.approx(0.0)
    assert values[1] == pytest.approx(5e-4, rel=1e-3)
    assert values[2] == pytest.approx(1e-3, rel=1e-3)
    assert values[2] > values[3] > values[4]
    assert values[4] == pytest.approx(0.0, abs=1e-9)


def test_cosine_needs_a_known_length():
    model = visiontune.build_classifier(tiny_backbone(), 3)
    x, y = color_images(4, size=32)
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(4)
    with pytest.raises(ValueError, match="steps per epoch"):
        visiontune.fine_tune(model, unknown, head_epochs=0, finetune_epochs=1,
                             schedule="cosine", verbose=0)


def test_too_many_blocks_fails_before_any_training():
    train, val = datasets()
    model = visiontune.build_classifier(tiny_backbone(), 3)
    before = model.get_layer("head_output").kernel.numpy().copy()
    with pytest.raises(ValueError, match="unfreeze_blocks"):
        visiontune.fine_tune(model, train, val, unfreeze_blocks=99, verbose=0)
    np.testing.assert_array_equal(before, model.get_layer("head_output").kernel.numpy())


@pytest.mark.parametrize("kwargs, match", [({"head_epochs": -1}, "epochs"),
                                           ({"finetune_lr": 0}, "learning rate"),
                                           ({"optimizer": "lion"}, "optimizer"),
                                           ({"schedule": "step"}, "schedule")])
def test_bad_schedule_arguments_are_clear_errors(kwargs, match):
    model = visiontune.build_classifier(tiny_backbone(), 3)
    with pytest.raises(ValueError, match=match):
        visiontune.fine_tune(model, datasets()[0], **kwargs)


def test_one_hot_and_multi_label_targets_pick_the_right_loss():
    x, y = color_images(4, size=32)
    model = visiontune.build_classifier(tiny_backbone(), 3)
    visiontune.fine_tune(model, (x, np.eye(3)[y]), head_epochs=1, finetune_epochs=0, verbose=0)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    model = visiontune.build_classifier(tiny_backbone(), 3, multi_label=True)
    visiontune.fine_tune(model, (x, np.eye(3)[y]), head_epochs=1, finetune_epochs=0, verbose=0)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)


def test_no_epochs_leaves_the_model_frozen_and_untouched():
    model = visiontune.build_classifier(tiny_backbone(), 3)
    before = [w.copy() for w in model.get_weights()]
    trainable = [v.path for v in model.trainable_weights]
    history = visiontune.fine_tune(model, datasets()[0], head_epochs=0, finetune_epochs=0,
                                   unfreeze_blocks=3)
    assert history.epoch == [] and history.phases == []
    assert not visiontune.find_backbone(model).trainable_weights
    assert [v.path for v in model.trainable_weights] == trainable  # the head, as built
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cache, phase", [("off", "head"), ("memory", "head"),
                                          ("memory", "finetune")])
def test_label_smoothing_trains_on_the_smoothed_cross_entropy(cache, phase):
    x, y = color_images(8, size=32, seed=3)
    model = visiontune.build_classifier(tiny_backbone(), 3, dropout=0.0, l2=0.0)
    # Confident predictions first, so that smoothing the targets changes the loss clearly.
    visiontune.fine_tune(model, (x, y), head_epochs=8, head_lr=0.05, finetune_epochs=0,
                         verbose=0)
    probs = model.predict(x, verbose=0)
    targets = 0.7 * np.eye(3)[y] + 0.3 / 3  # label_smoothing=0.3 over 3 classes
    expected = float(np.mean(-np.sum(targets * np.log(probs), axis=1)))
    plain = float(np.mean(-np.log(probs[np.arange(len(y)), y])))
    epochs = {"head_epochs": 1, "finetune_epochs": 0} if phase == "head" else {
        "head_epochs": 0, "finetune_epochs": 1, "schedule": "constant"}
    history = visiontune.fine_tune(model, (x, y), head_lr=1e-12, finetune_lr=1e-12,
                                   label_smoothing=0.3, cache=cache, verbose=0, **epochs)
    assert history.history["phase"] == [phase]
    # At a rate of 1e-12 the epoch's mean loss is the loss of the model as it was.
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-3)
    assert abs(expected - plain) > 0.05  # The smoothing is visible at this tolerance.


def test_label_smoothing_out_of_range_is_a_clear_error():
    model = visiontune.build_classifier(tiny_backbone(), 3)
    with pytest.raises(ValueError, match="label_smoothing"):
        visiontune.fine_tune(model, datasets()[0], label_smoothing=1.0)


def test_ema_ends_phase_2_on_the_moving_average_of_its_weights():
    x, y = color_images(8, size=32, seed=4)
    model = visiontune.build_classifier(tiny_backbone(), 3, dropout=0.0)
    visiontune.fine_tune(model, (x, y), head_epochs=1, finetune_epochs=0, verbose=0)
    kernel = model.layers[-1].kernel
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(np.array(kernel.numpy())))
    visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=3, finetune_lr=1e-2,
                         schedule="constant", ema=0.8, callbacks=[record], verbose=0)
    # Keras's EMA: the first step copies the weights, each later one mixes in `1 - momentum`.
    average = seen[0]
    for weights in seen[1:]:
        average = 0.8 * average + 0.2 * weights
    assert len(seen) == 3 and not np.allclose(seen[-1], average, atol=1e-6)
    np.testing.assert_allclose(kernel.numpy(), average, rtol=1e-5, atol=1e-6)


def test_the_default_phase_2_rate_shrinks_with_fewer_training_images():
    full = recipe.FINETUNE_LR["two-phase"]
    assert recipe.default_finetune_lr("two-phase", 5000) == full
    assert recipe.default_finetune_lr("two-phase", recipe.FULL_RATE_IMAGES) == full
    assert recipe.default_finetune_lr("two-phase", 200) == pytest.approx(
        full * 200 / recipe.FULL_RATE_IMAGES)
    assert recipe.default_finetune_lr("two-phase", None) == full
    assert recipe.default_finetune_lr("lora", 200) == recipe.FINETUNE_LR["lora"]
    x, y = color_images(10, size=32, seed=5)  # 30 images
    model = visiontune.build_classifier(tiny_backbone(), 3)
    history = visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=1, verbose=0)
    assert history.phases[0]["name"] == "finetune"
    rate = model.optimizer.learning_rate  # After 1 epoch of 1 warmup epoch: the peak.
    assert float(rate) == pytest.approx(full * 30 / recipe.FULL_RATE_IMAGES, rel=1e-4)
    # A batched dataset counts in whole batches: 30 images in 4 batches of 8 are 32.
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    visiontune.fine_tune(model, batched, head_epochs=0, finetune_epochs=1, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(
        full * 32 / recipe.FULL_RATE_IMAGES, rel=1e-4)
