"""What trains: freeze the backbone, unfreeze its top blocks, report the result.

BatchNormalization layers stay frozen in every phase, which in Keras 3 also
means inference mode: they normalise with their moving statistics, and those
never change. On a few hundred images, batch statistics would wreck features
learned on a million. (`training=False` alone does not ensure this in Keras 3;
see `classifier.py`.) The bn-bias method trains their scale and offset, and
keeps them in inference mode by other means: see `_keep_in_inference_mode`.
"""

import contextlib
import dataclasses

import keras
import numpy as np

from visiontune.backbones.blocks import backbone_blocks
from visiontune.common import checks, keras_private


def find_backbone(model):
    """Returns the backbone: the one nested `keras.Model` inside a classifier."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            f"Expected a classifier with exactly one nested backbone model, as made by "
            f"`build_classifier`. Model {model.name!r} has {len(nested)}: "
            f"{[layer.name for layer in nested]}."
        )
    return nested[0]


def head_layers(model):
    """Returns the layers after the backbone: pooling, dropout, hidden and output."""
    index = model.layers.index(find_backbone(model))
    return model.layers[index + 1:]


def freeze_backbone(model):
    """Freezes the whole backbone and makes the head trainable.

    Example:

    >>> visiontune.freeze_backbone(model)
    >>> model.fit(train, epochs=5)  # trains the head only
    """
    set_trainable_blocks(model, 0)


def unfreeze_top_blocks(model, n, block_patterns=None):
    """Makes the top `n` backbone blocks and the head trainable.

    Blocks are counted from the top (`"top"`, `"block7a"`, ...); the stem is
    the last block, so `n == count_blocks(model)` unfreezes everything.
    BatchNormalization layers stay frozen.

    Args:
        model: A classifier from `build_classifier`.
        n: Number of blocks to unfreeze, from 0 to `count_blocks(model)`.
        block_patterns: Override the registry's block grouping (regexes).

    Example:

    >>> visiontune.unfreeze_top_blocks(model, 2)
    >>> model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    """
    set_trainable_blocks(model, n, block_patterns)


def count_blocks(model, block_patterns=None):
    """Returns how many blocks `unfreeze_top_blocks` can unfreeze in `model`."""
    return len(_blocks(find_backbone(model), block_patterns))


def check_block_count(model, n, block_patterns=None):
    """Raises a clear error unless `0 <= n <= count_blocks(model)`."""
    backbone = find_backbone(model)
    total = len(_blocks(backbone, block_patterns))
    checks.check_int(n, "unfreeze_blocks", 0, total, where=f" for {backbone.name}")


METHODS = ("two-phase", "bn-bias", "lora")


def set_trainable_blocks(model, n, block_patterns=None, method="two-phase"):
    """Freezes all but the top `n` backbone blocks; the head is always trainable.

    Args:
        model: A classifier from `build_classifier`.
        n: Top blocks that train.
        block_patterns: Override the registry's block grouping.
        method: What trains in those blocks. `"two-phase"`: every weight but
            BatchNorm's. `"bn-bias"` (BitFit): only the BatchNorm scales and
            offsets and the biases, with BatchNorm still in inference mode
            (in ConvNeXt, which has no BatchNorm: the LayerNorm scales and
            offsets and the biases).
            `"lora"`: only the LoRA adapters that `adapters.enable_lora` added.
    """
    if method not in METHODS:
        raise ValueError(f"Expected `method` in {METHODS}. Received: {method!r}")
    check_block_count(model, n, block_patterns)
    backbone = find_backbone(model)
    blocks = _blocks(backbone, block_patterns)
    model.trainable = True
    for layer in model.layers[: model.layers.index(backbone)]:
        layer.trainable = False  # The input normalisation is fixed.
    for layer in all_layers(backbone):
        for variable in getattr(layer, "_visiontune_frozen", ()):
            variable.trainable = True  # Undo an earlier bn-bias or lora phase.
        _set_untracked(layer, "_visiontune_frozen", ())
    backbone.trainable = n > 0
    for i, block in enumerate(reversed(blocks)):
        for layer in block.layers:
            layer.trainable = i < n
    top = {id(layer) for layer in top_block_layers(model, n, block_patterns)}
    for layer in all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = method == "bn-bias" and id(layer) in top
            if layer.trainable:
                _keep_in_inference_mode(layer)
            else:
                _release_inference_mode(layer)
        elif method != "two-phase" and id(layer) in top and not getattr(layer, "layers", None):
            # Leaves only: a nested model's weights are its layers' (ConvNeXt's downsampling
            # blocks are Sequentials), which `top` also holds.
            keep = ([getattr(layer, "bias", None), *_layer_norm_scale_offset(layer)]
                    if method == "bn-bias" else
                    [getattr(layer, "lora_kernel_a", None), getattr(layer, "lora_kernel_b", None)])
            frozen = [v for v in layer.trainable_weights if not any(v is k for k in keep)]
            for variable in frozen:
                variable.trainable = False
            _set_untracked(layer, "_visiontune_frozen", tuple(frozen))
    for layer in head_layers(model):
        layer.trainable = True


def _layer_norm_scale_offset(layer):
    """A LayerNormalization's scale and offset (ConvNeXt's normalisation): what bn-bias
    trains in place of BatchNorm's. LayerNorm has no moving statistics to keep fixed."""
    if isinstance(layer, keras.layers.LayerNormalization):
        return [v for v in (layer.gamma, layer.beta) if v is not None]
    return []


