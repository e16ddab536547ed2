"""LoRA adapters on a frozen backbone, and merging them away for saving and export.

Keras 3 gives `Conv2D` and `Dense` a `layer.enable_lora(rank)`: the kernel is
frozen and a low-rank update `(alpha / rank) * A @ B` (B starts at zero) is
added to it on every call. Depthwise and separable convolutions have no such
method, so in EfficientNet, EfficientNet-Lite and MobileNet only the 1x1
(expand, project and head) convolutions and the stem can carry adapters;
`enable_lora` says so. What Keras lacks is a way back to a plain layer: a
saved LoRA layer keeps `lora_rank` in its config and rebuilds its adapters on
load. `merge_lora` therefore rebuilds the classifier without them, with the
update folded into each kernel.
"""

import dataclasses

import keras
import numpy as np

from visiontune.tuning import freezing
from visiontune.common import checks, keras_private

ELIGIBLE = (keras.layers.Conv2D, keras.layers.Dense)
# Convolutions Keras cannot adapt; named in the log so a user knows what stays frozen.
_INELIGIBLE = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


@dataclasses.dataclass(frozen=True)
class LoraReport:
    """Which backbone layers carry adapters, and which convolutions cannot."""

    rank: int
    blocks: int
    adapted: tuple
    kernel_sizes: tuple
    ineligible: int

    def __str__(self):
        sizes = ", ".join(f"{n} with {k}" for k, n in sorted(
            {k: self.kernel_sizes.count(k) for k in self.kernel_sizes}.items()))
        text = (f"LoRA rank {self.rank} on {len(self.adapted)} layers of the top "
                f"{self.blocks} backbone blocks ({sizes or 'none'} kernels)")
        if self.ineligible:
            text += (f"; {self.ineligible} depthwise/separable convolutions stay frozen, "
                     "because Keras has no LoRA for them")
        if self.adapted and set(self.kernel_sizes) == {"1x1"}:
            text += "; in this backbone only the 1x1 convolutions can take adapters"
        return text


def enable_lora(model, blocks, rank, alpha=None, block_patterns=None):
    """Adds LoRA adapters to the eligible layers of the top `blocks` backbone blocks.

    Layers that already have adapters keep them, so gradual schedules can
    widen the region stage by stage. Call `freezing.set_trainable_blocks(...,
    method="lora")` afterwards to train only the adapters and the head.

    Args:
        model: A classifier from `build_classifier`.
        blocks: Top backbone blocks to adapt, 1 to `count_blocks(model)`.
        rank: Rank of each update.
        alpha: Scale numerator: the update is `(alpha / rank) * A @ B`
            (default `rank`, Keras's default).
        block_patterns: Override the registry's block grouping.

    Returns:
        A `LoraReport`; `str(report)` is the line `fine_tune` logs.

    Example:

    >>> print(visiontune.enable_lora(model, blocks=2, rank=8))
    """
    checks.check_int(rank, "lora_rank", 1)
    freezing.check_block_count(model, blocks, block_patterns)
    region = freezing.top_block_layers(model, blocks, block_patterns)
    adapted, sizes = [], []
    for layer in region:
        if not isinstance(layer, ELIGIBLE) or isinstance(layer, _INELIGIBLE):
            continue
        if not layer.lora_enabled:
            layer.enable_lora(int(rank), lora_alpha=alpha)
        adapted.append(layer.name)
        shape = keras_private.lora_base_kernel(layer).shape
        sizes.append("x".join(str(s) for s in shape[:-2]) if len(shape) > 2 else "dense")
    ineligible = sum(isinstance(layer, _INELIGIBLE) for layer in region)
    return LoraReport(int(rank), blocks, tuple(adapted), tuple(sizes), ineligible)


def lora_layers(model):
    """Returns every layer in `model` (nested ones included) that has LoRA enabled."""
    return [layer for layer in freezing.all_layers(model) if getattr(layer, "lora_enabled", False)]


def lora_variables(model):
    """Returns the adapter variables (`lora_kernel_a` and `lora_kernel_b`) of `model`'s layers."""
    return [v for layer in lora_layers(model) for v in (layer.lora_kernel_a, layer.lora_kernel_b)]


def merge_lora(model):
    """Returns `model` as a plain model: each adapter folded into its kernel.

    The result has the classifier's architecture without `lora_rank` in any
    layer config, loads with plain Keras, and predicts what `model` predicts
    (up to float rounding). A model without adapters is returned as is.

    Example:

    >>> plain = visiontune.merge_lora(model)
    >>> plain.save("model.keras")
    """
    adapted = lora_layers(model)
    if not adapted:
        return model
    config = keras.saving.serialize_keras_object(model)
    _strip_lora(config)
    plain = keras.saving.deserialize_keras_object(config)
    merged = {id(keras_private.lora_base_kernel(layer)): _merged_kernel(layer) for layer in adapted}
    skip = {id(v) for v in lora_variables(model)}
    values = [merged.get(id(v), v) for v in model.weights if id(v) not in skip]
    plain.set_weights([np.asarray(v) for v in values])
    return plain


def _merged_kernel(layer):
    """The kernel with its update added, in float32, cast back to the kernel's dtype."""
    kernel = np.asarray(keras_private.lora_base_kernel(layer), dtype=np.float32)
    a = np.asarray(layer.lora_kernel_a, dtype=np.float32)
    b = np.asarray(layer.lora_kernel_b, dtype=np.float32)
    update = (layer.lora_alpha / layer.lora_rank) * np.matmul(a, b)
    return (kernel + update).astype(np.dtype(keras_private.lora_base_kernel(layer).dtype))


def _strip_lora(config):
    if isinstance(config, dict):
        config.pop("lora_rank", None)
        config.pop("lora_alpha", None)
        for value in config.values():
            _strip_lora(value)
    elif isinstance(config, list):
        for value in config:
            _strip_lora(value)
