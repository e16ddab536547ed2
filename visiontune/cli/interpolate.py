"""`python -m visiontune.interpolate RUN_DIR`: a WiSE-FT sweep over a finished run.

It scores `interpolate(after phase 1, final, alpha)` for each alpha on the run's
validation images and on a shifted copy of them (`evaluation.interpolate`),
writes a table and a plot into the run, and saves the best model for `--select`.
"""

import argparse
import os
import sys

import numpy as np

from visiontune.common import atomic, quiet_start, targets
from visiontune.data import sources as data
from visiontune.evaluation import plots
from visiontune.export import saving, serving
from visiontune.evaluation.interpolate import (
    CORRUPTIONS,
    interpolate,
    run_split_file,
    score_alphas,
    start_model,
)
from visiontune.runs import config as config_lib


def sweep(run_dir, alphas, select="mean", verbose=True):
    """Scores `interpolate(after phase 1, final, alpha)` for each alpha; returns the rows.

    Writes `interpolation.json`, `interpolation.png` and, for the alpha with the
    best `select` score (`"clean"`, `"shifted"`, or their `"mean"`),
    `interpolated.keras` into `run_dir`.
    """
    if select not in ("clean", "shifted", "mean"):
        raise ValueError(f"Expected --select clean, shifted or mean. Received: {select!r}")
    finetuned, class_names, resize = serving.load_run(run_dir)
    if targets.is_multi_label(finetuned):
        raise ValueError(f"{run_dir!r} is a multi-label run; the sweep scores single-label "
                         "accuracy (argmax) and cannot rank its alphas.")
    start = start_model(run_dir, finetuned)
    config = config_lib.load_yaml(os.path.join(run_dir, "config.yaml"))
    size = finetuned.input_shape[1:3]
    source = config.get("data", "builtin:digits")
    splits = data.load_data(source, size,
                            validation_split=config.get("validation_split", 0.2),
                            seed=config.get("seed", 0), val_source=config.get("val_data"),
                            resize=resize, split_file=run_split_file(run_dir, source, config),
                            verbose=False)
    batches = [(np.asarray(x), np.asarray(y)) for x, y in splits.val]  # No model pass.
    pixels = np.concatenate([x for x, _ in batches]).clip(0, 255).astype(np.uint8)
    labels = targets.class_indices(np.concatenate([y for _, y in batches]))
    rows = score_alphas(start, finetuned, pixels, labels, alphas, verbose)
    best = max(rows, key=lambda r: r[select])
    saving.save_model(interpolate(start, finetuned, best["alpha"]),
                      os.path.join(run_dir, "interpolated.keras"))
    atomic.write_json(os.path.join(run_dir, "interpolation.json"), {
        "rows": rows, "select": select, "best_alpha": best["alpha"], "images": len(labels),
        "corruptions": list(CORRUPTIONS),
        "note": "alpha is chosen on the same validation images it is scored on"})
    plots.interpolation(rows, best["alpha"], os.path.join(run_dir, "interpolation.png"))
    return rows, best


def main(argv=None):
    """Entry point of `python -m visiontune.interpolate`."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.interpolate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                        help="comma-separated weights of the fine-tuned model")
    parser.add_argument("--select", default="mean", choices=("clean", "shifted", "mean"),
                        help="which accuracy picks the saved model")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        parser.error(f"--alphas: expected numbers separated by commas. Received: {args.alphas!r}")
    try:
        rows, best = sweep(args.run_dir, alphas, args.select)
    except (ValueError, OSError) as error:
        print(f"visiontune.interpolate: error: {error}", file=sys.stderr)
        return 2
    print(f"Best alpha by {args.select} accuracy: {best['alpha']:g}; saved "
          f"{os.path.join(args.run_dir, 'interpolated.keras')}")
    return 0
