"""Uses of Keras internals, each with the reason no public API serves.

`tests/test_keras_private.py` checks each against the installed Keras, so an
upgrade that changes one fails there, by name, rather than somewhere in training.
"""

import contextlib
import json
import os

from keras.src.backend import config as _backend_config
from keras.src.utils import file_utils as _file_utils


def improves(callback):
    """`better(a, b)`: whether value `a` improves on `b` for a Keras monitor callback.

    `ModelCheckpoint` and `EarlyStopping` decide the direction in the private
    `_set_monitor_op`, from `mode` or, for `mode="auto"`, from the monitored
    metric's direction, once the model's metrics are built (at the first epoch's
    end). No public API exposes that decision; this asks for it rather than
    guessing from the metric's name.
    """
    if callback.monitor_op is None:
        callback._set_monitor_op()
    op = callback.monitor_op
    return lambda a, b: bool(op(a, b))


def set_untracked(layer, name, value):
    """Sets an attribute on a layer without Keras tracking it.

    A layer's `__setattr__` tracks what it is given: a tuple of variables would
    join the layer's weights (and, once the layer is built, is refused).
    visiontune keeps bookkeeping on layers (which variables it froze, whether
    `call` is wrapped) that must not.
    Keras has no public way to opt an attribute out of tracking.
    """
    object.__setattr__(layer, name, value)


def call_tensors(layer):
    """`(inputs, outputs)`: the tensors of `layer`'s first call in a functional graph.

    Cutting a classifier below a block (`caching.py`) needs the tensor that
    enters the block. Functional models expose a layer's `input` and `output`
    only when it was called once; the node list (`_inbound_nodes`) is the one
    way to read the call that built the graph.
    """
    node = layer._inbound_nodes[0]
    return node.input_tensors, node.output_tensors


def lora_base_kernel(layer):
    """The frozen kernel of a LoRA-enabled `Dense` or `Conv2D` (`layer._kernel`).

    With LoRA on, `layer.kernel` is the sum `_kernel + A @ B * scale`, not a
    variable; merging the adapters and backing them up need the variable itself.
    """
    return layer._kernel


def clear_initial_epoch(model):
    """Forgets the epoch that `BackupAndRestore` restored (`model._initial_epoch`).

    It sets `_initial_epoch` on restore, and Keras 3.15 never clears it, so a
    later `fit` on the same model (the next phase) would start at that epoch.
    """
    model._initial_epoch = None


# The attribute `clear_initial_epoch` resets, for proxies that must forward it.
INITIAL_EPOCH_ATTRIBUTE = "_initial_epoch"


# How many iterators `fit` draws from a `tf.data.Dataset` per epoch. Keras 3.15's
# `EpochIterator` makes one when an epoch begins and, once the epoch's batches are seen,
# another that the next epoch replaces unused. Each draw reshuffles a dataset that
# reshuffles each iteration, so a loop that must see `fit`'s batches draws as many.
FIT_ITERATORS_PER_EPOCH = 2


def backed_up_epoch(backup_dir):
    """The epoch `keras.callbacks.BackupAndRestore` will resume from, or None.

    Keras records it in `training_metadata.json` beside its backup and offers no
    way to read it before `fit` restores it; resume needs it earlier, to drop the
    logs of the epochs that will be replayed.
    """
    with open(os.path.join(backup_dir, "training_metadata.json"), encoding="utf-8") as f:
        return json.load(f)["epoch"]


def always_in_inference_mode(layer):
    """Makes `layer` (a BatchNormalization) ignore `training` and use its moving statistics.

    Keras 3 runs a trainable BatchNormalization in training mode under `fit`,
    and a functional model overrides a `training=False` given at construction.
    BitFit needs a trainable scale and offset with fixed statistics; Keras has
    no switch for that, so this replaces `call` on this instance only. It is
    not saved (see `freezing.batchnorm_frozen`); `release_inference_mode` undoes it.
    """
    call = type(layer).call

    def call_in_inference_mode(inputs, training=None, mask=None):
        return call(layer, inputs, training=False, mask=mask)

    set_untracked(layer, "call", call_in_inference_mode)


def release_inference_mode(layer):
    """Undoes `always_in_inference_mode`: the class's `call` again."""
    if "call" in vars(layer):
        object.__delattr__(layer, "call")


def keras_home():
    """Keras's cache root (`~/.keras`, or `$KERAS_HOME`), where `get_file` keeps files.

    `keras.utils.get_file` puts files under it by default, but Keras exports no
    function that returns it; `weights.py` needs it to name the file a
    download would have written.
    """
    return _backend_config.keras_home()


def file_matches_hash(path, file_hash):
    """Whether the file at `path` has the sha256 or md5 `file_hash` (`get_file`'s own check).

    Keras's `validate_file` is the check `get_file` makes before it trusts a
    cached file; using it keeps "cached and valid" meaning what it means to Keras.
    """
    return bool(_file_utils.validate_file(path, file_hash))


@contextlib.contextmanager
def replaced_get_file(make_replacement):
    """Routes `keras.applications`' weight downloads through a replacement while active.

    `keras.applications` constructors call `file_utils.get_file` through the
    module, so swapping the module's attribute is the one place to add a check
    before a download (`weights.offline_guard`); Keras has no download hook.
    `make_replacement(original)` returns the function to use; the original is
    restored on exit, also after an error.
    """
    original = _file_utils.get_file
    _file_utils.get_file = make_replacement(original)
    try:
        yield
    finally:
        _file_utils.get_file = original
