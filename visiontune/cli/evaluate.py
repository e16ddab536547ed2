"""`python -m visiontune.evaluate RUN_DIR --data DIR`: a run's metrics and plots on other data."""

import argparse
import os
import sys

from visiontune.data import sources as data, images, pipeline as pipelines
from visiontune.evaluation import explain, metrics as evaluation, plots
from visiontune.runs import rundir
from visiontune.export import serving
from visiontune.common import atomic, quiet_start


def evaluate_folder(run_dir, folder, output=None, tta="none"):
    """Scores a run's model on every image of a folder of class subfolders.

    Writes `metrics.json`, `confusion_matrix.png`, `reliability.png` and `val_predictions.png`
    to `output` (default `RUN_DIR/eval-<folder name>`) and returns the metrics.
    `tta="flip"` averages each image's prediction with its mirror's.
    """
    model, class_names, resize = serving.load_run(run_dir)
    files = data.scan_folder(folder, class_names=class_names)
    if files.bad:
        print(images.format_bad_files(files.bad))
    out = rundir.prepare(output or os.path.join(
        run_dir, f"eval-{os.path.basename(os.path.normpath(folder))}"), overwrite=True)
    ds = pipelines.file_pipeline(files, model.input_shape[1:3], 32, resize=resize)
    pixels, labels, probs = evaluation.predict(model, ds, tta=tta)
    scores = evaluation.classification_metrics(labels, probs.argmax(axis=1), class_names)
    plots.confusion_matrix(scores["confusion_matrix"], class_names,
                           os.path.join(out, "confusion_matrix.png"))
    plots.prediction_grid(pixels, labels, probs, class_names,
                          os.path.join(out, "val_predictions.png"),
                          explain=explain.explainer_or_none(model))
    calibration = evaluation.calibration(labels, probs)
    plots.reliability_diagram(calibration, os.path.join(out, "reliability.png"),
                              os.path.basename(os.path.normpath(folder)))
    metrics = {"data": os.path.abspath(folder), "tta": tta, **scores,
               "ece": calibration["ece"], "ece_ci95": calibration["ece_ci95"],
               "nll": calibration["nll"], "reliability_bins": calibration["bins"],
               "bad_files": [{"path": b.path, "reason": b.reason} for b in files.bad]}
    atomic.write_json(os.path.join(out, "metrics.json"), metrics)
    return metrics, out


def main(argv=None):
    """Entry point of `python -m visiontune.evaluate`."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (with model.keras)")
    parser.add_argument("--data", required=True, help="folder of class subfolders to score")
    parser.add_argument("--output", help="where to write (default RUN_DIR/eval-<name>)")
    parser.add_argument("--tta", choices=evaluation.TTA, default="none",
                        help="test-time augmentation: flip averages each image with its mirror")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    try:
        metrics, out = evaluate_folder(args.run_dir, args.data, args.output, args.tta)
    except (ValueError, OSError) as error:
        print(f"visiontune.evaluate: error: {error}", file=sys.stderr)
        return 2
    accuracy = evaluation.describe_accuracy(metrics["accuracy"], metrics["accuracy_ci95"],
                                            metrics["images"])
    print(f"accuracy {accuracy}; metrics and plots in {os.path.abspath(out)}")
    return 0
