"""Is the input pipeline ever the bottleneck? Input throughput against training throughput.

Measures, on the same folder and in one process:
- decode + resize (first epoch, nothing cached), images/s;
- the cached pipeline with each augmentation preset, images/s;
- phase-1 and phase-2 training steps of the model on already-materialised
  batches, images/s (a plain Keras `train_on_batch` loop, no visiontune input).

Each figure is the median over `--repeats` passes. The pipeline keeps up when
its throughput is well above the training step's.

    python scripts/bench_input.py --data ../shared/datasets/flowers-mini
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import visiontune  # noqa: E402
from visiontune.data import augment, sources as data, pipeline as pipelines  # noqa: E402
from visiontune.backbones import registry as backbones


def images_per_second(make_iterable, count, repeats):
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in make_iterable())
        rates.append(seen / (time.perf_counter() - began))
        assert seen == count, (seen, count)
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/flowers-mini")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = backbones.get_spec(args.backbone).default_size
    files = data.scan_folder(os.path.join(args.data, "train")
                             if os.path.isdir(os.path.join(args.data, "train")) else args.data)
    n = len(files.paths)
    rows = []

    fresh = lambda: pipelines.file_pipeline(files, size, args.batch_size, shuffle=True)  # noqa: E731
    rows.append(("decode + resize, uncached", images_per_second(fresh, n, args.repeats)))
    cached = pipelines.file_pipeline(files, size, args.batch_size, shuffle=True)
    for _ in cached:  # fill the cache
        pass
    for preset in augment.PRESETS:
        pipeline = augment.apply(cached, preset, "none", len(files.class_names))
        rows.append((f"cached + augment {preset}",
                     images_per_second(lambda p=pipeline: p, n, args.repeats)))
    mixed = augment.apply(cached, "light", "mixup", len(files.class_names))
    rows.append(("cached + light + mixup", images_per_second(lambda: mixed, n, args.repeats)))

    batches = [(np.asarray(x), np.asarray(y)) for x, y in cached]
    model = visiontune.build_classifier(args.backbone, len(files.class_names))
    for phase, blocks in (("phase 1 train step (frozen)", 0), ("phase 2 train step (top 2)", 2)):
        visiontune.unfreeze_top_blocks(model, blocks)
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        model.train_on_batch(*batches[0])  # trace once

        def step_all():
            for x, y in batches:
                model.train_on_batch(x, y)
                yield x, y

        rows.append((phase, images_per_second(step_all, n, args.repeats)))

    print(f"{args.data}: {n} training images, {size} px, batch {args.batch_size}, "
          f"{args.backbone}; median of {args.repeats}")
    width = max(len(name) for name, _ in rows)
    step = max(rows[-2][1], rows[-1][1])
    for name, rate in rows:
        verdict = "" if name.startswith("phase") else (
            f"  {rate / step:6.1f}x the faster training step"
            + ("  <- input-bound" if rate < step else ""))
        print(f"{name:<{width}}  {rate:8.1f} images/s{verdict}")


if __name__ == "__main__":
    main()
