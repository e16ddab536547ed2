import os

import pytest
from keras.src.utils import file_utils

from visiontune.backbones import registry as backbones, weights
from visiontune.common import network


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setattr(network, "host_reachable", lambda url, timeout=4.0: False)


def test_imagenet_offline_names_the_expected_file(offline):
    target = os.path.join(weights.keras_cache_dir(),
                          "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    if os.path.exists(target):
        pytest.skip(f"{target} is cached on this machine")
    with pytest.raises(weights.WeightsUnavailableError) as error:
        backbones.create_backbone("resnet50", weights="imagenet", input_size=32)
    message = str(error.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert target in message and "--weights PATH" in message


def test_cached_file_is_used_without_the_network(tmp_path, offline):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.h5").write_bytes(b"cached")
    with weights.offline_guard("test"):
        path = file_utils.get_file("w.h5", "https://example.invalid/w.h5",
                                   cache_subdir="models", cache_dir=str(tmp_path))
    assert open(path, "rb").read() == b"cached"


def test_corrupt_cached_file_is_reported_as_corrupt(tmp_path, offline):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.h5").write_bytes(b"truncated")
    with weights.offline_guard("test"), pytest.raises(weights.WeightsUnavailableError,
                                                      match="corrupt or incomplete"):
        file_utils.get_file("w.h5", "https://example.invalid/w.h5", cache_subdir="models",
                            cache_dir=str(tmp_path), file_hash="0" * 64)


def test_guard_is_removed_afterwards():
    original = file_utils.get_file
    with weights.offline_guard("test"):
        assert file_utils.get_file is not original
    assert file_utils.get_file is original


def test_unreachable_host_is_detected_quickly():
    assert network.host_reachable("https://host.invalid/file.h5", timeout=2.0) is False


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*'imagenet', None"):
        weights.resolve(str(tmp_path / "nope.h5"))
    with pytest.raises(TypeError, match="Expected `weights`"):
        weights.resolve(3)
