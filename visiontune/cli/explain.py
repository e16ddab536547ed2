"""`python -m visiontune.explain RUN_DIR IMAGE_OR_FOLDER... --output DIR`: Grad-CAM overlays.

For each image it writes `DIR/<name>.gradcam.png`: the image as the model sees
it (resized as in training) beside the Grad-CAM heatmap of the predicted class
(or of `--class`) over it, titled with the class and its probability.
"""

import argparse
import os
import sys

from visiontune.common import quiet_start
from visiontune.data import images
from visiontune.export import serving


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m visiontune.explain",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (with model.keras)")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--output", required=True,
                        help="folder for the overlays (created if missing)")
    parser.add_argument("--class", dest="class_name",
                        help="explain this class for every image, instead of each image's "
                             "predicted class")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace overlays already in --output")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    from visiontune.evaluation import explain, plots

    try:
        model, class_names, resize = serving.load_run(args.run_dir)
        if len(class_names) != model.output_shape[-1]:
            raise ValueError(f"{args.run_dir!r}: labels.txt names {len(class_names)} classes "
                             f"but model.keras has {model.output_shape[-1]} outputs.")
        class_index = _class_index(args.class_name, class_names)
        paths, bad = serving.image_paths(args.inputs)
        if not paths:
            raise ValueError(f"No readable images in {args.inputs}.")
        targets = _targets(paths, args.output, args.overwrite)
        os.makedirs(args.output, exist_ok=True)
        pixels = serving.load_images(paths, model.input_shape[1:3], resize)
        heatmaps = explain.explain(model, pixels, class_index)
    except (ValueError, OSError) as error:
        print(f"visiontune.explain: error: {error}", file=sys.stderr)
        return 2
    if bad:
        print(images.format_bad_files(bad), file=sys.stderr)
    probabilities = model.predict(pixels, verbose=0)
    chosen = probabilities.argmax(axis=1) if class_index is None else [class_index] * len(paths)
    for path, target, image, heatmap, row, k in zip(paths, targets, pixels, heatmaps,
                                                    probabilities, chosen):
        predicted = row.argmax()
        title = (f"{os.path.basename(path)}\npredicted: {class_names[predicted]} "
                 f"({row[predicted]:.2f})")
        if class_index is not None:
            title += f"\nexplained: {class_names[k]} ({row[k]:.2f})"
        plots.explanation_grid([image], [heatmap], [title], target)
        print(f"{path}: {class_names[k]} ({row[k]:.3f}) -> {target}")
    return 0


def _class_index(name, class_names):
    if name is None:
        return None
    if name not in class_names:
        raise ValueError(f"--class {name!r} is not one of the run's classes: "
                         f"{', '.join(class_names)}.")
    return class_names.index(name)


def _targets(paths, output, overwrite):
    """One overlay file per image, named after it (`<name>-2.gradcam.png` for the second
    image of the same name, in another folder); refuses to replace existing ones."""
    targets, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = f"{stem}.gradcam.png", 1
        while name.lower() in used:  # Case too: some filesystems ignore it.
            n += 1
            name = f"{stem}-{n}.gradcam.png"
        used.add(name.lower())
        targets.append(os.path.join(output, name))
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise FileExistsError(
            f"--output {output!r} already holds {len(existing)} of these overlays (e.g. "
            f"{os.path.basename(existing[0])!r}). Pass --overwrite to replace them, or choose "
            "another --output.")
    return targets
