"""The settings of a training run, and the command line generated from them.

`TrainConfig` is the single list of settings: each field carries its flag
group and help text, `build_parser` turns the fields into `argparse` flags, and
`run(config)` in `train.py` takes the same object from notebooks. Adding a
setting is adding a field here.
"""

import argparse
import dataclasses
import inspect
import typing

from visiontune import augment as augment_lib, data as data_lib, finetune

# The schedule's defaults are `fine_tune`'s, so the API and the CLI never disagree.
_RECIPE = {name: p.default for name, p in inspect.signature(finetune.fine_tune).parameters.items()}

GROUPS = {
    "Data": "where the images come from and how they are batched",
    "Model": "backbone and new classification head",
    "Schedule": "the two training phases",
    "Output": "run directory, seed and logging",
}


def _field(default, group, help, **extra):
    return dataclasses.field(default=default, metadata={"group": group, "help": help, **extra})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of `python -m visiontune.train`; field names match the flags."""

    # Data
    data: str = _field(
        "builtin:digits", "Data", "folder of class subfolders (or with train/ and val/ "
        "subfolders), or builtin:digits, scikit-learn's digits, which need no network")
    val_data: typing.Optional[str] = _field(
        None, "Data", "separate validation folder (default: val/ inside --data, or a split)")
    validation_split: float = _field(
        0.2, "Data", "fraction of each class held out for validation when there is no "
                     "validation folder")
    image_size: typing.Optional[int] = _field(
        None, "Data", "input side length in pixels (default: the backbone's own)")
    batch_size: int = _field(32, "Data", "images per batch")
    resize: str = _field("crop", "Data", "crop: keep the aspect ratio and crop the centre; "
                         "stretch: resize the whole image", choices=data_lib.RESIZE_POLICIES)
    augment: str = _field("none", "Data", "training augmentation preset: light = flip, "
                          "rotation, zoom, contrast; strong = light + RandAugment",
                          choices=augment_lib.PRESETS)
    mix: str = _field("none", "Data", "batch mixing of training images and labels",
                      choices=augment_lib.MIXES)
    class_weight: str = _field("none", "Data", "balanced: weight the loss by inverse class "
                               "frequency", choices=("none", "balanced"))
    strict: bool = _field(False, "Data", "stop on undecodable image files instead of "
                          "skipping and reporting them")
    split: typing.Optional[str] = _field(
        None, "Data", "reuse the train/validation split saved as split.json by an earlier run")
    # Model
    backbone: str = _field("efficientnet_lite0", "Model", "registered backbone name "
                           "(python -c 'import visiontune; print(visiontune.list_backbones())')")
    weights: typing.Optional[str] = _field(
        "imagenet", "Model", "'imagenet', a weights file path, or 'none' for random weights")
    pooling: str = _field("avg", "Model", "global pooling of the feature map",
                          choices=("avg", "max", "avgmax"))
    dropout: float = _field(0.2, "Model", "dropout rate in the head")
    hidden_units: tuple = _field((), "Model", "sizes of hidden Dense layers in the head, "
                                 "comma-separated, e.g. 256 or 512,128 (default: none)")
    l2: float = _field(1e-4, "Model", "L2 penalty on the head's kernels")
    l1: float = _field(0.0, "Model", "L1 penalty on the head's kernels")
    # Schedule
    head_epochs: int = _field(
        _RECIPE["head_epochs"], "Schedule", "phase 1 epochs: the head on a frozen backbone")
    head_lr: float = _field(_RECIPE["head_lr"], "Schedule", "phase 1 learning rate")
    finetune_epochs: int = _field(
        _RECIPE["finetune_epochs"], "Schedule", "phase 2 epochs: top blocks unfrozen "
                                                "(0 skips phase 2)")
    finetune_lr: float = _field(_RECIPE["finetune_lr"], "Schedule",
                                "phase 2 peak learning rate")
    unfreeze_blocks: int = _field(
        _RECIPE["unfreeze_blocks"], "Schedule", "backbone blocks to unfreeze in phase 2, "
                                                "counted from the top; BatchNorm stays frozen")
    optimizer: str = _field(_RECIPE["optimizer"], "Schedule", "optimizer of both phases",
                            choices=finetune.OPTIMIZERS)
    schedule: str = _field(_RECIPE["schedule"], "Schedule", "phase 2 learning-rate schedule: "
                           "cosine decays to 0 after the warmup", choices=finetune.SCHEDULES)
    warmup_epochs: int = _field(_RECIPE["warmup_epochs"], "Schedule",
                                "phase 2 linear warmup epochs (cosine only)")
    # Output
    output: typing.Optional[str] = _field(
        None, "Output", "run directory (default: runs/<timestamp>-<backbone>)")
    overwrite: bool = _field(False, "Output", "replace the contents of an existing run "
                             "directory")
    seed: int = _field(0, "Output", "seed for the split, shuffling, augmentation and weights")
    quiet: bool = _field(False, "Output", "no progress bars or logs")


def build_parser(prog="python -m visiontune.train", description=None):
    """Returns an `argparse` parser with one flag per `TrainConfig` field, in groups."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {name: parser.add_argument_group(name, text) for name, text in GROUPS.items()}
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        flag = "--" + field.name.replace("_", "-")
        group = groups[meta["group"]]
        if hints[field.name] is bool:
            group.add_argument(flag, action="store_true", help=meta["help"])
            continue
        group.add_argument(flag, type=_parser_type(hints[field.name]), default=field.default,
                           choices=meta.get("choices"), help=meta["help"],
                           metavar=None if meta.get("choices") else field.name.upper())
    return parser


def config_from_args(args):
    """Returns a `TrainConfig` from parsed arguments."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _parser_type(hint):
    if hint is tuple:
        return _int_tuple
    args = typing.get_args(hint)
    return next((a for a in args if a is not type(None)), hint) if args else hint


def _int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 256 or 512,128; got {text!r}") from None
