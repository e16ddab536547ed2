"""The transfer suite: visiontune's recipes against a linear probe and the keras.io recipe.

On each dataset, on the same split, backbone and image size, it runs:

- `probe`: logistic regression on the frozen backbone's pooled features, C by
  5-fold cross-validation on the training images (`scripts/linear_probe.py`);
- `keras.io`: the keras.io transfer-learning recipe written by hand (frozen
  base, RandomFlip + RandomRotation(0.1), pooling, Dropout 0.2, Dense; Adam 1e-3
  for 10 epochs; then the whole base trainable with BatchNorm frozen, Adam 1e-5
  for 10 epochs), once per dataset (seed 0): it is by far the slowest;
- `default`: `python -m visiontune.train` with every setting at its default;
- each `--variant NAME='--flag value ...'`: the default with those flags.

`--seeds N` repeats everything with seeds 0..N-1 (the split where a dataset has
none, the initialisation and the shuffling). Every result is stored in
`--results`, keyed by dataset, method, settings, seed and code version, and
reused: a later run only runs what changed. The output is a Markdown table of
mean ± standard deviation of validation accuracy over the seeds, mean wall
time, and each recipe's difference from the probe.

    python scripts/transfer_suite.py --seeds 3
    python scripts/transfer_suite.py --datasets flowers-mini,busi --seeds 1 \\
        --variant ls='--label-smoothing 0.1'
"""

import argparse
import ast
import contextlib
import csv
import dataclasses
import hashlib
import inspect
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import linear_probe  # noqa: E402  (scripts/ is on sys.path when this file runs)
import visiontune  # noqa: E402
from visiontune.backbones import registry as backbones  # noqa: E402
from visiontune.common import atomic
from visiontune.runs import config as config_lib, flags as flags_lib, run as train
from visiontune.data import sources as data

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "datasets")
DATASETS = ("digits", "flowers-mini", "magnetic-tile", "busi", "monkeys", "trashnet")
RESULTS = os.path.join(HERE, "results", "transfer_suite.json")


def source_of(name, shared):
    """`builtin:digits` for digits, else the folder in `shared` (or `name` as a path)."""
    if name == "digits":
        return "builtin:digits"
    path = name if os.path.isdir(name) else os.path.join(shared, name)
    if not os.path.isdir(path):
        raise SystemExit(f"transfer_suite: no dataset folder {path!r}. Pass --shared DIR with "
                         f"the suite's datasets, or a folder path in --datasets.")
    return os.path.abspath(path)


# What the baselines run of visiontune: loading the data and building the backbone. Paths
# relative to the package; a folder stands for everything in it.
BASELINE_MODULES = ("data/sources.py", "data/splits.py", "data/images.py", "data/pipeline.py",
                    "data/augment.py", "backbones", "common/keras_private.py",
                    "common/checks.py", "common/network.py", "common/atomic.py",
                    "common/targets.py")
# Modules that a training run does not execute (or only for plots, or for a command's
# log lines): editing them reruns nothing.
NOT_TRAINING = ("cli", "export/serving.py", "export/parity.py", "export/__main__.py",
                "data/doctor.py", "training/lr_find.py", "training/compare.py",
                "evaluation/plots.py", "evaluation/interpolate.py", "evaluation/explain.py",
                "common/quiet_start.py", "train.py", "predict.py", "evaluate.py", "doctor.py",
                "lr_find.py", "interpolate.py", "explain.py")


def _within(relative_path, names):
    return any(relative_path == n or relative_path.startswith(n + "/") for n in names)


