"""Which `tf.distribute` strategy a run uses, and which process writes its files.

visiontune adds nothing to TensorFlow's engine: the classifier is built and
compiled inside the strategy's scope, and Keras's `fit` does the rest (it
splits each global batch over the replicas and sums the gradients). What is
here: choosing the strategy from `--distribute`, reading the cluster from
`TF_CONFIG`, deciding who is the chief, and turning the known failures into
errors that say what to do. See docs/distributed.md.
"""

import contextlib
import json
import os

import tensorflow as tf

STRATEGIES = ("none", "auto", "mirrored", "multiworker", "tpu")


def make_strategy(name):
    """Returns `(strategy or None, description)` for a `--distribute` value.

    `"auto"` is `mirrored` when more than one GPU is visible, else none;
    `"mirrored"` uses every visible GPU (or the CPU); `"multiworker"` reads
    the cluster from `TF_CONFIG`; `"tpu"` connects to the local TPU VM.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Expected --distribute in {STRATEGIES}. Received: {name!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return None, "one device (no tf.distribute strategy)"
    if name in ("auto", "mirrored"):
        strategy = tf.distribute.MirroredStrategy()
        devices = ", ".join(strategy.extended.worker_devices)
        return strategy, (f"MirroredStrategy over {strategy.num_replicas_in_sync} "
                          f"devices ({devices})")
    if name == "multiworker":
        cluster = _tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = sum(len(v) for k, v in cluster["cluster"].items() if k in ("chief", "worker"))
        task = cluster["task"]
        return strategy, (f"MultiWorkerMirroredStrategy: {workers} workers, "
                          f"{strategy.num_replicas_in_sync} replicas; this is "
                          f"{task['type']} {task['index']}"
                          + (" (chief)" if is_chief() else "")
                          + "; input auto-sharded by tf.data (by file where the pipeline "
                            "reads files, else by data)")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(f"--distribute tpu: no TPU found from this machine ({error}). "
                         "Run on a TPU VM, or use --distribute none|mirrored.") from None
    strategy = tf.distribute.TPUStrategy(resolver)
    return strategy, f"TPUStrategy over {strategy.num_replicas_in_sync} TPU cores"


def is_chief():
    """True unless `TF_CONFIG` names this process a worker other than the chief.

    The chief is the `chief` task when the cluster has one, else worker 0.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    config = json.loads(raw)
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def scope(strategy):
    """The strategy's scope, or a no-op without one."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy):
    """Replicas in sync: 1 without a strategy."""
    return strategy.num_replicas_in_sync if strategy is not None else 1


@contextlib.contextmanager
def known_failures(strategy):
    """Turns Keras's known `MultiWorkerMirroredStrategy` failure into a clear error.

    Keras 3 (checked up to 3.15.1 with TensorFlow 2.21) fails in `fit` under
    `MultiWorkerMirroredStrategy` with "Attempt to convert a value (PerReplica
    ...)": its symbolic build reduces a distributed batch eagerly, which the
    collective strategy cannot do (keras-team/keras#20585, open). The message
    says so instead of leaving a user with a PerReplica traceback.
    """
    try:
        yield
    except ValueError as error:
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and "PerReplica" in str(error)):
            raise ValueError(
                "--distribute multiworker: Keras's fit failed under "
                "MultiWorkerMirroredStrategy with a known Keras 3 bug "
                "(https://github.com/keras-team/keras/issues/20585: 'Attempt to convert a "
                "value (PerReplica ...)'). Until a Keras release fixes it, train on one "
                "machine with --distribute mirrored. See docs/distributed.md.") from error
        raise


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--distribute multiworker needs the cluster in the TF_CONFIG "
                         "environment variable, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
                         "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": "
                         "\"worker\", \"index\": 0}}'. See docs/distributed.md.")
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG is not a cluster spec with 'cluster' and 'task' "
                         f"('type', 'index'): {raw!r}. See docs/distributed.md.") from None
    return config
