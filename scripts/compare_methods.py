"""Phase 2 methods side by side: accuracy, trainable parameters, time; then WiSE-FT.

Trains phase 1 once on EfficientNet-Lite0 (ImageNet weights), then runs
two-phase, gradual unfreezing, bn-bias (BitFit) and LoRA from the same warm
head over the same top blocks (`visiontune.compare_methods`), and
prints one table; phase 1 alone is the linear probe. It then sweeps the
WiSE-FT alpha between the warm head and the two-phase model, on the
validation images and on a corrupted copy of them (blur, noise, contrast,
JPEG). This is the measurement behind README, "Methods".

    python scripts/compare_methods.py --data ../shared/datasets/flowers-mini

One run per method: with 100 validation images one image is 0.01 of
accuracy, so differences of a few hundredths are within noise. Times come
from one process on a shared machine; compare them within a run only.
"""

import argparse
import functools
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import visiontune  # noqa: E402
from visiontune.training import compare  # noqa: E402
from visiontune.data import sources as data
from visiontune.evaluation.interpolate import score_alphas  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/flowers-mini")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--unfreeze-blocks", type=int, default=2)
    parser.add_argument("--methods", default=",".join(compare.VARIANTS))
    parser.add_argument("--lr", action="append", default=[], metavar="METHOD=RATE",
                        help="phase 2 rate of one method, e.g. lora=3e-4 (repeatable)")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Scoring the last, smaller validation batch retraces predict; tf logs that. Harmless.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    splits = data.load_data(args.data, args.image_size, seed=args.seed, verbose=False)
    build = functools.partial(visiontune.build_classifier, args.backbone,
                              len(splits.class_names), "imagenet", args.image_size)
    rates = {k: float(v) for k, v in (item.split("=") for item in args.lr)}
    result = compare.compare_methods(
        build, splits.train, splits.val, methods=args.methods.split(","),
        head_epochs=args.head_epochs, finetune_epochs=args.finetune_epochs,
        unfreeze_blocks=args.unfreeze_blocks, learning_rates=rates, seed=args.seed,
        verbose=1)
    print("\n" + result.table())
    print(f"\n{args.data}, {args.backbone} at {args.image_size} px, {args.head_epochs} + "
          f"{args.finetune_epochs} epochs, top {args.unfreeze_blocks} blocks, seed "
          f"{args.seed}, rates {rates or 'default'}.")

    if "two-phase" in result.models:
        batches = [(np.asarray(x), np.asarray(y)) for x, y in splits.val]
        pixels = np.concatenate([x for x, _ in batches]).clip(0, 255).astype(np.uint8)
        labels = np.concatenate([y for _, y in batches])
        alphas = [float(a) for a in args.alphas.split(",")]
        print("\nWiSE-FT: interpolate(after phase 1, two-phase, alpha)")
        rows = score_alphas(result.start, result.models["two-phase"], pixels, labels, alphas,
                            verbose=False)
        print("| alpha | clean | shifted |\n|---|---|---|")
        for row in rows:
            print(f"| {row['alpha']:g} | {row['clean']:.3f} | {row['shifted']:.3f} |")


if __name__ == "__main__":
    main()