def _semantics(source):
    """The code's abstract syntax tree without docstrings: what it does, not how it is laid
    out, so that reformatting, comments and docstrings do not rerun stored results."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_version(*sources, modules=None):
    """A digest of the source behind a result: visiontune's `modules` (by default every
    module a training run executes) and `sources` (functions or modules of scripts/).

    It digests each file's name and syntax tree without docstrings (`_semantics`), so a
    lint fix or a comment keeps stored results; any change to what the code does, or a
    renamed module, reruns them. The tree's printed form can differ between Python
    versions, so another Python also reruns them.
    """
    digest = hashlib.sha256()
    package = os.path.dirname(visiontune.__file__)
    for root, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            relative = os.path.relpath(os.path.join(root, name), package).replace(os.sep, "/")
            wanted = (not _within(relative, NOT_TRAINING) if modules is None
                      else _within(relative, modules))
            if wanted:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    digest.update(relative.encode())
                    digest.update(_semantics(f.read()).encode())
    for source in sources:
        digest.update(_semantics(inspect.getsource(source)).encode())
    return digest.hexdigest()[:16]


class Results:
    """A JSON file of results; each key names everything that the number depends on."""

    def __init__(self, path):
        self.path = path
        self.rows = {}
        if os.path.exists(path):
            with open(path) as f:
                self.rows = json.load(f)

    @staticmethod
    def key(dataset, method, settings, seed, version):
        return json.dumps([dataset, method, settings, seed, version], sort_keys=True)

    def get(self, key):
        return self.rows.get(key)

    def put(self, key, row):
        self.rows[key] = row
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        atomic.write_json(self.path, self.rows)  # Atomic: a killed suite keeps every row.


# ------------------------------------------------------------------ the three kinds of run
_FEATURES = {}  # Seeds that give the same split (a dataset with val/) share one pass.


def run_probe(source, seed, args):
    # The training pipeline's shuffle, and so the order of the feature rows and the
    # probe's cross-validation folds, also follows TensorFlow's global seed, which a
    # visiontune run earlier in this process leaves set to its own seed: fix it here.
    keras.utils.set_random_seed(seed)
    splits = data.load_data(source, args.image_size, seed=seed, verbose=False)
    began = time.perf_counter()
    # Array sources name their images by position, so only the seed tells their splits apart.
    split = (source, seed if not os.path.isdir(source) else None,
             tuple(splits.train_files.paths), tuple(splits.val_files.paths))
    if split not in _FEATURES:
        _FEATURES.clear()
        _FEATURES[split] = linear_probe.pooled_features(args.backbone, splits, args.weights)
    (x_train, y_train), (x_val, y_val) = _FEATURES[split]
    probe = linear_probe.fit_probe(x_train, y_train, seed)
    return {"val_accuracy": float(np.mean(probe.predict(x_val) == y_val)),
            "val_images": int(len(y_val)), "train_images": int(len(y_train)),
            "seconds": time.perf_counter() - began,
            "C": float(probe.best_params_["logisticregression__C"])}


def run_keras_io(source, seed, args):
    """The keras.io recipe ("Transfer learning & fine-tuning"), written by hand."""
    keras.utils.set_random_seed(seed)
    splits = data.load_data(source, args.image_size, seed=seed, verbose=False)
    head_epochs, finetune_epochs = args.recipe_epochs
    began = time.perf_counter()
    spec = backbones.get_spec(args.backbone)
    base = backbones.create_backbone(spec, args.weights, args.image_size)
    base.trainable = False
    inputs = keras.Input((args.image_size, args.image_size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    preprocess = backbones.preprocessing_layer(spec.preprocessing)
    x = preprocess(x) if preprocess else x
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(splits.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(splits.train, epochs=head_epochs, verbose=0)
    base.trainable = True
    for layer in base.layers:  # keras.io keeps BatchNorm in inference mode; Keras 3 needs this.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(splits.train, epochs=finetune_epochs, verbose=0)
    scores = model.evaluate(splits.val, verbose=0, return_dict=True)
    return {"val_accuracy": float(scores["accuracy"]),
            "val_images": len(splits.val_files.labels),
            "train_images": len(splits.train_files.labels),
            "seconds": time.perf_counter() - began}


# The code behind each baseline's numbers, for the results' keys (fixed at import).
_PROBE_CODE = (linear_probe, run_probe)
_KERAS_IO_CODE = (run_keras_io,)


def variant_config(source, seed, flags, args):
    argv = ["--data", source, "--seed", str(seed), "--backbone", args.backbone,
            "--weights", str(args.weights), "--image-size", str(args.image_size),
            *shlex.split(args.common), *shlex.split(flags), "--quiet"]
    return flags_lib.parse_config(argv)


# Settings added after rows were stored, with the value that means "as before": left out
# of the key at that value, so the stored rows still match (a new option is not a new run).
_ADDED_SETTINGS = {"backbone_args": {}}


def settings_of(config):
    """The resolved settings that decide a result (not where it is written, nor the seed)."""
    saved = config_lib.yaml.safe_load(config_lib.saved_yaml(config))
    # label_issues: the label-issue pass before training changes nothing a run trains to.
    for key in ("data", "output", "overwrite", "resume", "quiet", "seed", "label_issues"):
        saved.pop(key, None)
    for key, neutral in _ADDED_SETTINGS.items():
        if saved.get(key) == neutral:
            del saved[key]
    return saved


def run_variant(config):
    """Trains in this process, in a temporary run directory that is removed afterwards."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visiontune-suite-") as scratch:
        config = dataclasses.replace(config, output=os.path.join(scratch, "run"))
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = train.run(config)
        with open(os.path.join(config.output, "history.csv")) as f:
            epochs = list(csv.DictReader(f))
    head = [e for e in epochs if e["phase"] == "head"]
    return {"val_accuracy": metrics["val_accuracy"],
            # Read for this report only: how much of the result phase 1 had already reached.
            "after_head_val_accuracy": float(head[-1]["val_accuracy"]) if head else None,
            "val_images": metrics.get("val_images"),
            "seconds": time.perf_counter() - began,
            "train_seconds": metrics["wall_time_s"]["total"],
            "epochs": metrics["epochs"]}


