"""visiontune against the plain Keras recipe: wall time, throughput, memory, accuracy.

In one process, on the same files, split, model, epochs and learning rates:

- `baseline`: the keras.io transfer-learning recipe written out by hand
  (tf.data from the file lists, frozen base called with training=False,
  GlobalAveragePooling2D, Dropout, Dense; fit; unfreeze the top blocks; fit).
  Its one change from keras.io: BatchNormalization layers stay frozen, as
  keras.io intends, because Keras 3 ignores `training=False` on a nested model
  during `fit` (see `visiontune/classifier.py`).
- `visiontune`: `build_classifier` + `fine_tune(cache="auto")`, the default.
- `visiontune-nocache`: the same with `cache="off"`.

For each it reports wall time per phase (phase 1 includes visiontune's feature
caching), the ratio to the baseline, the median per-epoch training throughput
(training images / median epoch time), input-pipeline images/s (median over
`--repeats` passes), the peak resident memory while it ran, and the final
validation accuracy. Variants run in turn `--repeats-runs` times and each time
is the median over those runs.

    python scripts/bench.py --data ../shared/datasets/flowers-mini
    python scripts/bench.py --backbone resnet50 --weights none --image-size 128
"""

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import visiontune  # noqa: E402
from visiontune.backbones import registry as backbones  # noqa: E402
from visiontune.backbones.blocks import backbone_blocks  # noqa: E402
from visiontune.common import checks  # noqa: E402
from visiontune.data import sources as data


