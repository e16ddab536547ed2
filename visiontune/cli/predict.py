"""`python -m visiontune.predict RUN_DIR IMAGE_OR_FOLDER... [--top-k 3]`: classify images."""

import argparse
import csv
import json
import sys

from visiontune.evaluation import metrics as evaluation
from visiontune.data import images
from visiontune.export import serving
from visiontune.common import quiet_start


def main(argv=None):
    """Prints (or writes as CSV/JSON) the top-k classes of every image."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.predict",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (with model.keras)")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    parser.add_argument("--format", choices=("text", "csv", "json"), default="text")
    parser.add_argument("--output", help="write here instead of standard output")
    parser.add_argument("--tta", choices=evaluation.TTA, default="none",
                        help="test-time augmentation: flip averages each image with its mirror")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    try:
        model, class_names, resize = serving.load_run(args.run_dir)
        paths, bad = serving.image_paths(args.inputs)
        if not paths:
            raise ValueError(f"No readable images in {args.inputs}.")
        pixels = serving.load_images(paths, model.input_shape[1:3], resize)
    except (ValueError, OSError) as error:
        print(f"visiontune.predict: error: {error}", file=sys.stderr)
        return 2
    if bad:
        print(images.format_bad_files(bad), file=sys.stderr)
    ranked = serving.top_k(evaluation.probabilities(model, pixels, args.tta), class_names,
                           args.top_k)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        _write(out, args.format, paths, ranked)
    finally:
        if args.output:
            out.close()
    return 0


def _write(out, fmt, paths, ranked):
    if fmt == "json":
        json.dump([{"path": p, "top_k": [{"class": c, "probability": round(q, 6)} for c, q in r]}
                   for p, r in zip(paths, ranked)], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["path", "rank", "class", "probability"])
        for path, row in zip(paths, ranked):
            for rank, (name, prob) in enumerate(row, start=1):
                writer.writerow([path, rank, name, f"{prob:.6f}"])
    else:
        for path, row in zip(paths, ranked):
            out.write(f"{path}: " + ", ".join(f"{c} {q:.3f}" for c, q in row) + "\n")
