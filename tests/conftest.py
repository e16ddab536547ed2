import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
FLOWERS = os.path.abspath(os.path.join(SHARED, "datasets", "flowers-mini"))
# CI always has ../shared beside the clone and installs the test extra, so there a
# missing dataset or test dependency is a broken setup, not a reason to skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared(path):
    """Returns `path`; if it is missing, skips the test with the reason (fails it in CI)."""
    if os.path.isdir(path):
        return path
    message = (f"{path} is missing: this test needs ../shared beside the repository "
               f"(see the README's Tests section)")
    if IN_CI:
        pytest.fail(f"{message}; CI=true, where it must be present", pytrace=False)
    pytest.skip(message)


def require_module(name):
    """`pytest.importorskip`, except in CI, where a missing test dependency fails."""
    if IN_CI:
        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.fixture
def flowers():
    """The flowers-mini folder from ../shared."""
    return require_shared(FLOWERS)


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


def color_images(n_per_class, size=32, classes=("red", "green", "blue"), seed=0):
    """A learnable task: each class is one dominant colour channel, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(classes)):
        x = rng.uniform(0, 120, (n_per_class, size, size, 3))
        x[..., label] += rng.uniform(80, 135, (n_per_class, 1, 1))
        images.append(x)
        labels += [label] * n_per_class
    order = rng.permutation(len(labels))
    return (np.concatenate(images)[order].astype("float32"),
            np.asarray(labels, "int32")[order])


def free_ports(n):
    """`n` free TCP ports on 127.0.0.1, for a cluster of local processes."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_image_folder(root, n_per_class=6, size=40, classes=("red", "green", "blue"), seed=0):
    """Writes a folder of class subfolders with small JPEG and PNG images."""
    x, y = color_images(n_per_class, size, classes, seed)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = os.path.join(root, classes[label])
        os.makedirs(folder, exist_ok=True)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(image.astype("uint8")).save(os.path.join(folder, f"img{i:03d}.{ext}"))
    return root


def assert_picture(path, size=None):
    """`path` is a PNG, `size` = (width, height) pixels if given, with data drawn on it.

    Axes, ticks and text are black or grey; lines, bars, heatmaps and photos are
    coloured. So a figure whose axes are empty has (almost) no coloured pixels.
    """
    with Image.open(path) as image:
        assert image.format == "PNG", path
        if size is not None:
            assert image.size == size, (path, image.size)
        rgb = np.asarray(image.convert("RGB")).astype(int)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    assert np.mean(chroma > 60) > 0.001, f"{path} shows no data"


def tiny_backbone(size=32):
    """A small user backbone with named blocks and BatchNorm, for fast training tests."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="stem_rescale")(inputs)
    for i, filters in enumerate((8, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"block{i}a_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}a_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}a_relu")(x)
    return keras.Model(inputs, x, name="tiny")
