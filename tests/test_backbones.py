import importlib
import os
import sys

import keras
import numpy as np
import pytest

import visiontune
from visiontune.backbones import registry as backbones
from visiontune.backbones.blocks import backbone_blocks

LARGE = {"efficientnetb5", "efficientnetb6", "efficientnetb7", "efficientnetv2s",
         "efficientnetv2m", "efficientnetv2l", "resnet152", "resnet152v2", "resnet101",
         "resnet101v2", "convnextbase", "convnextlarge", "convnextxlarge", "densenet201",
         "inceptionresnetv2"}
SPECS = [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.name in LARGE else [])
         for s in backbones.BACKBONES.values()]
_built = {}


def built(spec):
    if spec.name not in _built:
        _built[spec.name] = backbones.create_backbone(spec, weights=None,
                                                      input_size=spec.min_size)
    return _built[spec.name]


def inbound_layers(layer):
    for node in layer._inbound_nodes:
        for parent in node.parent_nodes:
            yield parent.operation


def test_list_backbones_covers_the_families():
    names = visiontune.list_backbones()
    for expected in ["resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2",
                     "resnet152v2", *[f"efficientnetb{i}" for i in range(8)],
                     "efficientnetv2b0", "efficientnetv2b3", "efficientnetv2s",
                     "efficientnetv2m", "efficientnetv2l", "mobilenet", "mobilenetv2",
                     "mobilenetv3small", "mobilenetv3large", "convnexttiny", "convnextsmall",
                     "convnextbase", "convnextlarge", "convnextxlarge", "xception",
                     "inceptionv3", "inceptionresnetv2", "densenet121", "densenet169",
                     "densenet201", "nasnetmobile"]:
        assert expected in names
    assert names == sorted(names)
    assert len(names) >= 40


@pytest.mark.parametrize("spec", SPECS)
def test_entry_builds_with_its_feature_width(spec):
    backbone = built(spec)
    assert backbone.output_shape[-1] == spec.feature_width
    assert backbone.input_shape[1:] == (spec.min_size, spec.min_size, 3)


@pytest.mark.parametrize("spec", SPECS)
def test_blocks_are_nonempty_and_in_topological_order(spec):
    backbone = built(spec)
    blocks = backbone_blocks(backbone, spec.block_patterns)
    assert len(blocks) >= 10, [b.name for b in blocks]
    assert all(block.layers for block in blocks[1:])
    # Only Inception's stem layers have generic names (conv2d_3), so they join the first
    # module; every other family has a stem of its own.
    inception = spec.block_patterns in (backbones.INCEPTION_V3_BLOCKS,
                                        backbones.INCEPTION_RESNET_BLOCKS)
    assert bool(blocks[0].layers) != inception, [l.name for l in blocks[0].layers]
    index = {id(layer): i for i, block in enumerate(blocks) for layer in block.layers}
    assert len(index) == len(backbone.layers) - 1  # every layer but the input, once
    for layer in backbone.layers:
        for parent in inbound_layers(layer):
            if id(parent) in index and id(layer) in index:
                assert index[id(parent)] <= index[id(layer)], (parent.name, layer.name)
    # Every block but the stem holds weights that can be unfrozen.
    assert all(block.layers and any(l.weights for l in block.layers) for block in blocks[1:])
    # Detection without the spec finds the same grouping (reloaded models rely on it).
    detected = backbone_blocks(backbone)
    assert [b.name for b in detected] == [b.name for b in blocks]


@pytest.mark.parametrize("spec", SPECS)
def test_preprocessing_matches_the_family_preprocess_input(spec):
    """Guards against the classic bug: the wrong preprocess_input for a family."""
    family = importlib.import_module(spec.constructor.__module__)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = family.preprocess_input(x.copy())
    layer = backbones.preprocessing_layer(spec.preprocessing)
    got = x if layer is None else keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spec", SPECS)
