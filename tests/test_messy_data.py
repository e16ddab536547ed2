"""A folder as real users have them: broken, mislabelled, odd-format and duplicated files."""

import io
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import visiontune
import visiontune.common.network
from visiontune.cli import doctor as doctor_cli
from visiontune.data import sources as data, doctor, pipeline as pipelines
from conftest import color_images, require_module, tiny_backbone, write_image_folder


def _save(image, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture()
def messy(tmp_path):
    """train/ and val/ with good images plus every kind of trouble; returns (root, bad)."""
    root = tmp_path / "messy"
    write_image_folder(str(root / "train"), n_per_class=5, classes=("cats", "dogs"))
    write_image_folder(str(root / "val"), n_per_class=3, classes=("cats", "dogs"), seed=1)
    cats, dogs = root / "train" / "cats", root / "train" / "dogs"
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(buffer, format="JPEG")
    (cats / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (cats / "notes.jpg").write_text("this is not a picture")
    (dogs / "empty.png").write_bytes(b"")
    _save(Image.new("RGB", (30, 20), (0, 0, 250)), str(cats / "bitmap.jpg"), format="BMP")
    _save(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), str(dogs / "cmyk.jpg"))
    _save(Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)),
          str(dogs / "deep.png"))
    _save(Image.new("RGBA", (32, 32), (10, 200, 10, 128)), str(cats / "alpha.png"))
    _save(Image.new("L", (32, 32), 90), str(dogs / "gray.png"))
    (cats / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
    (root / "train" / "README.txt").write_text("class folders below")
    shutil.copy(cats / "img000.jpg" if (cats / "img000.jpg").exists() else
                next(p for p in cats.iterdir() if p.name.startswith("img")),
                root / "val" / "cats" / "copied_from_train.jpg")
    bad = {str(cats / "truncated.jpg"), str(cats / "notes.jpg"), str(dogs / "empty.png")}
    return str(root), bad


def test_loader_skips_and_reports_exactly_the_bad_files(messy):
    root, bad = messy
    splits = data.load_data(root, 32, batch_size=4, verbose=False)
    assert {b.path for b in splits.bad_files} == bad
    reasons = {os.path.basename(b.path): b.reason for b in splits.bad_files}
    assert "cannot be decoded" in reasons["truncated.jpg"]
    assert "not a JPEG, PNG, GIF or BMP" in reasons["notes.jpg"]
    assert "empty file" in reasons["empty.png"]
    used = set(splits.train_files.paths)
    for odd in ("bitmap.jpg", "cmyk.jpg", "deep.png", "alpha.png", "gray.png"):
        assert any(p.endswith(odd) for p in used), odd
    assert not any(".DS_Store" in p or p.endswith(".txt") for p in used)
    assert len(splits.duplicates) == 1 and splits.duplicates[0][1].endswith("copied_from_train.jpg")
    report = splits.report()
    assert report["bad_file_count"] == 3 and len(report["train_val_duplicates"]) == 1


def test_odd_formats_decode_to_the_right_rgb(messy):
    root, _ = messy
    files = data.scan_folder(os.path.join(root, "train"))
    pick = lambda name: files.subset([p.endswith(name) for p in files.paths])  # noqa: E731
    for name, expected in [("bitmap.jpg", (0, 0, 250)), ("cmyk.jpg", (255, 0, 0)),
                           ("alpha.png", (10, 200, 10)), ("gray.png", (90, 90, 90))]:
        batch, _ = next(iter(pipelines.file_pipeline(pick(name), 16, resize="stretch")))
        np.testing.assert_allclose(np.asarray(batch)[0, 8, 8], expected, atol=3, err_msg=name)


class _CountSteps(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.steps = getattr(self, "steps", [])

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.steps[-1] += 1


def test_loader_trains_on_the_messy_folder(messy):
    root, bad = messy
    splits = data.load_data(root, 32, batch_size=4, augment_preset="light", verbose=False)
    good = splits.train_files.paths
    assert len(good) == 15 and not set(good) & bad  # 10 plain images and 5 odd but readable
    assert sum(int(images.shape[0]) for images, _ in splits.train) == 15  # none dropped
    model = visiontune.build_classifier(tiny_backbone(), 2)
    before = [w.copy() for w in model.get_weights()]
    counter = _CountSteps()
    history = visiontune.fine_tune(model, splits.train, splits.val, head_epochs=1,
                                   finetune_epochs=1, finetune_lr=1e-3, callbacks=[counter],
                                   verbose=0)
    # Every readable image in every epoch: 15 images in batches of 4. A pipeline that
    # dropped a batch around a bad file, or stopped at it, would take fewer steps.
    assert counter.steps == [4, 4]
    assert history.history["phase"] == ["head", "finetune"]
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["val_loss"]).all()
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert any(changed), "nothing trained"


def test_strict_mode_stops_and_names_every_bad_file(messy):
    root, bad = messy
    with pytest.raises(ValueError, match="--strict") as error:
        data.load_data(root, 32, strict=True, verbose=False)
    assert all(path in str(error.value) for path in bad)


def test_doctor_finds_the_duplicate_and_the_odd_files(messy, capsys):
    root, bad = messy
    report = doctor.diagnose(root)
    assert [os.path.basename(p) for p in report["duplicates"]["train_val"][0]][1] == \
        "copied_from_train.jpg"
    assert {b["path"] for b in report["bad_files"]} == bad
    modes = report["color_modes"]
    assert modes["cmyk"] == 1 and modes["grayscale"] == 2 and modes["with_alpha"] == 1
    assert report["image_size"]["width"]["min"] == 24
    assert doctor_cli.main(["--data", root]) == 0
    out = capsys.readouterr().out
    assert "across train and val (leakage): 1" in out and "truncated.jpg" in out


def test_class_weight_really_weights_the_loss_with_tf_data():
    """tensorflow/tensorflow#33550: class_weight once did nothing with tf.data."""
    x, y = color_images(6, size=32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y))
    model = visiontune.build_classifier(tiny_backbone(), 3, l2=0.0, dropout=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # a rate of 0: weights never move
                  loss=keras.losses.SparseCategoricalCrossentropy())
    probs = model.predict(x, verbose=0)
    per_image = -np.log(probs[np.arange(len(y)), y])
    weights = {0: 5.0, 1: 1.0, 2: 0.5}
    plain = model.fit(ds, epochs=1, verbose=0).history["loss"][0]
    weighted = model.fit(ds, epochs=1, class_weight=weights, verbose=0).history["loss"][0]
    assert plain == pytest.approx(per_image.mean(), rel=1e-4)
    expected = np.mean(per_image * np.vectorize(weights.get)(y))
    assert weighted == pytest.approx(expected, rel=1e-4)
    assert abs(weighted - plain) > 0.05 * plain


