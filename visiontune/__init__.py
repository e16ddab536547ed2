"""visiontune: transfer learning for image classification on Keras 3.

Example:

>>> import visiontune
>>> model = visiontune.build_classifier("efficientnetb0", num_classes=5)
>>> history = visiontune.fine_tune(model, train_ds, val_ds)
"""

import warnings

# `visiontune.interpolate` and `visiontune.lr_find` are functions, and also modules run
# as `python -m visiontune.interpolate` / `-m visiontune.lr_find`. runpy warns when such a
# module was imported (here, by this file) before it runs; nothing goes wrong, because
# its main function does not depend on module state.
warnings.filterwarnings("ignore", category=RuntimeWarning,
                        message=r"'visiontune\.(interpolate|lr_find)' found in sys\.modules")

from visiontune import quiet_start  # noqa: E402

quiet_start.import_tensorflow()  # First, so that commands start without its C++ lines.

from visiontune.adapters import enable_lora, merge_lora  # noqa: E402
from visiontune.backbones import BACKBONES, BackboneSpec, list_backbones  # noqa: E402
from visiontune.classifier import build_classifier  # noqa: E402
from visiontune.data import load_data, load_image_folder  # noqa: E402
from visiontune.finetune import Phase, PhasedHistory, fine_tune  # noqa: E402
from visiontune.freezing import (  # noqa: E402
    count_blocks,
    find_backbone,
    freeze_backbone,
    trainable_summary,
    unfreeze_top_blocks,
)
from visiontune.interpolate import interpolate  # noqa: E402
from visiontune.lr_find import lr_find  # noqa: E402
from visiontune.weights import WeightsUnavailableError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Phase",
    "PhasedHistory",
    "WeightsUnavailableError",
    "build_classifier",
    "count_blocks",
    "enable_lora",
    "find_backbone",
    "fine_tune",
    "freeze_backbone",
    "interpolate",
    "list_backbones",
    "load_data",
    "load_image_folder",
    "lr_find",
    "merge_lora",
    "trainable_summary",
    "unfreeze_top_blocks",
]
