import keras
import numpy as np
import pytest

import visiontune
from visiontune.backbones.blocks import backbone_blocks
from conftest import color_images, tiny_backbone


def snapshot(layers):
    return {(l.name, w.path): w.numpy().copy() for l in layers for w in l.weights}


def changed(before, after):
    return {key for key in before if not np.array_equal(before[key], after[key])}


@pytest.fixture()
def model():
    return visiontune.build_classifier("mobilenetv2", 3, weights=None, input_size=32, alpha=0.35)


def test_build_classifier_returns_a_frozen_backbone(model):
    backbone = visiontune.find_backbone(model)
    assert not backbone.trainable_weights
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"head_output"}


def test_phase_weights_change_only_where_unfrozen(model):
    """After phase 1 no backbone weight changed; after phase 2 only the top blocks
    and the head did, and no BatchNorm moving statistic moved at all."""
    x, y = color_images(16, size=32)
    backbone = visiontune.find_backbone(model)
    start = snapshot(backbone.layers)
    visiontune.fine_tune(model, (x, y), head_epochs=2, finetune_epochs=0, verbose=0)
    assert not changed(start, snapshot(backbone.layers))

    head_before = snapshot(visiontune.tuning.freezing.head_layers(model))
    visiontune.fine_tune(model, (x, y), head_epochs=0, finetune_epochs=2, finetune_lr=1e-2,
                         unfreeze_blocks=2, verbose=0)
    moved = changed(start, snapshot(backbone.layers))
    top = {l.name for b in backbone_blocks(backbone)[-2:] for l in b.layers
           if not isinstance(l, keras.layers.BatchNormalization)}
    assert moved and {name for name, _ in moved} <= top
    assert {name for name, _ in moved} == {l for l in top
                                           if backbone.get_layer(l).trainable_weights}
    assert changed(head_before, snapshot(visiontune.tuning.freezing.head_layers(model)))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.moving_mean.numpy(),
                                          start[(layer.name, layer.moving_mean.path)])
            np.testing.assert_array_equal(layer.moving_variance.numpy(),
                                          start[(layer.name, layer.moving_variance.path)])


def test_unfreeze_counts_blocks_from_the_top_and_keeps_batchnorm_frozen(model):
    backbone = visiontune.find_backbone(model)
    blocks = backbone_blocks(backbone)
    visiontune.unfreeze_top_blocks(model, 3)
    for i, block in enumerate(reversed(blocks)):
        for layer in block.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert not layer.trainable
            elif layer.weights:
                assert layer.trainable == (i < 3), layer.name
    assert not model.get_layer("preprocess").trainable
    visiontune.freeze_backbone(model)
    assert not backbone.trainable_weights


def test_unfreezing_everything_includes_the_stem(model):
    n = visiontune.count_blocks(model)
    visiontune.unfreeze_top_blocks(model, n)
    backbone = visiontune.find_backbone(model)
    bn = [w for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)
          for w in l.weights]
    trainable = {id(w) for w in backbone.trainable_weights}
    assert all(id(w) in trainable for l in backbone.layers
               if not isinstance(l, keras.layers.BatchNormalization) for w in l.weights)
    assert not any(id(w) in trainable for w in bn)


@pytest.mark.parametrize("n", [-1, 20, 2.5, True])
def test_bad_block_counts_are_clear_errors(model, n):
    with pytest.raises(ValueError, match=r"Expected `unfreeze_blocks` between 0 and 19 "
                                         r"for mobilenetv2.*Received: unfreeze_blocks="):
        visiontune.unfreeze_top_blocks(model, n)


def test_trainable_summary_counts_per_block_and_total(model):
    visiontune.unfreeze_top_blocks(model, 2)
    summary = visiontune.trainable_summary(model)
    names = [row.name for row in summary.rows]
    assert names[0] == "stem" and names[-3:] == ["block_16", "Conv_1", "head"]
    assert summary.trainable_params == sum(int(np.prod(w.shape))
                                           for w in model.trainable_weights)
    assert summary.trainable_params + summary.frozen_params == model.count_params()
    assert all(row.trainable == 0 for row in summary.rows[:-3])
    assert "total" in str(summary) and "Conv_1" in str(summary)


def test_find_backbone_rejects_models_without_one():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="exactly one nested backbone"):
        visiontune.find_backbone(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_block_patterns_with_or_without_a_group_name_the_blocks():
    model = visiontune.build_classifier(tiny_backbone(), 3, None)
    for patterns in ([r"^(block\d)a_"], [r"block1", r"block2", r"block3"]):
        assert visiontune.count_blocks(model, block_patterns=patterns) == 4  # With the stem.
        visiontune.unfreeze_top_blocks(model, 1, block_patterns=patterns)
        trainable = {l.name for l in visiontune.find_backbone(model).layers
                     if l.trainable and l.weights}
        assert trainable == {"block3a_conv"}  # Its BatchNorm stays frozen.
        visiontune.freeze_backbone(model)
