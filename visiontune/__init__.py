"""visiontune: transfer learning for image classification on Keras 3.

Example:

>>> import visiontune
>>> model = visiontune.build_classifier("efficientnetb0", num_classes=5)
>>> history = visiontune.fine_tune(model, train_ds, val_ds)
"""

from visiontune.backbones import BACKBONES, BackboneSpec, list_backbones
from visiontune.classifier import build_classifier
from visiontune.data import load_data, load_image_folder
from visiontune.finetune import Phase, PhasedHistory, fine_tune
from visiontune.freezing import (
    count_blocks,
    find_backbone,
    freeze_backbone,
    trainable_summary,
    unfreeze_top_blocks,
)
from visiontune.weights import WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Phase",
    "PhasedHistory",
    "WeightsUnavailableError",
    "build_classifier",
    "count_blocks",
    "find_backbone",
    "fine_tune",
    "freeze_backbone",
    "list_backbones",
    "load_data",
    "load_image_folder",
    "trainable_summary",
    "unfreeze_top_blocks",
]
