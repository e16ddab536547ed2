"""predict, evaluate and export on a finished run."""

import importlib.util
import json
import os

import numpy as np
import pytest

from visiontune import evaluate, export, predict, serving, train
from conftest import write_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    data = write_image_folder(str(root / "photos"), n_per_class=6)
    out = str(root / "run")
    assert train.main(["--data", data, "--output", out, "--backbone", "mobilenetv2",
                       "--weights", "none", "--image-size", "32", "--head-epochs", "1",
                       "--finetune-epochs", "1", "--batch-size", "6", "--quiet"]) == 0
    return out, data


def test_predict_agrees_with_model_predict(run, tmp_path):
    out, data = run
    target = str(tmp_path / "pred.json")
    assert predict.main([out, os.path.join(data, "red"), "--top-k", "2", "--format", "json",
                         "--output", target]) == 0
    rows = json.load(open(target))
    model, names, resize = serving.load_run(out)
    paths = [row["path"] for row in rows]
    expected = model.predict(serving.load_images(paths, (32, 32), resize).astype("float32"),
                             verbose=0)
    assert len(rows) == 6
    for row, probs in zip(rows, expected):
        best = int(np.argmax(probs))
        assert row["top_k"][0]["class"] == names[best]
        assert row["top_k"][0]["probability"] == pytest.approx(float(probs[best]), abs=1e-6)
        assert len(row["top_k"]) == 2


def test_predict_text_and_csv(run, tmp_path, capsys):
    out, data = run
    image = os.path.join(data, "blue", sorted(os.listdir(os.path.join(data, "blue")))[0])
    assert predict.main([out, image]) == 0
    assert capsys.readouterr().out.startswith(image + ": ")
    target = str(tmp_path / "pred.csv")
    assert predict.main([out, image, "--format", "csv", "--output", target, "--top-k", "3"]) == 0
    assert open(target).read().splitlines()[0] == "path,rank,class,probability"


def test_evaluate_writes_metrics_and_plots(run, tmp_path):
    out, data = run
    assert evaluate.main([out, "--data", data, "--output", str(tmp_path / "ev")]) == 0
    metrics = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert metrics["images"] == 18 and np.asarray(metrics["confusion_matrix"]).sum() == 18
    for name in ("confusion_matrix.png", "val_predictions.png"):
        assert (tmp_path / "ev" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_savedmodel_export_matches_keras_on_uint8_images(run, tmp_path, capsys):
    out, _ = run
    target = str(tmp_path / "saved")
    assert export.main([out, "--format", "savedmodel", "--output", target]) == 0
    printed = capsys.readouterr().out
    assert "Parity on" in printed and "[3/3] checking parity" in printed
    assert os.path.isfile(os.path.join(target, "labels.txt"))
    model, _, resize = serving.load_run(out)
    pixels = export.sample_images(out, model, resize)
    assert pixels.dtype == np.uint8
    assert export.parity(model, target, "savedmodel", pixels) < 1e-4


def test_tflite_export_matches_keras(run, tmp_path):
    out, _ = run
    target = str(tmp_path / "model.tflite")
    assert export.main([out, "--format", "tflite", "--output", target]) == 0
    assert os.path.isfile(target) and os.path.isfile(tmp_path / "labels.txt")
    model, _, resize = serving.load_run(out)
    assert export.parity(model, target, "tflite", export.sample_images(out, model, resize)) < 1e-4


def test_missing_onnx_converter_names_the_package(run, tmp_path, capsys):
    if importlib.util.find_spec("tf2onnx") is not None:
        pytest.skip("tf2onnx is installed here")
    out, _ = run
    assert export.main([out, "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "pip install tf2onnx" in capsys.readouterr().err


def test_not_a_run_directory_is_a_clear_error(tmp_path, capsys):
    assert predict.main([str(tmp_path), str(tmp_path)]) == 2
    assert "has no model.keras" in capsys.readouterr().err
