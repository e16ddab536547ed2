"""Using a finished run: load it, predict on image files, export it for serving.

`predict`, `evaluate` and `export` (the `python -m visiontune.<command>` entry
points) share these helpers, so every path reads images and the run the same way.
"""

import os
import shutil

import keras
import numpy as np
import tensorflow as tf
import yaml

from visiontune.tuning import adapters
from visiontune.data import images, pipeline as pipelines, splits

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "dynamic", "float16")


def load_run(run_dir):
    """Returns `(model, class_names, resize policy)` of a run directory."""
    path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found: {run_dir!r} is not a finished visiontune "
                                "run (it has no model.keras).")
    with open(os.path.join(run_dir, "labels.txt"), encoding="utf-8") as f:
        class_names = [line.strip() for line in f if line.strip()]
    resize = "crop"
    config_path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            resize = (yaml.safe_load(f) or {}).get("resize", "crop")
    return keras.saving.load_model(path), class_names, resize


def image_paths(inputs):
    """Expands files and folders into image paths; returns `(paths, bad files)`."""
    paths, bad = [], []
    for item in inputs:
        if os.path.isdir(item):
            found, broken = images.list_images(item)
            paths += found
            bad += broken
        elif images.image_format(item):
            paths.append(item)
        else:
            bad.append(images.BadFile(item, "not found, or not a JPEG, PNG, GIF or BMP"))
    scan = images.check_decodable(paths, verbose=False)
    return scan.good, bad + scan.bad


def load_images(paths, image_size, resize="crop"):
    """Decodes and resizes image files as the training pipeline does: (n, h, w, 3) uint8."""
    files = splits.ImageFiles(list(paths), [0] * len(paths), ["?"])
    batches = [np.asarray(x) for x, _ in pipelines.file_pipeline(files, image_size, 64,
                                                                 resize=resize)]
    return np.concatenate(batches).astype(np.uint8)


def top_k(probabilities, class_names, k=3):
    """Returns, per image, the `k` most likely `(class name, probability)` pairs."""
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [[(class_names[j], float(p[j])) for j in row] for p, row in zip(probabilities, order)]


def export(model, path, fmt="savedmodel", quantize="none"):
    """Exports `model` to take raw uint8 images; returns the written path.

    SavedModel goes through Keras's own `ExportArchive`, with a `serve`
    signature on uint8 input. TFLite is converted from that SavedModel. ONNX
    is Keras's own exporter (`model.export(format="onnx")`, through tf2onnx)
    on the model with a uint8 input. LoRA adapters are merged first
    (`adapters.merge_lora`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Expected --format in {FORMATS}. Received: {fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Expected --quantize in {QUANTIZATIONS}. Received: {quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise ValueError(f"--quantize {quantize} applies to --format tflite only; "
                         f"{fmt} exports keep float32 weights. Drop --quantize, or export "
                         "to tflite.")
    model = adapters.merge_lora(model)
    if fmt == "onnx":
        return _write_onnx(model, path)
    saved = path if fmt == "savedmodel" else path + ".savedmodel"
    _write_saved_model(model, saved)
    if fmt == "savedmodel":
        return saved
    if fmt == "tflite":
        # Not Keras's `format="litert"`: it also allows TensorFlow (Flex) ops, which a
        # LiteRT runtime without the Flex delegate cannot run. Built-in ops only, here,
        # so a model that needs more fails at export rather than on the device.
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        with open(path, "wb") as f:
            f.write(converter.convert())
    shutil.rmtree(saved)
    return path


def _serving_signature(model):
    height, width = model.input_shape[1:3]
    return [tf.TensorSpec((None, height, width, 3), tf.uint8, name="image")]


def _uint8_input(model):
    """`model` behind a uint8 image input, for exporters that trace the model itself."""
    height, width = model.input_shape[1:3]
    pixels = keras.Input((height, width, 3), dtype="uint8", name="image")
    return keras.Model(pixels, model(keras.ops.cast(pixels, "float32"), training=False))


def _write_onnx(model, path):
    try:
        import tf2onnx  # noqa: F401  Keras's ONNX exporter converts through it.
    except ModuleNotFoundError:
        raise ImportError("Exporting to ONNX needs tf2onnx, which is not installed: "
                          "pip install 'visiontune[onnx]'") from None
    _uint8_input(model).export(path, format="onnx", verbose=False,
                               input_signature=_serving_signature(model))
    return path


def _write_saved_model(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(tf.cast(x, tf.float32), training=False),
                         input_signature=_serving_signature(model))
    archive.write_out(path, verbose=False)
