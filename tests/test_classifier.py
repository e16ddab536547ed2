import keras
import numpy as np
import pytest

import visiontune
from conftest import tiny_backbone


def small(**kwargs):
    return visiontune.build_classifier("mobilenetv2", kwargs.pop("num_classes", 4), weights=None,
                                       input_size=32, alpha=0.35, **kwargs)


def test_structure_is_input_preprocessing_backbone_head():
    model = small(hidden_units=(16,))
    names = [layer.name for layer in model.layers]
    backbone = visiontune.find_backbone(model)
    assert names[:3] == ["image", "preprocess", backbone.name]
    assert names[3:] == ["head_pool", "head_dropout", "head_hidden_1",
                         "head_hidden_1_dropout", "head_output"]
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 4)


@pytest.mark.parametrize("unfreeze", [0, 3, 18])
def test_backbone_runs_in_inference_mode_even_when_fit_says_training(unfreeze):
    """Keras 3 passes training=True into nested models during fit. BatchNorm must
    still use its moving statistics and EfficientNet's drop-connect must stay off."""
    model = visiontune.build_classifier("efficientnetb0", 3, weights=None, input_size=32)
    visiontune.unfreeze_top_blocks(model, unfreeze)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    features = keras.Model(model.input, model.get_layer("head_pool").output)
    np.testing.assert_allclose(features(x, training=True), features(x, training=False),
                               rtol=1e-6, atol=1e-6)


def test_hidden_layers_use_he_normal_and_output_glorot_uniform():
    model = visiontune.build_classifier(tiny_backbone(), 10, hidden_units=(2048, 512),
                                        input_size=32)
    hidden = model.get_layer("head_hidden_2").kernel.numpy()
    fan_in = hidden.shape[0]
    assert abs(hidden.std() / np.sqrt(2.0 / fan_in) - 1) < 0.15
    assert abs(hidden.mean()) < 0.1 * np.sqrt(2.0 / fan_in)
    output = model.get_layer("head_output").kernel.numpy()
    limit = np.sqrt(6.0 / sum(output.shape))
    assert np.abs(output).max() <= limit
    assert abs(output.var() / (limit**2 / 3) - 1) < 0.15


@pytest.mark.parametrize("init, hidden_name, output_name", [
    ("he", "HeNormal", "HeNormal"), ("xavier", "GlorotUniform", "GlorotUniform"),
    ("auto", "HeNormal", "GlorotUniform")])
def test_initialisation_can_be_chosen(init, hidden_name, output_name):
    model = visiontune.build_classifier(tiny_backbone(), 3, hidden_units=(8,), init=init)
    hidden = model.get_layer("head_hidden_1").kernel_initializer
    output = model.get_layer("head_output").kernel_initializer
    assert type(hidden).__name__ == hidden_name and type(output).__name__ == output_name


def test_regularisation_applies_to_head_kernels():
    model = visiontune.build_classifier(tiny_backbone(), 3, hidden_units=(8,), l2=0.01, l1=0.001)
    for name in ("head_hidden_1", "head_output"):
        reg = model.get_layer(name).kernel_regularizer
        assert reg.get_config() == {"l1": pytest.approx(0.001), "l2": pytest.approx(0.01)}
    model(np.zeros((1, 32, 32, 3)))
    assert len(model.losses) == 2 and all(float(loss) > 0 for loss in model.losses)


@pytest.mark.parametrize("pooling, width", [("avg", 32), ("max", 32), ("avgmax", 64)])
def test_pooling_options(pooling, width):
    model = visiontune.build_classifier(tiny_backbone(), 3, pooling=pooling)
    assert model.get_layer("head_dropout").output.shape[-1] == width


def test_multi_label_uses_sigmoid():
    model = visiontune.build_classifier(tiny_backbone(), 5, multi_label=True)
    out = model(np.random.uniform(0, 255, (3, 32, 32, 3)).astype("float32"))
    assert model.get_layer("head_output").get_config()["activation"] == "sigmoid"
    assert not np.allclose(np.sum(out, axis=1), 1.0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_output_stays_float32_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    model = small()
    output_layer = model.get_layer("head_output")
    assert output_layer.compute_dtype == "float32"
    assert visiontune.find_backbone(model).layers[2].compute_dtype != "float32"
    out = model(np.random.uniform(0, 255, (2, 32, 32, 3)).astype("float32"))
    assert out.dtype == "float32"
    np.testing.assert_allclose(np.sum(out, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes"), ({"pooling": "mean"}, "pooling"),
    ({"init": "lecun"}, "init"), ({"dropout": 1.0}, "dropout"), ({"l2": -1.0}, "l2"),
    ({"hidden_units": (0,)}, "hidden_units")])
def test_bad_head_arguments_are_clear_errors(kwargs, message):
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        visiontune.build_classifier(tiny_backbone(), args.pop("num_classes"), **args)


def test_keras_round_trip_gives_identical_predictions(tmp_path):
    model = visiontune.build_classifier("resnet50", 3, weights=None, input_size=32,
                                        hidden_units=(8,))
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("preprocess").trainable is False


def test_own_backbone_without_fixed_size_needs_input_size():
    inputs = keras.Input((None, None, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="input_size"):
        visiontune.build_classifier(backbone, 3)
    model = visiontune.build_classifier(backbone, 3, input_size=(24, 40))
    assert model.input_shape == (None, 24, 40, 3)


def test_weights_path_loads_into_the_backbone(tmp_path):
    source = visiontune.build_classifier("mobilenet", 3, weights=None, input_size=32,
                                         alpha=0.25)
    path = str(tmp_path / "backbone.weights.h5")
    visiontune.find_backbone(source).save_weights(path)
    model = visiontune.build_classifier("mobilenet", 3, weights=path, input_size=32, alpha=0.25)
    for a, b in zip(visiontune.find_backbone(source).weights,
                    visiontune.find_backbone(model).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
