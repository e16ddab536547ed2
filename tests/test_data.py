import os

import numpy as np
import pytest
from PIL import Image

from visiontune.data import sources as data, images, pipeline as pipelines
from conftest import write_image_folder


def test_images_are_recognised_by_content(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "real_bmp.jpg", format="BMP")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    assert images.image_format(str(tmp_path / "real_bmp.jpg")) == "bmp"
    assert images.image_format(str(tmp_path / "text.jpg")) is None
    assert images.image_format(str(tmp_path / "empty.png")) is None


def test_scan_skips_hidden_and_non_image_files(tmp_path):
    root = write_image_folder(str(tmp_path), n_per_class=3)
    (tmp_path / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "red" / "notes.txt").write_text("hello")
    os.makedirs(tmp_path / "red" / ".ipynb_checkpoints")
    Image.new("RGB", (8, 8)).save(tmp_path / "red" / ".ipynb_checkpoints" / "x.png")
    files = data.scan_folder(root)
    assert files.class_names == ["blue", "green", "red"]
    assert files.counts() == {"blue": 3, "green": 3, "red": 3}
    assert not any("/." in p or p.endswith(".txt") for p in files.paths)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        data.scan_folder(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "only")
    with pytest.raises(ValueError, match="at least two class subfolders"):
        data.scan_folder(str(tmp_path))
    os.makedirs(tmp_path / "other")
    with pytest.raises(ValueError, match=r"Class folder .*only.* has no usable images"):
        data.scan_folder(str(tmp_path))


def test_split_is_stratified_reproducible_and_disjoint(tmp_path):
    files = data.scan_folder(write_image_folder(str(tmp_path), n_per_class=10))
    train, val = data.stratified_split(files, 0.2, seed=3)
    again_train, again_val = data.stratified_split(files, 0.2, seed=3)
    assert val.paths == again_val.paths and train.paths == again_train.paths
    assert val.counts() == {"blue": 2, "green": 2, "red": 2}
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(files.paths)
    _, other_val = data.stratified_split(files, 0.2, seed=4)
    assert other_val.paths != val.paths


def test_train_and_val_subfolders_are_used_and_checked(tmp_path):
    write_image_folder(str(tmp_path / "train"), n_per_class=4)
    write_image_folder(str(tmp_path / "val"), n_per_class=2, seed=1)
    splits = data.load_data(str(tmp_path), 24, batch_size=5)
    assert len(splits.train_files.paths) == 12 and len(splits.val_files.paths) == 6
    images, labels = next(iter(splits.val))
    assert images.shape == (5, 24, 24, 3) and images.dtype == "float32"
    assert 0 <= float(np.min(images)) and float(np.max(images)) <= 255
    os.rename(tmp_path / "val" / "red", tmp_path / "val" / "rouge")
    with pytest.raises(ValueError, match="differ from the training classes"):
        data.load_data(str(tmp_path), 24)


def test_pipeline_keeps_labels_with_their_images(tmp_path):
    """Red images must arrive labelled red after decoding, caching and shuffling."""
    splits = data.load_data(write_image_folder(str(tmp_path), n_per_class=6), 16,
                            batch_size=4, validation_split=0.5)
    for batch, labels in splits.train.concatenate(splits.val):
        channel_means = np.asarray(batch).mean(axis=(1, 2))
        dominant = np.argmax(channel_means, axis=1)  # r, g, b
        names = np.asarray(splits.class_names)[np.asarray(labels)]
        assert list(np.asarray(["red", "green", "blue"])[dominant]) == list(names)


def test_resize_keeps_aspect_ratio_with_centre_crop(tmp_path):
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, 20:40] = 255  # white centre third
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
        Image.fromarray(image).save(tmp_path / cls / "wide.png")
        Image.fromarray(image).save(tmp_path / cls / "wide2.png")
    files = data.scan_folder(str(tmp_path))
    batch, _ = next(iter(pipelines.file_pipeline(files, 20, batch_size=4)))
    assert float(np.min(batch[0])) > 250  # the crop kept only the white centre


def test_builtin_digits_work_offline_and_are_stratified():
    splits = data.load_data("builtin:digits", 32, batch_size=64, validation_split=0.2, seed=0)
    assert splits.class_names == [str(d) for d in range(10)]
    assert len(splits.train_files.paths) + len(splits.val_files.paths) == 1797
    counts = splits.val_files.counts()
    assert all(35 <= n <= 37 for n in counts.values())
    images, labels = next(iter(splits.train))
    assert images.shape == (64, 32, 32, 3) and float(np.max(images)) > 200
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey as RGB
    again = data.load_data("builtin:digits", 32, seed=0)
    assert again.val_files.paths == splits.val_files.paths
    with pytest.raises(ValueError, match="builtin:digits"):
        data.load_data("builtin:mnist", 32)
