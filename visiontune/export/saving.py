"""Saving a classifier as a plain `.keras` file that reloads without visiontune."""

from visiontune.common import atomic
from visiontune.tuning import adapters, freezing


def save_model(model, path):
    """Saves `model` to a `.keras` file atomically, with any LoRA adapters merged and every
    BatchNormalization frozen (see `freezing.batchnorm_frozen`)."""
    plain = adapters.merge_lora(model)
    with atomic.atomic_path(path) as tmp, freezing.batchnorm_frozen(plain):
        plain.save(tmp)
