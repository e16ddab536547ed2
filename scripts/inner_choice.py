"""Would a run do better by choosing between head-only and fine-tuned on an inner split?

An experiment for the transfer suite (issue 16). On each dataset and seed it
takes the suite's training images (the same split as the suite's rows), splits
them again (stratified, 80/20, seeded), and trains the default recipe on the
80%. Both models, after phase 1 (head only) and after phase 2 (fine-tuned),
are scored on the inner 20%: the reported validation images play no part.
A run that chose by that score would report the suite's `after_head_val_accuracy`
or `val_accuracy` for the same dataset and seed, which the script looks up in
the suite's stored default rows (run the suite first). It prints what each rule
would have reported against always fine-tuning:

- `accuracy`: head-only when it is strictly more accurate on the inner split;
- `loss`: head-only when its inner cross-entropy is lower.

    python scripts/transfer_suite.py --seeds 3 --no-probe --no-keras-io
    python scripts/inner_choice.py --seeds 3

Each trial is stored in `--results`, keyed by dataset, settings, seed and code version.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer_suite as suite  # noqa: E402
from visiontune.model import classifier  # noqa: E402
from visiontune.data import sources as data
from visiontune.training import recipe

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "inner_choice.json")
INNER_FRACTION = 0.2


def materialise(dataset):
    """All `(images, labels)` of a batched dataset, as two arrays (one pass)."""
    images, labels = zip(*((np.asarray(x), np.asarray(y)) for x, y in dataset))
    return np.concatenate(images), np.concatenate(labels)


def trial(source, seed, config):
    """The default recipe on 80% of the suite's training images, scored on the other 20%."""
    began = time.perf_counter()
    # The order in which the training images arrive (and so which of them the inner
    # split holds out) also follows TensorFlow's global seed; an earlier trial in this
    # process would otherwise leave it at its own seed.
    keras.utils.set_random_seed(seed)
    splits = data.load_data(source, config.image_size, seed=seed, verbose=False)
    x, y = materialise(splits.train)
    held = data.validation_mask(y, splits.class_names, INNER_FRACTION, seed)
    inner = data.load_arrays(x[~held], y[~held], x[held], y[held], config.image_size,
                             config.batch_size, seed=seed)
    keras.utils.set_random_seed(seed)
    model = classifier.build_classifier(
        config.backbone, len(splits.class_names), config.weights, config.image_size,
        pooling=config.pooling, dropout=config.dropout, hidden_units=config.hidden_units,
        l2=config.l2, l1=config.l1)
    history = recipe.fine_tune(
        model, inner.train, inner.val, head_epochs=config.head_epochs,
        head_lr=config.head_lr, finetune_epochs=config.finetune_epochs,
        unfreeze_blocks=config.unfreeze_blocks, cache=config.cache, seed=seed, verbose=0)
    log = history.history
    last_head = max(i for i, phase in enumerate(log["phase"]) if phase == "head")
    return {"inner_images": int(held.sum()), "train_images": int((~held).sum()),
            "head_accuracy": float(log["val_accuracy"][last_head]),
            "head_loss": float(log["val_loss"][last_head]),
            "finetuned_accuracy": float(log["val_accuracy"][-1]),
            "finetuned_loss": float(log["val_loss"][-1]),
            "seconds": time.perf_counter() - began}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(suite.DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shared", default=suite.SHARED)
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args(argv)
    suite_args = suite.parse_args(["--shared", args.shared])
    stored = suite.Results(suite.RESULTS)
    results = suite.Results(args.results)
    version = suite.code_version(trial, materialise)
    training = suite.code_version()  # Read once: the source may change while this runs.
    rules = {"always fine-tune": lambda t: False,
             "accuracy": lambda t: t["head_accuracy"] > t["finetuned_accuracy"],
             "loss": lambda t: t["head_loss"] < t["finetuned_loss"]}
    print("| dataset | " + " | ".join(rules) + " | head-only | seeds choosing head "
          "(accuracy, loss) |\n" + "|---" * (len(rules) + 3) + "|")
    for dataset in args.datasets.split(","):
        source = suite.source_of(dataset, args.shared)
        scores = {rule: [] for rule in [*rules, "head-only"]}
        chose = {"accuracy": 0, "loss": 0}
        for seed in range(args.seeds):
            config = suite.variant_config(source, seed, "", suite_args)
            row = stored.get(suite.Results.key(dataset, "default", suite.settings_of(config),
                                               seed, training))
            if row is None:
                raise SystemExit(f"inner_choice: no stored default row for {dataset} seed "
                                 f"{seed} at this code version; run the suite first.")
            key = suite.Results.key(dataset, "inner-choice",
                                    {"inner_fraction": INNER_FRACTION,
                                     **suite.settings_of(config)}, seed, version)
            found = results.get(key)
            if found is None:
                keras.backend.clear_session()
                found = trial(source, seed, config)
                results.put(key, found)
            print(f"{dataset} seed {seed}: inner head {found['head_accuracy']:.3f} "
                  f"({found['head_loss']:.4f}), fine-tuned {found['finetuned_accuracy']:.3f} "
                  f"({found['finetuned_loss']:.4f})", file=sys.stderr, flush=True)
            for rule, head_wins in rules.items():
                scores[rule].append(row["after_head_val_accuracy"] if head_wins(found)
                                    else row["val_accuracy"])
                if rule in chose:
                    chose[rule] += bool(head_wins(found))
            scores["head-only"].append(row["after_head_val_accuracy"])
        cells = [f"{statistics.mean(v):.3f}" for v in scores.values()]
        print(f"| {dataset} | " + " | ".join(cells)
              + f" | {chose['accuracy']}, {chose['loss']} of {args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
