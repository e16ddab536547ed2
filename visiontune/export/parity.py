"""Does an exported model predict what the Keras model predicts? Checked in its own runtime."""

import importlib.util
import json
import os
import sys

import numpy as np
import tensorflow as tf

from visiontune.export import serving


def parity(model, exported_path, fmt, pixels):
    """Returns the largest absolute difference between Keras and exported outputs.

    Each export runs in the runtime that serves it: TensorFlow for SavedModel,
    LiteRT for TFLite, ONNX Runtime for ONNX.
    """
    expected = model.predict(pixels.astype(np.float32), verbose=0)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(exported_path)  # keep a reference: it owns the variables
        got = loaded.serve(tf.constant(pixels)).numpy()
    elif fmt == "onnx":
        import onnxruntime  # The onnx extra; `main` checks that it is installed.

        session = onnxruntime.InferenceSession(exported_path,
                                               providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    else:
        interpreter = _litert_interpreter(exported_path)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], pixels.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])
    return float(np.max(np.abs(expected - got)))


def _litert_interpreter(path):
    """LiteRT's interpreter (`ai-edge-litert`), which replaces TensorFlow's deprecated
    `tf.lite.Interpreter`; that one is the fallback when the litert extra is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError:
        print("Checking parity with tf.lite.Interpreter, which TensorFlow deprecates; "
              "pip install 'visiontune[litert]' to check with LiteRT.", file=sys.stderr)
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=path)


def runtime_missing(fmt):
    """The reason parity cannot be checked here, or None."""
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        return ("Parity not checked: onnxruntime is not installed "
                "(pip install 'visiontune[onnx]').")
    return None


def sample_images(run_dir, model, resize, count=8):
    """Validation images named in the run's split.json, else seeded random pixels."""
    split = os.path.join(run_dir, "split.json")
    size = model.input_shape[1:3]
    if os.path.isfile(split):
        with open(split, encoding="utf-8") as f:
            paths = [p for p in json.load(f)["val"] if os.path.isfile(p)][:count]
        if paths:
            return serving.load_images(paths, size, resize)
    return np.random.default_rng(0).integers(0, 256, (count, *size, 3), dtype=np.uint8)
