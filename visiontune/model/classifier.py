"""Builds the classifier: raw image -> preprocessing -> backbone -> new head.

Keras 3 ignores the `training=False` given when a nested model is called in a
functional graph: `fit` injects `training=True` into every layer that takes it
(see `keras/src/models/functional.py`, `operation_fn`), so the keras.io recipe's
BatchNorm statistics drift once `base_model.trainable = True`. visiontune keeps
the backbone in inference mode by other means: its BatchNormalization layers are
never trainable (a frozen Keras 3 BatchNormalization always uses its moving
statistics), and its dropout layers (EfficientNet's drop-connect) get rate 0.

The result is a plain functional `keras.Model` made only of built-in Keras
layers, so it saves to `.keras` and reloads with `keras.saving.load_model`
without `custom_objects`. It takes raw RGB pixels in [0, 255]; the backbone's
normalisation is a layer inside it, so nobody can forget it at inference time.
"""

import keras

from visiontune.backbones import registry as backbones
from visiontune.common import checks
from visiontune.tuning import freezing

POOLING = ("avg", "max", "avgmax")
INITIALIZATIONS = ("auto", "he", "xavier")
HEAD_PREFIX = "head_"
PREPROCESS_NAME = "preprocess"


def build_classifier(
    backbone,
    num_classes,
    weights="imagenet",
    input_size=None,
    *,
    pooling="avg",
    dropout=0.2,
    hidden_units=(),
    l2=1e-4,
    l1=0.0,
    init="auto",
    multi_label=False,
    preprocessing=None,
    name=None,
    **backbone_kwargs,
):
    """Builds a transfer-learning classifier on an ImageNet backbone.

    The backbone is called with `training=False`, so its BatchNormalization
    layers stay in inference mode whatever is unfrozen later. Its dense
    ImageNet head is dropped and replaced by: global pooling, dropout,
    optional hidden ReLU layers (He-normal), and an output layer (Glorot
    uniform) that computes in float32 even under a mixed-precision policy.

    Args:
        backbone: A registry name (see `list_backbones()`) or your own
            `keras.Model` that maps images to a feature map.
        num_classes: Number of classes (outputs).
        weights: `"imagenet"`, a path to a weights file, or `None`. Ignored
            for a `keras.Model` backbone unless it is a path, which is then
            loaded into it.
        input_size: Side length or `(height, width)`; defaults to the
            backbone's training size.
        pooling: `"avg"`, `"max"`, or `"avgmax"` (both, concatenated).
        dropout: Dropout rate after pooling and after each hidden layer.
        hidden_units: Sizes of optional hidden Dense layers, e.g. `(256,)`.
        l2: L2 penalty on the head's kernels.
        l1: L1 penalty on the head's kernels.
        init: `"auto"` (He for ReLU layers, Glorot for the output), `"he"`,
            or `"xavier"` (Glorot) for all head layers.
        multi_label: Sigmoid outputs for multi-label problems instead of
            softmax.
        preprocessing: Override the normalisation, a key of
            `backbones.PREPROCESSING_MODES`. Required to be right for your
            own backbone; defaults to `"builtin"` (none) for it.
        name: Model name.
        **backbone_kwargs: Passed to the backbone constructor, e.g. `alpha`.

    Returns:
        An uncompiled functional `keras.Model` taking `(height, width, 3)`
        raw RGB images, with the backbone frozen, ready for `fine_tune`.

    Example:

    >>> model = visiontune.build_classifier("mobilenetv2", 5, weights=None,
    ...                                     input_size=96)
    >>> model.output_shape
    (None, 5)
    """
    _check_head_args(num_classes, pooling, dropout, hidden_units, l1, l2, init, multi_label)
    base, mode = _make_backbone(backbone, weights, input_size, preprocessing, backbone_kwargs)
    height, width = _input_size_of(base, input_size)

    inputs = keras.Input((height, width, 3), name="image")
    x = inputs
    normalise = backbones.preprocessing_layer(mode, name=PREPROCESS_NAME)
    if normalise is not None:
        x = normalise(x)
    x = base(x, training=False)
    outputs = _head(x, num_classes, pooling, dropout, hidden_units, l1, l2, init, multi_label)
    model = keras.Model(inputs, outputs, name=name or f"visiontune_{base.name}")
    _make_deterministic(base)
    freezing.freeze_backbone(model)
    return model


def _make_deterministic(backbone):
    """Turns off the backbone's random layers, which `training=False` cannot do in Keras 3."""
    for layer in freezing.all_layers(backbone):
        if isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianDropout,
                              keras.layers.AlphaDropout)):
            layer.rate = 0.0
        elif isinstance(layer, keras.layers.GaussianNoise):
            layer.stddev = 0.0


def _make_backbone(backbone, weights, input_size, preprocessing, backbone_kwargs):
    if isinstance(backbone, keras.Model):
        if isinstance(weights, str) and weights != "imagenet":
            backbone.load_weights(weights)
        return backbone, preprocessing or "builtin"
    spec = backbones.get_spec(backbone)
    base = backbones.create_backbone(spec, weights, input_size, **backbone_kwargs)
    return base, preprocessing or spec.preprocessing


def _input_size_of(base, input_size):
    height, width = base.input_shape[1:3]
    if height is None or width is None:
        if input_size is None:
            raise ValueError(
                f"Backbone {base.name!r} accepts any input size. "
                "Pass `input_size`, e.g. input_size=224."
            )
        return checks.normalize_size(input_size)
    return height, width


def _head(x, num_classes, pooling, dropout, hidden_units, l1, l2, init, multi_label):
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    hidden_init = "glorot_uniform" if init == "xavier" else "he_normal"
    output_init = "he_normal" if init == "he" else "glorot_uniform"

    if pooling == "avgmax":
        x = keras.layers.Concatenate(name=f"{HEAD_PREFIX}pool")([
            keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}avg_pool")(x),
            keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}max_pool")(x),
        ])
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}pool")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    for i, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=hidden_init,
                               kernel_regularizer=regularizer,
                               name=f"{HEAD_PREFIX}hidden_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}hidden_{i}_dropout")(x)
    # float32 here keeps softmax/sigmoid and the loss stable under mixed precision.
    return keras.layers.Dense(
        num_classes,
        activation="sigmoid" if multi_label else "softmax",
        kernel_initializer=output_init,
        kernel_regularizer=regularizer,
        dtype="float32",
        name=f"{HEAD_PREFIX}output",
    )(x)


def _check_head_args(num_classes, pooling, dropout, hidden_units, l1, l2, init, multi_label):
    min_classes = 1 if multi_label else 2
    if not isinstance(num_classes, int) or num_classes < min_classes:
        raise ValueError(
            f"Expected `num_classes` to be an integer >= {min_classes}"
            f"{' for multi-label' if multi_label else ''}. Received: num_classes={num_classes!r}"
        )
    if pooling not in POOLING:
        raise ValueError(f"Expected `pooling` in {POOLING}. Received: pooling={pooling!r}")
    if init not in INITIALIZATIONS:
        raise ValueError(f"Expected `init` in {INITIALIZATIONS}. Received: init={init!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected `dropout` in [0, 1). Received: dropout={dropout!r}")
    if l1 < 0 or l2 < 0:
        raise ValueError(f"Expected `l1` and `l2` >= 0. Received: l1={l1!r}, l2={l2!r}")
    if any(not isinstance(u, int) or u < 1 for u in hidden_units):
        raise ValueError(
            f"Expected `hidden_units` to be positive integers. Received: {hidden_units!r}")
