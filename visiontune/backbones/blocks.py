"""How a backbone's layers group into ordered blocks, by patterns over stable layer names.

Unfreezing, bn-bias, LoRA, discriminative rates and the cache all count in these
blocks, never in layer counts (timm's `group_matcher` does the same).
"""

import dataclasses
import re

import keras

# Block patterns, one tuple per family. A layer belongs to the block named by
# the first capture group of the first pattern that matches its name. Layers
# that match nothing belong to the block of the layer before them (activations
# and paddings named `re_lu_3` or `activation_7`), or to the stem when no block
# has started yet. A group named `end` (`(?P<end>...)`) marks the layer that
# closes its block: Inception's branches have generic names (`conv2d_57`) and
# only the concatenation that ends a module is named (`mixed7`), so unnamed
# layers after a closing layer (and, in such a family, before the first named
# one) belong to the block of the next named layer instead. Unfreezing works on
# these blocks, never on layer counts.
RESNET_BLOCKS = (r"^(conv\d_block\d+)_",)  # Also DenseNet: conv4_block12_1_conv.
EFFICIENTNET_BLOCKS = (r"^(block\d+[a-z])_", r"^(top)_")
MOBILENET_BLOCKS = (r"^conv_(?:pad|dw|pw)_(\d+)",)
MOBILENET_V2_BLOCKS = (r"^(expanded_conv)_", r"^(block_\d+)_", r"^(Conv_1)(?:_|$)")
MOBILENET_V3_BLOCKS = (r"^(expanded_conv(?:_\d+)?)_", r"^(conv_1)(?:_|$)")
CONVNEXT_BLOCKS = (r"_(stage_\d+_block_\d+)_", r"_(downsampling_block_\d+)$")
XCEPTION_BLOCKS = (r"^(block(?:[2-9]|1\d))_",)  # block1 is the stem: two convolutions.
INCEPTION_V3_BLOCKS = (r"^(?P<end>mixed\d+)$",)
INCEPTION_RESNET_BLOCKS = (r"^(?P<end>mixed_\w+)$", r"^(?P<end>block\d+_\d+)_ac$",
                           r"^(block\d+_\d+)_", r"^(conv_7b)")
# A NASNet cell's layers end in its id (`_stem_1`, `_3`, `_reduce_4`); its `adjust_*`
# layers, which project the cell before last, are listed inside the previous cell,
# so they count as unnamed and stay there.
NASNET_BLOCKS = (
    r"^(?:separable_conv_\d_(?:pad_|bn_)?)?(?:normal|reduction)_.*?_(stem_\d+|reduce_\d+|\d+)$",)
FAMILY_BLOCKS = (
    RESNET_BLOCKS,
    EFFICIENTNET_BLOCKS,
    MOBILENET_BLOCKS,
    MOBILENET_V2_BLOCKS,
    MOBILENET_V3_BLOCKS,
    CONVNEXT_BLOCKS,
    XCEPTION_BLOCKS,
    INCEPTION_V3_BLOCKS,
    INCEPTION_RESNET_BLOCKS,
    NASNET_BLOCKS,
)


@dataclasses.dataclass
class Block:
    """An ordered group of backbone layers that is frozen or unfrozen as a unit."""

    name: str
    layers: list


def backbone_blocks(backbone, block_patterns=None):
    r"""Groups a backbone's layers into ordered blocks, from the stem upwards.

    Args:
        backbone: A functional `keras.Model`.
        block_patterns: Regexes whose first group (or, without a group, whose
            whole match) names a layer's block, e.g. `[r"^(stage\d)_"]`. By
            default the registered family whose patterns match the most
            layers is used; a network that matches none gets one block per
            layer that has weights.

    Returns:
        A list of `Block`s; the first is `"stem"` (it may be empty).
    """
    layers = [l for l in backbone.layers if not isinstance(l, keras.layers.InputLayer)]
    patterns = block_patterns or _detect_family(layers)
    blocks = [Block("stem", [])]
    for layer, key in _assign_blocks(layers, patterns):
        if key is None and not patterns and layer.weights:
            key = layer.name
        if key is not None and key != blocks[-1].name:
            if any(b.name == key for b in blocks):
                raise ValueError(
                    f"Layer {layer.name!r} of {backbone.name!r} belongs to block {key!r}, "
                    "which is not contiguous in layer order. Pass `block_patterns` "
                    "that group layers into contiguous blocks."
                )
            blocks.append(Block(key, []))
        blocks[-1].layers.append(layer)
    return blocks


def _assign_blocks(layers, patterns):
    """Yields `(layer, block name or None)`; None: the block of the layer before it.

    An unnamed layer after a block's closing layer (a pattern's `end` group),
    or before any named layer when the patterns use `end`, waits for the next
    named layer and takes its block.
    """
    compiled = [re.compile(p) for p in patterns]
    waiting = any("(?P<end>" in p for p in patterns)
    pending = []
    for layer in layers:
        key, closes = _match_block(layer.name, compiled)
        if key is None and waiting:
            pending.append(layer)
            continue
        for held in pending:
            yield held, key
        pending = []
        yield layer, key
        if key is not None:
            waiting = closes
    for held in pending:  # Unnamed layers after the last closing layer: its block.
        yield held, None


def _match_block(name, compiled):
    """Returns `(block name, whether the layer closes its block)`, or `(None, False)`."""
    for pattern in compiled:
        match = pattern.search(name)
        if match:
            key = match.group(1) if pattern.groups else match.group(0)
            key = f"block{key}" if key.isdigit() else key
            return key, "end" in pattern.groupindex
    return None, False


def _detect_family(layers):
    def matches(patterns):  # Layers the patterns place, directly or by a closing layer.
        return sum(key is not None for _, key in _assign_blocks(layers, patterns))

    best = max(FAMILY_BLOCKS, key=matches)
    return best if matches(best) >= len(layers) // 2 else ()
