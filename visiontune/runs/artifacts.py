"""What a finished run leaves behind: its metrics, plots, history and model files."""

import csv
import os

import keras
import numpy as np
import tensorflow as tf

from visiontune.common import atomic, version
from visiontune.evaluation import explain, metrics as evaluation, plots
from visiontune.export import saving


def make_plain(best, method):
    """ModelCheckpoint saves `best.keras` as the model trains: with LoRA adapters, or with
    bn-bias's trainable BatchNorm. Resave it plain and frozen, like model.keras."""
    if method in ("lora", "bn-bias") and os.path.exists(best):
        saving.save_model(keras.saving.load_model(best), best)

def final_metrics(model, splits, history, out):
    """Scores the final model on the validation data and draws the run's plots.

    One prediction pass serves the metrics, the loss and the plots: the loss is
    the cross-entropy of those predictions plus the head's penalties, which is
    what `model.evaluate` would report, without a second backbone pass.
    """
    pixels, labels, probs = evaluation.predict(model, splits.val)
    scores = evaluation.classification_metrics(labels, probs.argmax(axis=1), splits.class_names)
    cross_entropy = keras.losses.sparse_categorical_crossentropy(labels, probs)
    val_loss = float(np.mean(cross_entropy) + sum(float(loss) for loss in model.losses))
    if history.epoch:
        plots.learning_curves(history, os.path.join(out, "learning_curves.png"))
    plots.confusion_matrix(scores["confusion_matrix"], splits.class_names,
                           os.path.join(out, "confusion_matrix.png"))
    plots.prediction_grid(pixels, labels, probs, splits.class_names,
                          os.path.join(out, "val_predictions.png"),
                          explain=explain.explainer_or_none(model))
    calibration = evaluation.calibration(labels, probs)
    plots.reliability_diagram(calibration, os.path.join(out, "reliability.png"))
    return {
        "val_accuracy": scores["accuracy"],
        "val_accuracy_ci95": scores["accuracy_ci95"],
        "val_images": scores["images"],
        "val_loss": val_loss,
        # How far a probability can be trusted (15 bins; the interval is a bootstrap).
        "val_ece": calibration["ece"],
        "val_ece_ci95": calibration["ece_ci95"],
        "val_nll": calibration["nll"],
        "val_reliability_bins": calibration["bins"],
        "class_names": list(splits.class_names),
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "epochs": {p["name"]: p["epochs"] for p in history.phases},
        "trainable_params": {p["name"]: p["trainable_params"] for p in history.phases},
        "cache": {p["name"]: {"mode": p["cache"], "reason": p["cache_reason"]}
                  for p in history.phases},
        "wall_time_s": {**{p["name"]: round(p["wall_time_s"], 2) for p in history.phases},
                        "total": round(sum(p["wall_time_s"] for p in history.phases), 2)},
        "versions": {"visiontune": version.__version__, "keras": keras.__version__,
                     "tensorflow": tf.__version__},
    }


def write_artifacts(out, model, splits, history, metrics, label_issues=None):
    """Writes the run directory's files; `label_issues` is what `data_report.json`
    records about suspected label issues (`run.label_issue_summary`)."""
    atomic.write_text(os.path.join(out, "labels.txt"), "\n".join(splits.class_names) + "\n")
    write_history_csv(os.path.join(out, "history.csv"), history)
    atomic.write_json(os.path.join(out, "metrics.json"), metrics)
    report = splits.report()
    if label_issues is not None:
        report["suspected_label_issues"] = label_issues
    atomic.write_json(os.path.join(out, "data_report.json"), report)
    splits.save_split(os.path.join(out, "split.json"))
    saving.save_model(model, os.path.join(out, "model.keras"))


def write_history_csv(path, history):
    """Writes one row per epoch, with its phase, from a `PhasedHistory`."""
    keys = ["epoch", "phase"] + sorted(k for k in history.history if k != "phase")
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for i, epoch in enumerate(history.epoch):
            writer.writerow([epoch + 1] + [history.history[k][i] for k in keys[1:]])
