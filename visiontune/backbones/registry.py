"""The backbone registry: one frozen entry per ImageNet CNN visiontune can fine-tune.

Each `BackboneSpec` says how to build the network (its `keras.applications`
constructor), how raw RGB pixels in [0, 255] must be normalised for it, its
default and minimum input size, the width of its pooled features, and how its
layers group into ordered blocks (patterns from `blocks.py`). Tests iterate over
`BACKBONES`, so adding a backbone is one entry here and is covered by the existing
tests.
"""

import dataclasses
import difflib
import inspect
from typing import Callable

import keras

from visiontune.backbones import lite, weights as weights_lib
from visiontune.backbones.blocks import (
    CONVNEXT_BLOCKS,
    EFFICIENTNET_BLOCKS,
    INCEPTION_RESNET_BLOCKS,
    INCEPTION_V3_BLOCKS,
    MOBILENET_BLOCKS,
    MOBILENET_V2_BLOCKS,
    MOBILENET_V3_BLOCKS,
    NASNET_BLOCKS,
    RESNET_BLOCKS,
    XCEPTION_BLOCKS,
)
from visiontune.common import checks

# How each family expects its input, given raw RGB in [0, 255]. The values are
# those of `keras.applications.<family>.preprocess_input`; tests compare them.
PREPROCESSING_MODES = {
    # ResNet v1 was trained in Caffe: BGR channel order, ImageNet mean removed.
    "caffe": "RGB to BGR, then subtract the ImageNet mean (103.939, 116.779, 123.68)",
    # ResNetV2 and MobileNet v1/v2: scale to [-1, 1].
    "tf": "scale to [-1, 1]: x / 127.5 - 1",
    # EfficientNet, EfficientNetV2 and MobileNetV3 normalise inside the network.
    "builtin": "none here: the backbone's own first layers normalise its input",
    # EfficientNet-Lite (TensorFlow's reference preprocessing for it).
    "lite": "(x - 127) / 128",
    # DenseNet was trained in PyTorch: [0, 1], then the ImageNet mean and std per channel.
    "torch": "x / 255, then subtract (0.485, 0.456, 0.406) and divide by (0.229, 0.224, 0.225)",
}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything visiontune needs to know about one backbone.

    Attributes:
        name: Registry key, e.g. `"efficientnetb0"`.
        constructor: Builds the network with the `keras.applications`
            signature (`include_top`, `weights`, `input_shape`, ...).
        preprocessing: A key of `PREPROCESSING_MODES`.
        default_size: Input side length the ImageNet weights were trained at.
        min_size: Smallest input side length the network accepts.
        feature_width: Channels of the last feature map (at default options).
        block_patterns: Regexes that group layer names into ordered blocks.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocessing: str
    default_size: int
    min_size: int
    feature_width: int
    block_patterns: tuple[str, ...]