def test_balanced_class_weight_from_counts(tmp_path):
    root = tmp_path / "imbalanced"
    write_image_folder(str(root), n_per_class=8, classes=("a", "b"))
    for path in sorted((root / "b").iterdir())[:6]:
        path.unlink()
    splits = data.load_data(str(root), 16, validation_split=0.25, verbose=False)
    counts = splits.train_files.counts()
    weights = splits.class_weight()
    assert counts["a"] > counts["b"]
    assert weights[1] > weights[0]
    total = sum(counts.values())
    assert weights[0] == pytest.approx(total / (2 * counts["a"]))


def test_tfds_mock_data_flows_through_the_same_pipeline(monkeypatch):
    tfds = require_module("tensorflow_datasets")
    monkeypatch.setattr(visiontune.common.network, "host_reachable", lambda url, timeout=4.0: True)
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = data.load_data("tfds:tf_flowers", 32, batch_size=8, validation_split=0.25)
        batches = list(splits.train)
    assert splits.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert splits.train_files.paths[0] == "tf_flowers:train[:75%][0]"  # tf_flowers has no val
    images, labels = batches[0]
    assert images.shape == (8, 32, 32, 3) and images.dtype == "float32"
    assert 0 <= float(np.min(images)) and float(np.max(images)) <= 255
    seen = np.concatenate([np.asarray(y) for _, y in batches])
    assert sorted(seen.tolist()) == sorted(splits.train_files.labels)  # mock gives 20 a split


def test_tfds_offline_and_unprepared_fails_fast_with_a_clear_error(monkeypatch, tmp_path):
    require_module("tensorflow_datasets")
    monkeypatch.setattr(visiontune.common.network, "host_reachable", lambda url, timeout=4.0: False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(OSError, match="tfds build tf_flowers"):
        data.load_data("tfds:tf_flowers", 32)


def test_arrays_with_multi_hot_labels():
    x, y = color_images(10, size=20)
    multi_hot = np.eye(3, dtype="float32")[y]
    multi_hot[:, 0] = 1.0
    splits = data.load_data((x, multi_hot), 16, batch_size=5, validation_split=0.2)
    _, labels = next(iter(splits.train))
    assert labels.shape == (5, 3) and float(np.min(labels[:, 0])) == 1.0
