"""`python -m visiontune.export RUN_DIR --format savedmodel|tflite|onnx`: a model to serve.

The exported model takes raw uint8 RGB images, `labels.txt` is copied beside
it, and a parity check against the `.keras` model is printed.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time

import numpy as np
import tensorflow as tf

from visiontune import serving
from visiontune import quiet_start

_EXTENSIONS = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}


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


def _parity_runtime_missing(fmt):
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


def main(argv=None):
    """Entry point of `python -m visiontune.export`."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (with model.keras)")
    parser.add_argument("--format", choices=serving.FORMATS, default="savedmodel")
    parser.add_argument("--quantize", choices=serving.QUANTIZATIONS, default="none",
                        help="TFLite weight quantization")
    parser.add_argument("--output", help="where to write (default RUN_DIR/export/model...)")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    step = _Steps(3, quiet=args.quiet)
    try:
        step("loading the run's model.keras")
        model, _, resize = serving.load_run(args.run_dir)
        out_dir = os.path.join(args.run_dir, "export")
        path = args.output or os.path.join(out_dir, "model" + _EXTENSIONS[args.format])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        step(f"writing {args.format} to {os.path.abspath(path)}")
        written = serving.export(model, path, args.format, args.quantize)
    except (ValueError, OSError, ImportError) as error:
        print(f"visiontune.export: error: {error}", file=sys.stderr)
        return 2
    beside = written if os.path.isdir(written) else os.path.dirname(os.path.abspath(written))
    shutil.copy(os.path.join(args.run_dir, "labels.txt"), os.path.join(beside, "labels.txt"))
    step("checking parity with the Keras model")
    missing = _parity_runtime_missing(args.format)
    if missing:
        step.say(missing)
    else:
        pixels = sample_images(args.run_dir, model, resize)
        try:
            diff = parity(model, written, args.format, pixels)
        except Exception as error:  # The runtime's own error types vary.
            print(f"visiontune.export: error: {os.path.abspath(written)} was written, but "
                  f"running it in the {args.format} runtime failed: {error}", file=sys.stderr)
            return 2
        step.say(f"Parity on {len(pixels)} images: max |keras - {args.format}| = "
                 f"{diff:.2e}")
    step.say(f"Exported {os.path.abspath(written)} (input: uint8 RGB images, labels.txt "
             f"beside it) in {time.perf_counter() - step.began:.1f} s")
    return 0


class _Steps:
    """Prints `[i/n] what` with the elapsed time; export's steps are single calls
    that report no progress of their own, so a step counter is what can be shown."""

    def __init__(self, total, quiet=False):
        self.total, self.done, self.quiet = total, 0, quiet
        self.began = time.perf_counter()

    def __call__(self, what):
        self.done += 1
        self.say(f"[{self.done}/{self.total}] {what} ({time.perf_counter() - self.began:.1f} s)")

    def say(self, text):
        if not self.quiet:
            print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