# ------------------------------------------------------------------ the table
def _mean_sd(values):
    if not values:
        return "not run"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def table(found, datasets, methods, seeds):
    """Markdown: accuracy mean ± sd per dataset and method, differences from the probe.

    `found[(dataset, method)]` maps seeds to result rows. Each difference
    compares a method with the probe on the seeds both have (the keras.io
    recipe: seed 0), since on digits every seed is another split.
    """
    head = ["dataset", "train / val", *methods,
            *[f"{m} − probe" for m in methods if m != "probe"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gaps = {m: [] for m in methods if m != "probe"}
    for dataset in datasets:
        rows = {m: found.get((dataset, m), {}) for m in methods}
        sizes = next((f"{r.get('train_images', '?')} / {r['val_images']}"
                      for rs in rows.values() for r in rs.values() if r.get("val_images")), "?")
        cells = [dataset, sizes]
        for m in methods:
            acc = [r["val_accuracy"] for r in rows[m].values()]
            cells.append(_mean_sd(acc) + (f" ({len(acc)})" if acc else ""))
        probe = rows.get("probe", {})
        for m in gaps:
            common = sorted(set(rows[m]) & set(probe))
            if common:
                gap = 100 * statistics.fmean(rows[m][s]["val_accuracy"] - probe[s]["val_accuracy"]
                                             for s in common)
                gaps[m].append(gap)
                cells.append(f"{gap:+.1f}")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    mean_row = ["**mean**", "", *[""] * len(methods),
                *[f"**{statistics.fmean(g):+.1f}**" if len(g) == len(datasets) else
                  (f"{statistics.fmean(g):+.1f} ({len(g)} sets)" if g else "") for g in
                  gaps.values()]]
    lines.append("| " + " | ".join(mean_row) + " |")
    times = ["", "mean wall time (s)"]
    for m in methods:
        secs = [r["seconds"] for d in datasets for r in found.get((d, m), {}).values()]
        times.append(f"{statistics.fmean(secs):.0f}" if secs else "")
    lines.append("| " + " | ".join(times + [""] * len(gaps)) + " |")
    lines.append(f"\nAccuracy: validation accuracy, mean ± sd over the seeds (count in "
                 f"brackets; seeds {', '.join(map(str, seeds))}); differences in points, "
                 "against the probe on the same seeds. Wall time: whole run, data loading "
                 "included; the probe extracts features once per split and reuses them for "
                 "the other seeds.")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated: names from the suite, or folder paths")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME='FLAGS'",
                        help="a visiontune variant: the default plus these train flags")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    parser.add_argument("--no-default", action="store_true", help="skip the default recipe")
    parser.add_argument("--no-keras-io", action="store_true", help="skip the keras.io recipe")
    parser.add_argument("--common", default="", help="flags given to every visiontune run")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a file, or none")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--recipe-epochs", default="10,10",
                        help="keras.io recipe epochs: head,finetune")
    parser.add_argument("--shared", default=SHARED, help="folder of the suite's datasets")
    parser.add_argument("--results", default=RESULTS, help="results file, reused across runs")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    args.image_size = args.image_size or backbones.get_spec(args.backbone).default_size
    args.weights = None if args.weights == "none" else args.weights
    args.recipe_epochs = tuple(int(e) for e in args.recipe_epochs.split(","))
    variants = {}
    for item in args.variant:
        name, sep, flags = item.partition("=")
        if not sep or name in ("probe", "keras.io", "default"):
            parser.error(f"--variant {item!r}: expected NAME='--flag value ...' with a NAME "
                         "other than probe, keras.io or default")
        variants[name] = flags
    args.variants = ({} if args.no_default else {"default": ""}) | variants
    return args


def main(argv=None):
    args = parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    seeds = list(range(args.seeds))
    results = Results(args.results)
    found = {}
    common = {"backbone": args.backbone, "weights": str(args.weights),
              "image_size": args.image_size}
    jobs = []
    for dataset in datasets:
        source = source_of(dataset, args.shared)
        for seed in seeds:
            if not args.no_probe:
                jobs.append((dataset, "probe", seed, common,
                             code_version(*_PROBE_CODE, modules=BASELINE_MODULES),
                             lambda s=source, sd=seed: run_probe(s, sd, args)))
            for name, flags in args.variants.items():
                config = variant_config(source, seed, flags, args)
                jobs.append((dataset, name, seed, settings_of(config), code_version(),
                             lambda c=config: run_variant(c)))
        if not args.no_keras_io:
            jobs.append((dataset, "keras.io", 0, {**common, "epochs": args.recipe_epochs},
                         code_version(*_KERAS_IO_CODE, modules=BASELINE_MODULES),
                         lambda s=source: run_keras_io(s, 0, args)))
    for n, (dataset, method, seed, settings, version, job) in enumerate(jobs, 1):
        key = Results.key(dataset, method, settings, seed, version)
        row = results.get(key)
        state = "stored"
        if row is None:
            keras.backend.clear_session()
            row = job()
            results.put(key, row)
            state = f"ran in {row['seconds']:.0f} s"
        found.setdefault((dataset, method), {})[seed] = row
        print(f"[{n}/{len(jobs)}] {dataset} {method} seed {seed}: "
              f"{row['val_accuracy']:.3f} ({state})", file=sys.stderr, flush=True)
    methods = [*([] if args.no_probe else ["probe"]),
               *([] if args.no_keras_io else ["keras.io"]), *args.variants]
    markdown = table(found, datasets, methods, seeds)
    print(markdown)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown + "\n")
    return found


if __name__ == "__main__":
    main()
