"""Cached against uncached training, with and without augmentation: accuracy and time.

Runs `python -m visiontune.train`'s `run()` on one dataset with the default
recipe (EfficientNet-Lite0, 224 px, 10 + 10 epochs) in four settings, in one
process, and prints one table:

- `--augment none --cache auto` (the default): both phases cached;
- `--augment none --cache off`: the plain way;
- `--augment light` (the cache turns itself off): both phases uncached;
- `--augment light --cache-copies 5`: phase 1 cached on 5 augmented copies
  of the training set, phase 2 uncached.

This is the measurement behind the `--cache auto` default (README, "Speed").
One run per setting: with 100 validation images one image is 0.01 of
accuracy, so differences of a few hundredths are within noise.

    python scripts/compare_cache.py --data ../shared/datasets/flowers-mini
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from visiontune.runs import run as train  # noqa: E402
from visiontune.runs.config import TrainConfig  # noqa: E402

SETTINGS = {
    "no augmentation, cache auto (default)": dict(augment="none", cache="auto"),
    "no augmentation, cache off": dict(augment="none", cache="off"),
    "augment light (cache off)": dict(augment="light", cache="auto"),
    "augment light, 5 cached copies": dict(augment="light", cache="auto", cache_copies=5),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/flowers-mini")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="compare-cache-") as scratch:
        for i, (name, setting) in enumerate(SETTINGS.items()):
            config = TrainConfig(data=args.data, head_epochs=args.head_epochs,
                                 finetune_epochs=args.finetune_epochs, seed=args.seed,
                                 output=os.path.join(scratch, str(i)), quiet=True, **setting)
            metrics = train.run(config)
            rows.append((name, metrics))
            print(f"  {name}: {metrics['wall_time_s']} val_accuracy "
                  f"{metrics['val_accuracy']:.3f}", flush=True)

    header = (f"{'setting':<40} {'phase 1 s':>9} {'phase 2 s':>9} {'total s':>8} "
              f"{'val acc':>7} {'val loss':>8}  cache (phase 1 / phase 2)")
    print("\n" + header + "\n" + "-" * len(header))
    for name, m in rows:
        t = m["wall_time_s"]
        modes = " / ".join(m["cache"][phase]["mode"] for phase in ("head", "finetune"))
        print(f"{name:<40} {t['head']:>9.1f} {t['finetune']:>9.1f} {t['total']:>8.1f} "
              f"{m['val_accuracy']:>7.3f} {m['val_loss']:>8.3f}  {modes}")
    print(f"\n{args.data}, seed {args.seed}, {args.head_epochs} + {args.finetune_epochs} epochs. "
          "Times are each phase's wall time, including its caching pass.")


if __name__ == "__main__":
    main()
