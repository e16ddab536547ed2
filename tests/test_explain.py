"""Grad-CAM (`visiontune.explain`) on a case whose answer is known, and its command."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import visiontune

SIZE, PATCH = 48, 12


def patch_images(count, seed):
    """Noisy grey images with a red (class 0) or blue (class 1) patch at a random place,
    and a white patch of the same size elsewhere: brighter than either, and telling
    nothing. Returns images, labels and the class patches' top-left corners."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(60, 140, (count, SIZE, SIZE, 3)).astype("float32")
    labels = rng.integers(0, 2, count)
    corners = []
    for image, label in zip(images, labels):
        while True:
            (y, x), (wy, wx) = rng.integers(0, SIZE - PATCH, (2, 2))
            if abs(y - wy) >= PATCH or abs(x - wx) >= PATCH:  # Apart.
                break
        image[wy:wy + PATCH, wx:wx + PATCH] = 255.0
        image[y:y + PATCH, x:x + PATCH] = (230.0, 40.0, 40.0) if label == 0 else (40, 40, 230)
        corners.append((y, x))
    return images, labels, np.array(corners)


def small_backbone(kind, shape=(SIZE, SIZE)):
    """Two stride-2 stages: a 12x12 feature map for 48-pixel images."""
    inputs = keras.Input((*shape, 3))
    x = inputs
    for i, filters in enumerate((16, 32), start=1):
        if kind == "depthwise":  # MobileNet's block: depthwise, then pointwise.
            x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"expand{i}")(x)
            x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                                             name=f"depthwise{i}")(x)
        else:
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                    name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name=f"small_{kind}")


@pytest.fixture(scope="module", params=["batchnorm", "depthwise"])
def trained(request):
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(small_backbone(request.param), 2, None,
                                        preprocessing="tf", dropout=0.0)
    backbone = visiontune.find_backbone(model)
    backbone.trainable = True
    for layer in backbone.layers:  # BatchNorm in inference mode, as visiontune trains it.
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y, _ = patch_images(400, seed=1)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    return model


def _inside(heatmaps, corners):
    """For each map, whether its peak lies in the class patch."""
    peaks = [np.unravel_index(h.argmax(), h.shape) for h in heatmaps]
    return np.array([y <= py < y + PATCH and x <= px < x + PATCH
                     for (py, px), (y, x) in zip(peaks, corners)])


def test_the_heatmap_peaks_on_the_patch_that_sets_the_class(trained):
    images, labels, corners = patch_images(60, seed=2)
    probabilities = trained.predict(images, verbose=0)
    assert (probabilities.argmax(1) == labels).mean() > 0.9  # It learned the task.
    heatmaps = visiontune.explain(trained, images, class_index=labels)
    assert heatmaps.shape == (60, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and np.isclose(heatmaps.max(axis=(1, 2)), 1).mean() > 0.9
    assert _inside(heatmaps, corners).mean() >= 0.8
    # The other class's map does not point at the patch (the patch is evidence against
    # it): a map that ignored the class, such as the feature map's sum without the
    # gradients' weights, would.
    other = visiontune.explain(trained, images, class_index=1 - labels)
    assert _inside(other, corners).mean() < 0.2
    # None explains each image's predicted class: here, its label.
    predicted = visiontune.explain(trained, images)
    np.testing.assert_allclose(predicted[probabilities.argmax(1) == labels],
                               heatmaps[probabilities.argmax(1) == labels], atol=1e-6)


def test_a_reloaded_model_gives_the_same_maps(trained, tmp_path):
    images, _, _ = patch_images(8, seed=3)
    path = str(tmp_path / "model.keras")
    visiontune.save_model(trained, path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(visiontune.explain(reloaded, images),
                               visiontune.explain(trained, images), atol=1e-5)


def test_bad_arguments_are_named(trained):
    images, _, _ = patch_images(3, seed=4)
    with pytest.raises(ValueError, match="class_index"):
        visiontune.explain(trained, images, class_index=2)
    with pytest.raises(ValueError, match="one per"):
        visiontune.explain(trained, images, class_index=[0, 1])
    with pytest.raises(ValueError, match="Resize"):
        visiontune.explain(trained, images[:, :40, :40])


def test_the_maps_are_grad_cam_exactly():
    """With average pooling and one Dense, the gradient of class c's logit with respect
    to the feature map A is W[:, c] / (h * w) everywhere, so Grad-CAM is
    ReLU(A @ W[:, c]) scaled to a peak of 1, upsampled bilinearly. Three classes (the
    softmax's gradient would differ) and images taller than wide (a height/width swap
    would show)."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(small_backbone("batchnorm", (48, 32)), 3, None,
                                        preprocessing="tf", dropout=0.0)
    images = np.random.default_rng(7).uniform(0, 255, (4, 48, 32, 3)).astype("float32")
    classes = np.array([0, 1, 2, 1])
    heatmaps = visiontune.explain(model, images, class_index=classes)
    features = visiontune.find_backbone(model)(images / 127.5 - 1.0).numpy()  # "tf" scaling
    kernel = model.layers[-1].kernel.numpy()
    expected = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, classes]), 0)
    expected = tf.image.resize(expected[..., None], (48, 32), method="bilinear")[..., 0].numpy()
    expected /= expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(heatmaps, expected, atol=1e-4)


def test_a_model_without_a_softmax_dense_at_the_end_is_refused():
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(small_backbone("batchnorm"), 3, None)
    scaled = keras.Model(model.input, keras.layers.Rescaling(0.5, name="halve")(model.output))
    with pytest.raises(ValueError, match="Dense layer with a softmax or sigmoid.*'halve'"):
        visiontune.explain(scaled, np.zeros((1, SIZE, SIZE, 3)))


def test_the_command_writes_an_overlay_per_image(trained, tmp_path):
    from conftest import assert_picture

    run = tmp_path / "run"
    run.mkdir()
    visiontune.save_model(trained, str(run / "model.keras"))
    (run / "labels.txt").write_text("red\nblue\n", encoding="utf-8")
    images, _, _ = patch_images(2, seed=6)
    for folder in ("a", "b"):  # The same file name in two folders.
        (tmp_path / folder).mkdir()
    keras.utils.save_img(str(tmp_path / "a" / "img.png"), images[0].astype("uint8"))
    keras.utils.save_img(str(tmp_path / "b" / "img.png"), images[1].astype("uint8"))
    out = tmp_path / "explained"
    command = [sys.executable, "-m", "visiontune.explain", str(run), str(tmp_path / "a"),
               str(tmp_path / "b"), "--output", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def explain(*extra):
        return subprocess.run(command + list(extra), capture_output=True, text=True, env=env,
                              timeout=300)

    done = explain()
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["img-2.gradcam.png", "img.gradcam.png"]
    for name in os.listdir(out):
        assert_picture(str(out / name))
    assert len([line for line in done.stdout.splitlines() if "-> " in line]) == 2
    before = (out / "img.gradcam.png").read_bytes()
    again = explain("--class", "blue")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "img.gradcam.png").read_bytes() == before  # Nothing replaced.
    blue = explain("--class", "blue", "--overwrite")
    assert blue.returncode == 0, blue.stderr[-3000:]
    assert all(": blue (" in line for line in blue.stdout.splitlines() if "-> " in line)
    wrong = explain("--class", "green", "--overwrite")
    assert wrong.returncode == 2 and "'green' is not one of the run's classes" in wrong.stderr