def test_model_input_range_is_what_the_family_expects(spec):
    """Raw [0, 255] pixels reach the first convolution in the family's range."""
    model = visiontune.build_classifier(built(spec), 2, weights=None,
                                        preprocessing=spec.preprocessing)
    backbone = visiontune.find_backbone(model)
    # The first layer that convolves: a Conv2D, or a nested model holding one (ConvNeXt's
    # stem is a Sequential of Conv2D and LayerNorm).
    first_conv = next(l for l in backbone.layers if isinstance(l, keras.layers.Conv2D) or (
        isinstance(l, keras.Model) and isinstance(l.layers[0], keras.layers.Conv2D)))
    probe = keras.Model(backbone.input, first_conv.input)
    pre = model.get_layer("preprocess") if spec.preprocessing != "builtin" else None
    side = spec.min_size
    x = np.stack([np.zeros((side, side, 3)), np.full((side, side, 3), 255.0)]).astype("float32")
    seen = keras.ops.convert_to_numpy(probe(pre(x) if pre else x))
    # EfficientNet's built-in Normalization holds ImageNet statistics only once
    # ImageNet weights are loaded; with weights=None it passes [0, 1] through.
    low, high, min_span = {"caffe": (-124, 152, 250), "tf": (-1, 1, 1.99),
                           "builtin": (-2.2, 2.7, 0.99), "lite": (-1, 1, 1.99),
                           "torch": (-2.2, 2.7, 4.5)}[spec.preprocessing]
    assert seen.min() >= low - 1e-3 and seen.max() <= high + 1e-3
    assert seen.max() - seen.min() >= min_span  # black and white stay apart


def test_unknown_backbone_lists_the_names():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet5'.*resnet50"):
        backbones.get_spec("resnet5")


def test_names_are_case_and_separator_insensitive():
    assert backbones.get_spec("EfficientNet-B0").name == "efficientnetb0"


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 32 px for resnet50"):
        backbones.create_backbone("resnet50", weights=None, input_size=16)


def test_mobilenet_alpha_passes_through():
    model = visiontune.build_classifier("mobilenet", 3, weights=None, input_size=32, alpha=0.5)
    assert visiontune.find_backbone(model).output_shape[-1] == 512


def test_unknown_layout_falls_back_to_one_block_per_weighted_layer():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    x = keras.layers.ReLU(name="a_act")(x)
    x = keras.layers.Conv2D(4, 3, name="b")(x)
    blocks = backbone_blocks(keras.Model(inputs, x))
    assert [(b.name, [l.name for l in b.layers]) for b in blocks] == [
        ("stem", []), ("a", ["a", "a_act"]), ("b", ["b"])]


def test_a_closing_layer_takes_the_unnamed_layers_before_it():
    """Inception's rule: generic names belong to the module whose concatenation ends them."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.ReLU(name="mix0")(x)
    x = keras.layers.Conv2D(4, 1, name="c3")(x)
    x = keras.layers.ReLU(name="mix1")(x)
    x = keras.layers.Conv2D(4, 1, name="c4")(x)  # After the last closing layer: its block.
    blocks = backbone_blocks(keras.Model(inputs, x), (r"^(?P<end>mix\d)$",))
    assert [(b.name, [l.name for l in b.layers]) for b in blocks] == [
        ("stem", []), ("mix0", ["c1", "c2", "mix0"]), ("mix1", ["c3", "mix1", "c4"])]
    # Without the `end` group, unnamed layers join the block before them.
    blocks = backbone_blocks(keras.Model(inputs, x), (r"^(mix\d)$",))
    assert [(b.name, [l.name for l in b.layers]) for b in blocks] == [
        ("stem", ["c1", "c2"]), ("mix0", ["mix0", "c3"]), ("mix1", ["mix1", "c4"])]


def test_readme_backbone_table_is_the_registry():
    """The README's table is generated (scripts/readme_backbones.py), never typed by hand."""
    scripts = os.path.join(os.path.dirname(__file__), "..", "scripts")
    sys.path.insert(0, scripts)
    try:
        import readme_backbones
    finally:
        sys.path.remove(scripts)
    with open(readme_backbones.README, encoding="utf-8") as f:
        text = f.read()
    assert readme_backbones.with_table(text) == text, (
        "README.md's backbone table is out of date: run python scripts/readme_backbones.py")
    for name in visiontune.list_backbones():
        assert f"| `{name}` |" in text