def _entries():
    apps = keras.applications
    resnets = [
        ("resnet50", apps.ResNet50, "caffe"),
        ("resnet101", apps.ResNet101, "caffe"),
        ("resnet152", apps.ResNet152, "caffe"),
        ("resnet50v2", apps.ResNet50V2, "tf"),
        ("resnet101v2", apps.ResNet101V2, "tf"),
        ("resnet152v2", apps.ResNet152V2, "tf"),
    ]
    for name, ctor, mode in resnets:
        yield BackboneSpec(name, ctor, mode, 224, 32, 2048, RESNET_BLOCKS)

    efficientnets = [(224, 1280), (240, 1280), (260, 1408), (300, 1536),
                     (380, 1792), (456, 2048), (528, 2304), (600, 2560)]
    for i, (size, width) in enumerate(efficientnets):
        ctor = getattr(apps, f"EfficientNetB{i}")
        yield BackboneSpec(f"efficientnetb{i}", ctor, "builtin", size, 32, width,
                           EFFICIENTNET_BLOCKS)

    v2 = [("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408), ("b3", 300, 1536),
          ("s", 384, 1280), ("m", 480, 1280), ("l", 480, 1280)]
    for suffix, size, width in v2:
        ctor = getattr(apps, f"EfficientNetV2{suffix.upper()}")
        yield BackboneSpec(f"efficientnetv2{suffix}", ctor, "builtin", size, 32, width,
                           EFFICIENTNET_BLOCKS)

    for variant, spec in lite.VARIANTS.items():
        ctor = getattr(lite, f"EfficientNetLite{variant}")
        yield BackboneSpec(f"efficientnet_lite{variant}", ctor, "lite", spec.size, 32, 1280,
                           EFFICIENTNET_BLOCKS)

    yield BackboneSpec("mobilenet", apps.MobileNet, "tf", 224, 32, 1024, MOBILENET_BLOCKS)
    yield BackboneSpec("mobilenetv2", apps.MobileNetV2, "tf", 224, 32, 1280,
                       MOBILENET_V2_BLOCKS)
    yield BackboneSpec("mobilenetv3small", apps.MobileNetV3Small, "builtin", 224, 32, 576,
                       MOBILENET_V3_BLOCKS)
    yield BackboneSpec("mobilenetv3large", apps.MobileNetV3Large, "builtin", 224, 32, 960,
                       MOBILENET_V3_BLOCKS)

    # ConvNeXt normalises its input itself and uses LayerNorm, not BatchNorm.
    convnexts = [("Tiny", 768), ("Small", 768), ("Base", 1024), ("Large", 1536),
                 ("XLarge", 2048)]
    for size, width in convnexts:
        yield BackboneSpec(f"convnext{size.lower()}", getattr(apps, f"ConvNeXt{size}"),
                           "builtin", 224, 32, width, CONVNEXT_BLOCKS)

    yield BackboneSpec("xception", apps.Xception, "tf", 299, 71, 2048, XCEPTION_BLOCKS)
    yield BackboneSpec("inceptionv3", apps.InceptionV3, "tf", 299, 75, 2048,
                       INCEPTION_V3_BLOCKS)
    yield BackboneSpec("inceptionresnetv2", apps.InceptionResNetV2, "tf", 299, 75, 1536,
                       INCEPTION_RESNET_BLOCKS)
    for depth, width in ((121, 1024), (169, 1664), (201, 1920)):
        yield BackboneSpec(f"densenet{depth}", getattr(apps, f"DenseNet{depth}"), "torch",
                           224, 32, width, RESNET_BLOCKS)
    yield BackboneSpec("nasnetmobile", apps.NASNetMobile, "tf", 224, 32, 1056, NASNET_BLOCKS)


BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _entries()}


def list_backbones():
    """Returns the names of all registered backbones, sorted.

    Example:

    >>> "efficientnetb0" in visiontune.list_backbones()
    True
    """
    return sorted(BACKBONES)


