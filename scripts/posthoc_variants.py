"""Would a fixed change at prediction time make the default recipe better everywhere?

An experiment for the transfer suite (issue 16). It trains the suite's default
recipe on each dataset and seed (the same configuration and seed as the
suite's rows, so the same model), keeps the run directory, and scores
variants of the finished run that need no retraining, on the suite's
validation images:

- `final`: the run's own model (the suite's default row: compare the two tables);
- `flip`: each image's probabilities averaged with its horizontal mirror's;
- `wise50`: WiSE-FT, the weights halfway between after phase 1 and the end
  (`visiontune.interpolate`), and `wise50+flip`;
- `ensemble`: probabilities of the phase-1 model and the final model averaged;
- `head`: the model after phase 1 alone.

Each variant is one fixed rule for every dataset, chosen (or not) by the
whole table, as the suite chooses every default; no variant looks at one
run's validation images to decide anything for that run.

    python scripts/posthoc_variants.py --seeds 3 --runs /tmp/visiontune-posthoc

Trained runs stay in `--runs/<code version>/` and are reused; scores are stored in `--results`,
keyed by dataset, seed and code version.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer_suite as suite  # noqa: E402
from visiontune.data import sources as data  # noqa: E402
from visiontune.common import targets  # noqa: E402
from visiontune.evaluation import interpolate, metrics as evaluation  # noqa: E402
from visiontune.export import serving  # noqa: E402
from visiontune.runs import run as train  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "posthoc_variants.json")
VARIANTS = ("final", "flip", "wise50", "wise50+flip", "ensemble", "head")


def trained_run(config, run_dir):
    """Trains `config` into `run_dir` unless a finished run is already there."""
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
        config = dataclasses.replace(config, output=run_dir, overwrite=True)
        with contextlib.redirect_stdout(io.StringIO()):
            train.run(config)
    return run_dir


def score(run_dir, config):
    """Accuracy of every variant on the run's validation images."""
    final, _, resize = serving.load_run(run_dir)
    start = interpolate.start_model(run_dir, final)
    # The run's own split: same source, seed and split file, so the same images.
    splits = data.load_data(config.data, final.input_shape[1:3], seed=config.seed,
                            validation_split=config.validation_split,
                            val_source=config.val_data, resize=resize,
                            split_file=interpolate.run_split_file(
                                run_dir, config.data, {"val_data": config.val_data}),
                            verbose=False)
    batches = [(np.asarray(x), np.asarray(y)) for x, y in splits.val]
    pixels = np.concatenate([x for x, _ in batches])
    labels = targets.class_indices(np.concatenate([y for _, y in batches]))
    wise = interpolate.interpolate(start, final, 0.5)
    p_final = evaluation.probabilities(final, pixels)
    p_final_flip = evaluation.probabilities(final, pixels, "flip")
    p_head = evaluation.probabilities(start, pixels)
    probs = {"final": p_final, "flip": p_final_flip,
             "wise50": evaluation.probabilities(wise, pixels),
             "wise50+flip": evaluation.probabilities(wise, pixels, "flip"),
             "ensemble": (p_head + p_final) / 2, "head": p_head}
    return {name: float(np.mean(p.argmax(axis=1) == labels)) for name, p in probs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(suite.DATASETS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--runs", default="/tmp/visiontune-posthoc",
                        help="folder that keeps the trained runs for reuse")
    parser.add_argument("--shared", default=suite.SHARED)
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args(argv)
    suite_args = suite.parse_args(["--shared", args.shared])
    results = suite.Results(args.results)
    version = suite.code_version(score, trained_run)
    table = {}
    for name in args.datasets.split(","):
        source = suite.source_of(name, args.shared)
        for seed in range(args.seeds):
            config = suite.variant_config(source, seed, "", suite_args)
            key = suite.Results.key(name, "posthoc", suite.settings_of(config), seed, version)
            row = results.get(key)
            if row is None:
                began = time.perf_counter()
                keras.backend.clear_session()
                # Runs are kept per code version: a run trained by older code is not reused.
                run_dir = trained_run(config, os.path.join(args.runs, version, f"{name}-{seed}"))
                row = score(run_dir, config)
                row["seconds"] = time.perf_counter() - began
                results.put(key, row)
            table.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: " + "  ".join(f"{v} {row[v]:.3f}" for v in VARIANTS),
                  file=sys.stderr, flush=True)
    print("| dataset | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    gains = {v: [] for v in VARIANTS}
    for name, rows in table.items():
        cells = []
        for v in VARIANTS:
            mean = statistics.fmean(r[v] for r in rows)
            gains[v].append(mean - statistics.fmean(r["final"] for r in rows))
            cells.append(f"{mean:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **mean − final (points)** | " + " | ".join(
        f"{100 * statistics.fmean(g):+.2f}" for g in gains.values()) + " |")
    print(f"\n{args.seeds} seeds; validation accuracy, mean over seeds.")


if __name__ == "__main__":
    sys.exit(main())
