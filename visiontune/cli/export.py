"""`python -m visiontune.export RUN_DIR --format savedmodel|tflite|onnx`: a model to serve.

The exported model takes raw uint8 RGB images, `labels.txt` is copied beside
it, and a parity check against the `.keras` model is printed.
"""

import argparse
import os
import shutil
import sys
import time

from visiontune.export import parity as parity_lib, serving
from visiontune.common import quiet_start

_EXTENSIONS = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}


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
    missing = parity_lib.runtime_missing(args.format)
    if missing:
        step.say(missing)
    else:
        pixels = parity_lib.sample_images(args.run_dir, model, resize)
        try:
            diff = parity_lib.parity(model, written, args.format, pixels)
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
