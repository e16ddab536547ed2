"""Which `tf.distribute` strategy a run uses, and which process writes its files.

The classifier is built and compiled inside the strategy's scope. On one
machine Keras's `fit` does the rest (it splits each global batch over the
replicas and sums the gradients); across machines, where `fit` fails
(keras-team/keras#20585), `worker_loop.py` trains instead. What is here:
choosing the strategy from `--distribute`, finding the cluster (`TF_CONFIG`,
or Slurm's variables under `srun`), and deciding who is the chief. See
docs/distributed.md.
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
        resolver = cluster_resolver()
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        return strategy, describe_cluster(strategy)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(f"--distribute tpu: no TPU found from this machine ({error}). "
                         "Run on a TPU VM, or use --distribute none|mirrored.") from None
    strategy = tf.distribute.TPUStrategy(resolver)
    return strategy, f"TPUStrategy over {strategy.num_replicas_in_sync} TPU cores"


def cluster_resolver():
    """The cluster this process belongs to: from `TF_CONFIG`, else from Slurm.

    Under `srun` without `TF_CONFIG`, TensorFlow's `SlurmClusterResolver` reads
    the job step's hosts and this task's rank from Slurm's variables: one
    worker per task, at port 8888 (upward when a node runs several tasks).
    """
    if os.environ.get("TF_CONFIG"):
        _tf_config()  # A clear error for a malformed one.
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if os.environ.get("SLURM_PROCID") is not None and os.environ.get("SLURM_STEP_NODELIST"):
        try:
            # One task per node, which uses every GPU of its node. Left to itself the
            # resolver would ask nvidia-smi, which a CPU node lacks, and then divide the
            # node's GPUs among its tasks, failing with none.
            slots = max(len(tf.config.list_physical_devices("GPU")), 1)
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
                gpus_per_node=slots, gpus_per_task=slots, auto_set_gpu=False)
            resolver.cluster_spec()  # Sets this task's type and index.
            return resolver
        except (RuntimeError, ValueError, OSError) as error:
            raise ValueError(f"--distribute multiworker under Slurm: cannot read the cluster "
                             f"from Slurm's variables ({error}). Run the command through "
                             "srun, or set TF_CONFIG. See docs/distributed.md.") from None
    return _tf_config()  # Raises: neither is set.


def task_of(strategy=None):
    """`(task type, task index, is chief)` of this process; ("worker", 0, True) alone.

    The chief is the `chief` task when the cluster has one, else worker 0.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None:
        task_type, index = resolver.task_type, int(resolver.task_id or 0)
        jobs = resolver.cluster_spec().as_dict()
    else:
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            return "worker", 0, True
        config = json.loads(raw)
        task = config.get("task", {})
        task_type, index = task.get("type", "worker"), int(task.get("index", 0))
        jobs = config.get("cluster", {})
    if "chief" in jobs:
        return task_type, index, task_type == "chief"
    return task_type, index, task_type == "worker" and index == 0


def is_chief(strategy=None):
    """True unless this process is a worker other than the chief (see `task_of`)."""
    return task_of(strategy)[2]


def is_multiworker(strategy):
    """Whether `strategy` spans several processes (and so trains without `fit`)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def describe_cluster(strategy):
    """One line for the log: the cluster, this task, and the chief."""
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    hosts = [f"{job} {i}: {address}" for job in ("chief", "worker")
             for i, address in enumerate(jobs.get(job, []))]
    task_type, index, chief = task_of(strategy)
    chief_name = "chief 0" if "chief" in jobs else "worker 0"
    return (f"MultiWorkerMirroredStrategy ({type(resolver).__name__}): "
            f"{len(hosts)} workers, {strategy.num_replicas_in_sync} replicas "
            f"[{'; '.join(hosts)}]; this is {task_type} {index}"
            + (" (the chief)" if chief else f"; the chief is {chief_name}")
            + "; trained by visiontune's worker loop, since Keras's fit fails here "
              "(keras-team/keras#20585)")


def scope(strategy):
    """The strategy's scope, or a no-op without one."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def local_replicas(strategy):
    """Replicas on this worker: 1 without a strategy."""
    if strategy is None:
        return 1
    return len(strategy.extended.worker_devices)


def replicas(strategy):
    """Replicas in sync: 1 without a strategy."""
    return strategy.num_replicas_in_sync if strategy is not None else 1


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--distribute multiworker needs the cluster: run it through "
                         "Slurm's srun, or set the TF_CONFIG environment variable, e.g. "
                         "TF_CONFIG='{\"cluster\": {\"worker\": "
                         "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": "
                         "\"worker\", \"index\": 0}}'. See docs/distributed.md.")
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG is not a cluster spec with 'cluster' and 'task' "
                         f"('type', 'index'): {raw!r}. See docs/distributed.md.") from None
    return config