def top_block_layers(model, n, block_patterns=None):
    """Returns the layers of the top `n` backbone blocks, each nested model followed by
    the layers inside it (ConvNeXt's downsampling blocks are Sequentials)."""
    blocks = _blocks(find_backbone(model), block_patterns)
    return [each for block in blocks[len(blocks) - n:] for layer in block.layers
            for each in (layer, *all_layers(layer))]


def _keep_in_inference_mode(layer):
    """Makes a trainable BatchNormalization normalise with its moving statistics.

    Keras 3 runs a trainable BatchNormalization in training mode under `fit`
    (batch statistics, moving averages updated), and the functional model
    overrides a `training=False` given at construction. BitFit needs the
    opposite: learn the scale and offset, keep the statistics. Keras has no
    switch for that, so the layer's own `call` is wrapped, on this instance
    only, to always pass `training=False` (`keras_private.always_in_inference_mode`).
    The wrapper is not saved, so `export.saving.save_model` (which the CLI uses) saves
    BatchNorm frozen (`batchnorm_frozen`); save a bn-bias model from your own
    code inside `batchnorm_frozen(model)`, or through `visiontune.save_model`.
    """
    if getattr(layer, "_visiontune_inference_only", False):
        return
    keras_private.always_in_inference_mode(layer)
    _set_untracked(layer, "_visiontune_inference_only", True)


def _release_inference_mode(layer):
    """Undoes `_keep_in_inference_mode`: the layer's class `call` again."""
    if getattr(layer, "_visiontune_inference_only", False):
        keras_private.release_inference_mode(layer)
        _set_untracked(layer, "_visiontune_inference_only", False)


@contextlib.contextmanager
def batchnorm_frozen(model):
    """Within it, every BatchNormalization in `model` is frozen, as a saved model must be.

    A bn-bias model keeps its trainable BatchNorm layers in inference mode with
    an instance wrapper (`_keep_in_inference_mode`) that is not saved. Saved as
    trainable, they would train in batch-statistics mode once reloaded into
    plain Keras and overwrite their moving statistics. Frozen, a Keras 3
    BatchNormalization always normalises with them.
    """
    trainable = [layer for layer in all_layers(model)
                 if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    for layer in trainable:
        layer.trainable = False
    try:
        yield model
    finally:
        for layer in trainable:
            layer.trainable = True


_set_untracked = keras_private.set_untracked


@dataclasses.dataclass(frozen=True)
class BlockParams:
    """Trainable and frozen parameter counts of one block."""

    name: str
    trainable: int
    frozen: int


class TrainableSummary:
    """Trainable and frozen parameters per block, and in total.

    `str(summary)` is a table; `summary.trainable_params` the total.
    """

    def __init__(self, rows):
        self.rows = rows

    @property
    def trainable_params(self):
        return sum(row.trainable for row in self.rows)

    @property
    def frozen_params(self):
        return sum(row.frozen for row in self.rows)

    def __str__(self):
        width = max(len(row.name) for row in self.rows)
        lines = [f"{'block':<{width}}  {'trainable':>12}  {'frozen':>12}"]
        lines += [f"{row.name:<{width}}  {row.trainable:>12,}  {row.frozen:>12,}"
                  for row in self.rows]
        lines.append(f"{'total':<{width}}  {self.trainable_params:>12,}  "
                     f"{self.frozen_params:>12,}")
        return "\n".join(lines)


def trainable_summary(model, block_patterns=None):
    """Returns a `TrainableSummary` of `model`'s backbone blocks and head.

    Example:

    >>> print(visiontune.trainable_summary(model))
    """
    backbone = find_backbone(model)
    rows = [_count(block.name, block.layers, backbone.trainable)
            for block in _blocks(backbone, block_patterns)]
    rows.append(_count("head", head_layers(model), True))
    return TrainableSummary(rows)


def _count(name, layers, parent_trainable):
    trainable = {id(w): w for l in layers for w in l.trainable_weights} if parent_trainable else {}
    every = {id(w): w for l in layers for w in l.weights}
    size = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
    return BlockParams(name, size(trainable.values()),
                       size(w for k, w in every.items() if k not in trainable))


def _blocks(backbone, block_patterns):
    blocks = backbone_blocks(backbone, block_patterns)
    return blocks if blocks[0].layers else blocks[1:]


def all_layers(layer):
    """Yields every layer nested in `layer`, depth first."""
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from all_layers(sub)