class PeakMemory:
    """Samples this process's resident memory (VmRSS) every 50 ms; `peak` is the maximum."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _rss():
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) * 1024


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.began)


# ---------------------------------------------------------------- the baseline, by hand
def baseline_dataset(paths, labels, size, batch_size, shuffle, seed):
    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = keras.ops.image.resize(tf.cast(image, "float32"), size,
                                       crop_to_aspect_ratio=True)
        return tf.round(image), label

    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, "int32")))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def baseline(args, splits, size):
    """The keras.io recipe, with the same backbone network and hyperparameters."""
    spec = backbones.get_spec(args.backbone)
    train = baseline_dataset(splits.train_files.paths, splits.train_files.labels, size,
                             args.batch_size, True, args.seed)
    val = baseline_dataset(splits.val_files.paths, splits.val_files.labels, size,
                           args.batch_size, False, args.seed)
    base_model = backbones.create_backbone(spec, _weights(args), size)
    base_model.trainable = False
    inputs = keras.Input((*size, 3))
    preprocess = backbones.preprocessing_layer(spec.preprocessing)
    x = preprocess(inputs) if preprocess else inputs
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(splits.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    times, timer = {}, EpochTimes()
    model.compile(keras.optimizers.Adam(args.head_lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    began = time.perf_counter()
    model.fit(train, validation_data=val, epochs=args.head_epochs, callbacks=[timer],
              verbose=0)
    times["head"] = time.perf_counter() - began
    head_epochs = list(timer.seconds)

    # Unfreeze the top blocks by layer name, keeping BatchNormalization frozen.
    top = {layer.name for block in backbone_blocks(base_model)[-args.unfreeze_blocks:]
           for layer in block.layers}
    base_model.trainable = True
    for layer in base_model.layers:
        layer.trainable = (layer.name in top
                           and not isinstance(layer, keras.layers.BatchNormalization))
    steps = int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=(args.finetune_epochs - 1) * steps, warmup_target=args.finetune_lr,
        warmup_steps=steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    timer.seconds = []
    began = time.perf_counter()
    model.fit(train, validation_data=val, epochs=args.head_epochs + args.finetune_epochs,
              initial_epoch=args.head_epochs, callbacks=[timer], verbose=0)
    times["finetune"] = time.perf_counter() - began
    accuracy = model.evaluate(val, verbose=0, return_dict=True)["accuracy"]
    return times, {"head": head_epochs, "finetune": timer.seconds}, accuracy, train


# ---------------------------------------------------------------- visiontune
def toolkit(args, splits, size, cache):
    model = visiontune.build_classifier(args.backbone, len(splits.class_names), _weights(args),
                                        size, l2=0.0)
    timer = EpochTimes()
    epochs = {}

    class PhaseSplit(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            epochs["head" if "head" not in epochs else "finetune"] = list(timer.seconds)
            timer.seconds = []

    history = visiontune.fine_tune(
        model, splits.train, splits.val, head_epochs=args.head_epochs, head_lr=args.head_lr,
        finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        unfreeze_blocks=args.unfreeze_blocks, cache=cache, seed=args.seed,
        jit_compile=args.jit_compile, callbacks=[timer, PhaseSplit()], verbose=0)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    accuracy = model.evaluate(splits.val, verbose=0, return_dict=True)["accuracy"]
    times = {p["name"]: p["wall_time_s"] for p in history.phases}
    return times, epochs, accuracy, [p["cache"] for p in history.phases]


def _weights(args):
    return None if args.weights == "none" else args.weights


def input_rate(dataset, repeats):
    for _ in dataset:  # Fill the uint8 cache first: steady-state epochs are measured.
        pass
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, *_ in dataset)
        rates.append(seen / (time.perf_counter() - began))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/flowers-mini")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a file, or none")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--head-lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr", type=float, default=3e-5)
    parser.add_argument("--unfreeze-blocks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="input-pipeline passes")
    parser.add_argument("--repeats-runs", type=int, default=1,
                        help="end-to-end runs of each variant (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile visiontune's training steps with XLA (the baseline "
                             "keeps Keras's default, which is no XLA on a CPU-only machine)")
    parser.add_argument("--variants", default="baseline,visiontune,visiontune-nocache",
                        help="comma-separated subset to run; the baseline is always run")
    args = parser.parse_args()

    spec = backbones.get_spec(args.backbone)
    size = checks.normalize_size(args.image_size or spec.default_size)
    splits = data.load_data(args.data, size, batch_size=args.batch_size, seed=args.seed,
                            verbose=False)
    n_train = len(splits.train_files.paths)
    print(f"{args.data}: {n_train} training and {len(splits.val_files.paths)} validation "
          f"images; {args.backbone} at {size[0]}x{size[1]}, weights={args.weights}, "
          f"{args.head_epochs}+{args.finetune_epochs} epochs, top {args.unfreeze_blocks} "
          f"blocks in phase 2, jit_compile={args.jit_compile}; {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, Keras {keras.__version__}")

    variants = {"baseline": lambda: baseline(args, splits, size),
                "visiontune": lambda: toolkit(args, splits, size, "auto"),
                "visiontune-nocache": lambda: toolkit(args, splits, size, "off")}
    chosen = {"baseline", *args.variants.split(",")}
    if not chosen <= set(variants):
        parser.error(f"--variants: expected names from {sorted(variants)}")
    variants = {name: run for name, run in variants.items() if name in chosen}
    results = {name: [] for name in variants}
    for _ in range(args.repeats_runs):
        for name, run in variants.items():
            keras.utils.set_random_seed(args.seed)
            with PeakMemory() as memory:
                outcome = run()
            results[name].append((*outcome, memory.peak))
            print(f"  {name}: {outcome[0]} accuracy {outcome[2]:.3f}", flush=True)

    baseline_train = results["baseline"][0][3]
    inputs = {"baseline": input_rate(baseline_train, args.repeats),
              "visiontune": input_rate(splits.train, args.repeats)}
    inputs["visiontune-nocache"] = inputs["visiontune"]

    def median(name, pick):
        return statistics.median(pick(r) for r in results[name])

    base = {phase: median("baseline", lambda r, p=phase: r[0][p]) for phase in ("head", "finetune")}
    header = (f"{'variant':<20} {'phase 1 s':>9} {'ratio':>6} {'phase 2 s':>9} {'ratio':>6} "
              f"{'total s':>8} {'ratio':>6} {'p1 img/s':>8} {'p2 img/s':>8} "
              f"{'input img/s':>11} {'peak RSS':>9} {'val acc':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for name in variants:
        head = median(name, lambda r: r[0]["head"])
        tune = median(name, lambda r: r[0]["finetune"])
        rate = {phase: n_train / median(name, lambda r, p=phase: statistics.median(r[1][p]))
                for phase in ("head", "finetune")}
        peak = median(name, lambda r: r[-1]) / 2**30
        acc = median(name, lambda r: r[2])
        total_ratio = (head + tune) / (base["head"] + base["finetune"])
        print(f"{name:<20} {head:>9.1f} {head / base['head']:>6.2f} {tune:>9.1f} "
              f"{tune / base['finetune']:>6.2f} {head + tune:>8.1f} {total_ratio:>6.2f} "
              f"{rate['head']:>8.1f} {rate['finetune']:>8.1f} {inputs[name]:>11.0f} "
              f"{peak:>7.2f}GB {acc:>7.3f}")
    if args.repeats_runs > 1:
        # Rounds share the machine's state, so the ratio within each round, then the median
        # over rounds, is less noisy than the ratio of the medians above.
        print("\nMedian over rounds of the ratio to the baseline in the same round "
              "(phase 1, phase 2, total):")
        for name in variants:
            if name == "baseline":
                continue
            paired = []
            for run, ref in zip(results[name], results["baseline"]):
                t, b = run[0], ref[0]
                paired.append((t["head"] / b["head"], t["finetune"] / b["finetune"],
                               (t["head"] + t["finetune"]) / (b["head"] + b["finetune"])))
            medians = [statistics.median(column) for column in zip(*paired)]
            rounds = "; ".join(" ".join(f"{r:.3f}" for r in row) for row in paired)
            print(f"  {name:<20} " + " ".join(f"{m:.3f}" for m in medians)
                  + f"   (rounds: {rounds})")
    print("\nEpoch times, s (first run of each variant; the spread is this machine's noise):")
    for name in variants:
        seconds = results[name][0][1]
        print(f"  {name:<20} " + "; ".join(
            f"{phase} " + " ".join(f"{t:.1f}" for t in seconds[phase]) for phase in seconds))
    modes = "; ".join(f"{name}: phase 1 {results[name][0][3][0]}, phase 2 {results[name][0][3][1]}"
                      for name in variants if name != "baseline")
    print(f"\nratio = variant / baseline (below 1 is faster). Cache modes: {modes}. "
          f"img/s = training images / median epoch time (epochs include validation; "
          f"phase 1 of a cached run is mostly the one caching pass). Peak RSS is the "
          f"process's, so later variants include what earlier ones left allocated.")


if __name__ == "__main__":
    main()
