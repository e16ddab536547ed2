"""Uses of Keras internals, each with the reason no public API serves.

`tests/test_keras_private.py` checks each against the installed Keras, so an
upgrade that changes one fails there, by name, rather than somewhere in training.
"""


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
