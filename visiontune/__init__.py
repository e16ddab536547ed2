"""visiontune: transfer learning for image classification on Keras 3.

Example:

>>> import visiontune
>>> model = visiontune.build_classifier("efficientnetb0", num_classes=5)
>>> history = visiontune.fine_tune(model, train_ds, val_ds)

Every public name is importable from here; the subpackages follow the data
(see the README, "Architecture").
"""

from visiontune.common import quiet_start

quiet_start.import_tensorflow()  # First, so that commands start without its C++ lines.

from visiontune.backbones.registry import BACKBONES, BackboneSpec, list_backbones  # noqa: E402
from visiontune.backbones.weights import WeightsUnavailableError  # noqa: E402
from visiontune.common.version import __version__  # noqa: E402, F401
from visiontune.data.sources import load_data, load_image_folder  # noqa: E402
from visiontune.evaluation.explain import explain  # noqa: E402
from visiontune.evaluation.interpolate import interpolate  # noqa: E402
from visiontune.evaluation.label_issues import find_label_issues  # noqa: E402
from visiontune.export.saving import save_model  # noqa: E402
from visiontune.model.classifier import build_classifier  # noqa: E402
from visiontune.runs.config import TrainConfig  # noqa: E402
from visiontune.runs.run import run  # noqa: E402
from visiontune.training.compare import compare_methods  # noqa: E402
from visiontune.training.history import PhasedHistory  # noqa: E402
from visiontune.training.lr_find import lr_find  # noqa: E402
from visiontune.training.phases import Phase  # noqa: E402
from visiontune.training.recipe import fine_tune  # noqa: E402
from visiontune.tuning.adapters import enable_lora, merge_lora  # noqa: E402
from visiontune.tuning.freezing import (  # noqa: E402
    count_blocks,
    find_backbone,
    freeze_backbone,
    trainable_summary,
    unfreeze_top_blocks,
)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Phase",
    "PhasedHistory",
    "TrainConfig",
    "WeightsUnavailableError",
    "build_classifier",
    "compare_methods",
    "count_blocks",
    "enable_lora",
    "explain",
    "find_backbone",
    "find_label_issues",
    "fine_tune",
    "freeze_backbone",
    "interpolate",
    "list_backbones",
    "load_data",
    "load_image_folder",
    "lr_find",
    "merge_lora",
    "run",
    "save_model",
    "trainable_summary",
    "unfreeze_top_blocks",
]
