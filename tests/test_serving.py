"""predict, evaluate and export on a finished run."""

import json
import os
import sys

import numpy as np
import pytest

from visiontune.cli import evaluate, export, predict
from visiontune.export import parity, serving
from visiontune.cli import train
from conftest import require_module, write_image_folder


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
    pixels = parity.sample_images(out, model, resize)
    assert pixels.dtype == np.uint8
    assert parity.parity(model, target, "savedmodel", pixels) < 1e-4


def test_tflite_export_matches_keras(run, tmp_path):
    out, _ = run
    target = str(tmp_path / "model.tflite")
    assert export.main([out, "--format", "tflite", "--output", target]) == 0
    assert os.path.isfile(target) and os.path.isfile(tmp_path / "labels.txt")
    model, _, resize = serving.load_run(out)
    assert parity.parity(model, target, "tflite", parity.sample_images(out, model, resize)) < 1e-4


def test_onnx_export_matches_keras_in_onnx_runtime(run, tmp_path, capsys):
    onnxruntime = require_module("onnxruntime")

    out, _ = run
    target = str(tmp_path / "model.onnx")
    assert export.main([out, "--format", "onnx", "--output", target]) == 0
    assert "[3/3] checking parity" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "labels.txt")
    model, _, resize = serving.load_run(out)
    pixels = parity.sample_images(out, model, resize)
    session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.type == "tensor(uint8)" and image.shape[1:] == [32, 32, 3]
    got = session.run(None, {image.name: pixels})[0]
    expected = model.predict(pixels.astype("float32"), verbose=0)
    assert got.shape == expected.shape and np.max(np.abs(got - expected)) < 1e-4
    assert parity.parity(model, target, "onnx", pixels) < 1e-4


def test_tflite_runs_in_litert(run, tmp_path, capsys):
    Interpreter = require_module("ai_edge_litert.interpreter").Interpreter  # noqa: N806

    out, _ = run
    target = str(tmp_path / "model.tflite")
    assert export.main([out, "--format", "tflite", "--output", target, "--quiet"]) == 0
    assert "tf.lite.Interpreter" not in capsys.readouterr().err  # parity ran on LiteRT
    model, _, resize = serving.load_run(out)
    pixels = parity.sample_images(out, model, resize)
    interpreter = Interpreter(model_path=target)
    (inp,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8
    interpreter.resize_tensor_input(inp["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], pixels)
    interpreter.invoke()
    expected = model.predict(pixels.astype("float32"), verbose=0)
    assert np.max(np.abs(interpreter.get_tensor(result["index"]) - expected)) < 1e-4


def test_missing_onnx_converter_names_the_extra(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` now fails
    out, _ = run
    assert export.main([out, "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err
    assert "needs tf2onnx, which is not installed" in error
    assert "pip install 'visiontune[onnx]'" in error
    assert not os.path.exists(tmp_path / "m.onnx")


def test_quantize_is_refused_for_formats_that_ignore_it(run, tmp_path, capsys):
    out, _ = run
    assert export.main([out, "--format", "onnx", "--quantize", "float16",
                        "--output", str(tmp_path / "m.onnx")]) == 2
    assert "applies to --format tflite only" in capsys.readouterr().err


def test_not_a_run_directory_is_a_clear_error(tmp_path, capsys):
    assert predict.main([str(tmp_path), str(tmp_path)]) == 2
    assert "has no model.keras" in capsys.readouterr().err