def get_spec(name):
    """Returns the `BackboneSpec` registered under `name` (case-insensitive)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    for spec_name, spec in BACKBONES.items():
        if spec_name.replace("_", "") == key:
            return spec
    # A name cut short ("efficientnet_lite") means the first that extends it, in registry
    # order (Lite0); otherwise the closest spelling.
    squashed = {n.replace("_", ""): n for n in BACKBONES}
    close = [n for n in squashed if n.startswith(key)] or difflib.get_close_matches(
        key, list(squashed), n=1)
    suggestion = f" Did you mean {squashed[close[0]]!r}?" if close and key else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{suggestion} Expected one of: "
        f"{', '.join(list_backbones())}. Or pass a `keras.Model` to use your own."
    )


# Constructor arguments that visiontune sets itself, so a user cannot pass them.
# `include_preprocessing` too: the registry records where each family normalises its
# input, and switching a network's own normalisation off would feed it raw pixels.
_MANAGED_ARGS = ("include_top", "weights", "input_tensor", "input_shape", "pooling",
                 "classes", "classifier_activation", "name", "include_preprocessing")


def backbone_arguments(name):
    """Returns `{argument: default}`: what a user may pass to a backbone's constructor.

    For example `alpha` and `depth_multiplier` for MobileNet, `drop_connect_rate`
    for EfficientNet; the arguments visiontune sets itself (`include_top`,
    `weights`, `input_shape`, ...) are left out.
    """
    spec = get_spec(name)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {key: p.default for key, p in inspect.signature(spec.constructor).parameters.items()
            if p.kind in kinds and key not in _MANAGED_ARGS}


# What a value must be for an argument whose default has this type. Python counts a bool as
# an int, which a constructor argument never means; an int is a valid float.
_ACCEPTS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def check_backbone_arguments(name, arguments):
    """Returns `arguments` checked against the backbone's constructor, ints given for
    float arguments as floats (so `alpha=1` and `alpha=1.0` are one setting).

    Raises a `ValueError` naming an argument the backbone does not take, or of
    the wrong type (the type of its default; an int is also a valid float).
    """
    spec = get_spec(name)
    allowed = backbone_arguments(spec.name)
    checked = {}
    for key, value in arguments.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            raise ValueError(
                f"Unknown backbone argument {key!r} for {spec.name}."
                + (f" Did you mean {close[0]!r}?" if close else "")
                + f" It accepts: {', '.join(allowed) or 'none'}.")
        default = allowed[key]
        if default is None or default is inspect.Parameter.empty:
            checked[key] = value
            continue
        expected = type(default)
        accepts = _ACCEPTS.get(expected)
        if not (accepts(value) if accepts else isinstance(value, expected)):
            raise ValueError(
                f"Backbone argument {key!r} of {spec.name} must be {expected.__name__} "
                f"(its default is {default!r}). Received: {value!r} ({type(value).__name__}).")
        checked[key] = float(value) if expected is float else value
    return checked


def create_backbone(spec, weights="imagenet", input_size=None, **kwargs):
    """Builds a registered backbone without its ImageNet classifier.

    Args:
        spec: A `BackboneSpec` or a registry name.
        weights: `"imagenet"`, a path to a weights file, or `None` (random).
        input_size: Side length or `(height, width)`; defaults to the spec's.
        **kwargs: Passed to the constructor, e.g. `alpha=0.5` for MobileNet.

    Returns:
        A functional `keras.Model` mapping preprocessed images to feature maps.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    height, width = checks.normalize_size(input_size or spec.default_size)
    if min(height, width) < spec.min_size:
        raise ValueError(
            f"Expected an input size of at least {spec.min_size} px for {spec.name}. "
            f"Received: input_size={(height, width)}. Pass a larger `input_size`."
        )
    kwargs = check_backbone_arguments(spec.name, kwargs)
    weights = weights_lib.resolve(weights)
    with weights_lib.offline_guard(spec.name):
        return spec.constructor(include_top=False, weights=weights,
                                input_shape=(height, width, 3), **kwargs)


def preprocessing_layer(mode, name="preprocess"):
    """Returns the Keras layer that maps raw RGB [0, 255] to a family's input range.

    Only built-in layers are used, so a saved model reloads with plain
    `keras.saving.load_model`. Returns `None` for families that normalise
    inside the network.
    """
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if mode == "lite":
        return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name=name)
    if mode == "caffe":
        # A fixed 3x3 permutation with a bias is RGB->BGR then mean removal,
        # exact in float32, as one built-in layer (no Lambda, no custom class).
        layer = keras.layers.Dense(3, name=name, trainable=False)
        layer.build((None, 3))
        permutation = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
        layer.set_weights([keras.ops.convert_to_numpy(permutation),
                           keras.ops.convert_to_numpy([-m for m in _CAFFE_BGR_MEAN])])
        return layer
    if mode == "torch":
        return keras.layers.Normalization(
            mean=[255.0 * m for m in _TORCH_MEAN],
            variance=[(255.0 * s) ** 2 for s in _TORCH_STD], name=name)
    if mode == "builtin":
        return None
    raise ValueError(f"Unknown preprocessing mode {mode!r}. Expected one of "
                     f"{sorted(PREPROCESSING_MODES)}.")
