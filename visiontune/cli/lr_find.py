"""`python -m visiontune.lr_find --data DIR`: the learning-rate range test, as a plot."""

import argparse
import sys

import keras

from visiontune.backbones import registry as backbones
from visiontune.common import quiet_start
from visiontune.data import sources as data_lib
from visiontune.model import classifier
from visiontune.training import lr_find as lr_find_lib, optimizers
from visiontune.training.lr_find import lr_find
from visiontune.tuning import freezing


def main(argv=None):
    """Entry point of `python -m visiontune.lr_find`."""
    parser = argparse.ArgumentParser(description=lr_find_lib.__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:digits",
                        help="a folder, tfds:NAME[:SPLIT] or builtin:digits")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a file, or none")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unfreeze-blocks", type=int, default=0,
                        help="0 finds phase 1's rate (head only); N finds phase 2's")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="adam", choices=optimizers.OPTIMIZERS)
    parser.add_argument("--output", default="lr_find.png", help="where the plot goes")
    parser.add_argument("--seed", type=int, default=0)
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    try:
        keras.utils.set_random_seed(args.seed)
        spec_size = backbones.get_spec(args.backbone).default_size
        size = args.image_size or spec_size
        splits = data_lib.load_data(args.data, size, batch_size=args.batch_size, seed=args.seed)
        weights = None if args.weights.lower() == "none" else args.weights
        model = classifier.build_classifier(args.backbone, len(splits.class_names), weights, size)
        freezing.set_trainable_blocks(model, args.unfreeze_blocks)
        result = lr_find(model, splits.train, start_lr=args.start_lr,
                                     end_lr=args.end_lr, steps=args.steps,
                                     optimizer=args.optimizer)
        result.plot(args.output)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"visiontune.lr_find: error: {error}", file=sys.stderr)
        return 2
    print(f"Suggested learning rate: {result.suggestion:.2g} ({result.rule}). "
          f"Plot: {args.output}")
    return 0
