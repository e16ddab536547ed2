"""One worker against two on this machine: time per epoch, and the all-reduce per step.

Runs `python -m visiontune.train --distribute multiworker` on 127.0.0.1 with a
cluster of one worker, then of two, and the plain one-process Keras `fit` path
(`--distribute none --cache off`) as the baseline, on the same folder, global
batch and epochs (so the same steps), `--rounds` times in turn. For each it reports the
median over rounds of each phase's wall time divided by its epochs, from the
chief's `metrics.json` (tracing, compiling, restoring and checkpoint saves
included, as a user waits for them). Then it
times the collective alone: each worker all-reduces a float32 tensor the size
of phase 2's trainable weights (`--allreduce-floats`) `--allreduce-steps`
times inside `strategy.run`, as the loop's `apply_gradients` does, and
reports the median time per all-reduce for one and for two workers.

On a machine with 2 cores two workers share those cores, so no speed-up is
possible: this measures what distribution costs, not what it gains.

    python scripts/bench_multiworker.py            # about 8 minutes here
    python scripts/bench_multiworker.py --reuse    # print the stored results

Results go to scripts/results/multiworker.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "multiworker.json")

_ALLREDUCE = """
import json, sys, time
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
floats, steps = int(sys.argv[1]), int(sys.argv[2])
with strategy.scope():
    grad = tf.Variable(tf.ones([floats]))

@tf.function
def step():
    def replica():
        context = tf.distribute.get_replica_context()
        return context.all_reduce("SUM", grad.read_value())
    return strategy.run(replica)

step()  # Traced and warmed.
times = []
for _ in range(steps):
    began = time.perf_counter()
    float(tf.reduce_sum(strategy.experimental_local_results(step())[0]))
    times.append(time.perf_counter() - began)
print(json.dumps({"median_s": sorted(times)[len(times) // 2]}))
"""


def tests_helpers():
    """The test suite's helpers: a folder of small images, and free loopback ports."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import conftest

    return conftest


def launch(command, workers, logs):
    """Runs `command` as `workers` processes of one cluster; returns their outputs."""
    hosts = [f"127.0.0.1:{port}" for port in tests_helpers().free_ports(workers)]
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [p.communicate(timeout=1800)[0] for p in processes]
    if any(p.returncode for p in processes):
        with open(logs, "w", encoding="utf-8") as f:
            f.write("\n\n".join(outputs))
        sys.exit(f"a worker failed; its output is in {logs}")
    return outputs


def epoch_times(data, setting, args, tmp):
    """Per phase: wall seconds and epochs, from the chief's metrics.json.

    `setting` is 1 or 2 (workers of the multi-worker loop) or "fit" (one
    process, Keras fit, the same global batches, the frozen-part cache off as
    it is under multiworker).
    """
    output = os.path.join(tmp, f"run-{setting}-{time.time_ns()}")
    distribute = ["--distribute", "none", "--cache", "off"] if setting == "fit" else [
        "--distribute", "multiworker"]
    launch([sys.executable, "-m", "visiontune.train", "--data", data, "--output", output,
            "--backbone", args.backbone, "--weights", "none", "--image-size",
            str(args.image_size), "--head-epochs", str(args.epochs), "--finetune-epochs",
            str(args.epochs), "--batch-size", str(args.batch_size), "--quiet", *distribute],
           1 if setting == "fit" else setting, os.path.join(tmp, "failed.log"))
    with open(os.path.join(output, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return metrics["wall_time_s"], metrics["epochs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--allreduce-floats", type=int, default=882_883,
                        help="floats all-reduced per step (MobileNetV2's top 2 blocks and "
                             "head: phase 2's trainable weights)")
    parser.add_argument("--allreduce-steps", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="print the stored results")
    args = parser.parse_args()
    if args.reuse:
        with open(RESULTS, encoding="utf-8") as f:
            print(json.dumps(json.load(f), indent=2))
        return
    write_image_folder = tests_helpers().write_image_folder
    with tempfile.TemporaryDirectory(prefix="bench-multiworker-") as tmp:
        data = write_image_folder(os.path.join(tmp, "photos"), args.images_per_class,
                                  size=args.image_size)
        per_epoch = {"fit": [], 1: [], 2: []}
        for _ in range(args.rounds):
            for setting in per_epoch:
                walls, epochs = epoch_times(data, setting, args, tmp)
                per_epoch[setting].append({p: walls[p] / epochs[p] for p in epochs})
        allreduce = {}
        for workers in (1, 2):
            outputs = launch([sys.executable, "-c", _ALLREDUCE, str(args.allreduce_floats),
                              str(args.allreduce_steps)], workers,
                             os.path.join(tmp, "failed.log"))
            allreduce[workers] = max(json.loads(o.strip().splitlines()[-1])["median_s"]
                                     for o in outputs)
    phases = list(per_epoch[1][0])
    medians = {s: {p: statistics.median(r[p] for r in per_epoch[s]) for p in phases}
               for s in per_epoch}
    results = {
        "settings": vars(args) | {"cpus": os.cpu_count()},
        "seconds_per_epoch": {"keras fit, one process": medians["fit"],
                              "loop, 1 worker": medians[1], "loop, 2 workers": medians[2]},
        "one_worker_loop_over_fit": {p: medians[1][p] / medians["fit"][p] for p in phases},
        "two_over_one": {p: medians[2][p] / medians[1][p] for p in phases},
        "allreduce_ms_per_step": {"1 worker": allreduce[1] * 1e3,
                                  "2 workers": allreduce[2] * 1e3},
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(RESULTS + ".tmp", RESULTS)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
