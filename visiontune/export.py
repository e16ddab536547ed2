"""`python -m visiontune.export RUN_DIR --format savedmodel|tflite|onnx`: a model to serve.

The exported model takes raw uint8 RGB images, `labels.txt` is copied beside
it, and a parity check against the `.keras` model is printed.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

from visiontune import serving

_EXTENSIONS = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}


def parity(model, exported_path, fmt, pixels):
    """Returns the largest absolute difference between Keras and exported outputs."""
    expected = model.predict(pixels.astype(np.float32), verbose=0)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(exported_path)  # keep a reference: it owns the variables
        got = loaded.serve(tf.constant(pixels)).numpy()
    else:
        interpreter = tf.lite.Interpreter(model_path=exported_path)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], pixels.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])
    return float(np.max(np.abs(expected - got)))


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
    args = parser.parse_args(argv)
    try:
        model, _, resize = serving.load_run(args.run_dir)
        out_dir = os.path.join(args.run_dir, "export")
        path = args.output or os.path.join(out_dir, "model" + _EXTENSIONS[args.format])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        print(f"Exporting {args.format} to {os.path.abspath(path)} ...")
        written = serving.export(model, path, args.format, args.quantize)
    except (ValueError, OSError, ImportError) as error:
        print(f"visiontune.export: error: {error}", file=sys.stderr)
        return 2
    beside = written if os.path.isdir(written) else os.path.dirname(os.path.abspath(written))
    shutil.copy(os.path.join(args.run_dir, "labels.txt"), os.path.join(beside, "labels.txt"))
    if args.format != "onnx":
        pixels = sample_images(args.run_dir, model, resize)
        diff = parity(model, written, args.format, pixels)
        print(f"Parity on {len(pixels)} images: max |keras - {args.format}| = {diff:.2e}")
    print(f"Exported {os.path.abspath(written)} (input: uint8 RGB images, labels.txt beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
