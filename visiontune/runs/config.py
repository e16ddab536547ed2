"""The settings of a training run: `TrainConfig`, its YAML form, and their checks.

`TrainConfig` is the single list of settings: each field carries its flag
group and help text, `flags.build_parser` turns the fields into `argparse`
flags, and `run(config)` (`run.py`) takes the same object from notebooks.
Adding a setting is adding a field here. A YAML file (`--config run.yaml`)
sets defaults and flags override them; `load_yaml` and `check` check keys,
types and ranges.
"""

import argparse
import dataclasses
import difflib
import inspect
import typing

import yaml

from visiontune.data import augment as augment_lib, sources as data_lib
from visiontune.backbones import registry as backbones
from visiontune.training import caching, distribute
from visiontune.training import optimizers, recipe

# The schedule's defaults are `fine_tune`'s, so the API and the CLI never disagree.
_RECIPE = {name: p.default for name, p in inspect.signature(recipe.fine_tune).parameters.items()}

GROUPS = {
    "Data": "where the images come from and how they are batched",
    "Model": "backbone and new classification head",
    "Schedule": "the two training phases",
    "Speed": "caching, precision and compilation",
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
    label_issues: bool = _field(
        True, "Data", "before training, rank the training images whose label the frozen "
        "ImageNet features doubt (confident learning on out-of-fold logistic regression) "
        "into label_issues.csv, and count them in data_report.json")
    # Model
    backbone: str = _field("efficientnet_lite0", "Model", "registered backbone name "
                           "(python -c 'import visiontune; print(visiontune.list_backbones())')")
    backbone_args: dict = dataclasses.field(default_factory=dict, metadata={
        "group": "Model", "flag": "--backbone-arg", "metavar": "KEY=VALUE",
        "help": "an argument of the backbone's constructor, e.g. alpha=0.25 for mobilenet; "
                "repeat the flag for more (default: none)"})
    weights: typing.Optional[str] = _field(
        "imagenet", "Model", "'imagenet', a weights file path, or 'none' for random weights")
    pooling: str = _field("avg", "Model", "global pooling of the feature map",
                          choices=("avg", "max", "avgmax"))
    dropout: float = _field(0.2, "Model", "dropout rate in the head")
    hidden_units: tuple = _field((), "Model", "sizes of hidden Dense layers in the head, "
                                 "comma-separated, e.g. 256 or 512,128 (default: none)")
    l2: float = _field(1e-4, "Model", "L2 penalty on the head's kernels")
    l1: float = _field(0.0, "Model", "L1 penalty on the head's kernels")
    ema: float = _field(
        _RECIPE["ema"], "Schedule", "phase 2 ends with an exponential moving average of its "
        "weights, with this momentum per step (0 = off)")
    label_smoothing: float = _field(
        _RECIPE["label_smoothing"], "Schedule", "mix each one-hot target with the uniform "
        "distribution by this much, in both phases (single-label only)")
    # Schedule
    head_epochs: int = _field(
        _RECIPE["head_epochs"], "Schedule", "phase 1 epochs: the head on a frozen backbone")
    head_lr: float = _field(_RECIPE["head_lr"], "Schedule", "phase 1 learning rate")
    finetune_epochs: int = _field(
        _RECIPE["finetune_epochs"], "Schedule", "phase 2 epochs: top blocks unfrozen "
                                                "(0 skips phase 2)")
    method: str = _field(
        _RECIPE["method"], "Schedule", "what phase 2 trains in the top --unfreeze-blocks "
        "blocks: two-phase = their weights (BatchNorm frozen); bn-bias = only BatchNorm "
        "scales/offsets and biases (BitFit); lora = only LoRA adapters, merged into the "
        "kernels on save; linear-probe = nothing, phase 1 only", choices=recipe.METHODS)
    lora_rank: int = _field(_RECIPE["lora_rank"], "Schedule", "rank of the LoRA adapters "
                            "(--method lora)")
    finetune_lr: typing.Optional[float] = _field(
        _RECIPE["finetune_lr"], "Schedule", "phase 2 peak learning rate (default: per "
        "method, " + ", ".join(f"{k} {v:g}" for k, v in recipe.FINETUNE_LR.items() if v)
        + f"; two-phase's shrinks in proportion below {recipe.FULL_RATE_IMAGES} training "
        "images)")
    unfreeze_blocks: int = _field(
        _RECIPE["unfreeze_blocks"], "Schedule", "backbone blocks to unfreeze in phase 2, "
                                                "counted from the top; BatchNorm stays frozen")
    optimizer: str = _field(_RECIPE["optimizer"], "Schedule", "optimizer of both phases",
                            choices=optimizers.OPTIMIZERS)
    schedule: str = _field(_RECIPE["schedule"], "Schedule", "phase 2 learning-rate schedule: "
                           "cosine decays to 0 after the warmup", choices=optimizers.SCHEDULES)
    warmup_epochs: int = _field(_RECIPE["warmup_epochs"], "Schedule",
                                "phase 2 linear warmup epochs (cosine only)")
    lr_decay: float = _field(_RECIPE["lr_decay"], "Schedule",
                             "phase 2 discriminative rates: each block below the top learns at "
                             "this times the rate of the block above (1 = one rate)")
    gradual_epochs: int = _field(_RECIPE["gradual_epochs"], "Schedule",
                                 "gradual unfreezing: unfreeze one more block every this many "
                                 "phase 2 epochs, from 1 up to --unfreeze-blocks (0 = off)")
    # Speed
    cache: str = _field(
        "auto", "Speed", "run the frozen part of the network once per phase and train the "
        "rest on its cached output; auto: in memory when it fits, else on disk, and off "
        "when --augment or --mix make every epoch's images different",
        choices=caching.MODES)
    cache_copies: int = _field(
        1, "Speed", "with --augment or --mix: cache phase 1 on this many augmented copies "
        "of the training set (each epoch trains on one, drawn at random) instead of turning "
        "the cache off; phase 2 trains uncached")
    precision: str = _field(
        "float32", "Speed", "compute dtype policy; mixed_float16 suits recent GPUs, "
        "mixed_bfloat16 recent CPUs and TPUs; the output layer stays float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    jit_compile: bool = _field(False, "Speed", "compile the train step with XLA (often "
                               "faster on GPU, slower on CPU)")
    distribute: str = _field(
        "none", "Speed", "tf.distribute strategy: auto = mirrored when more than one GPU is "
        "visible; mirrored = all GPUs of this machine; multiworker = the cluster in "
        "TF_CONFIG; tpu = this TPU VM. --batch-size is global (split over the replicas); "
        "see docs/distributed.md", choices=distribute.STRATEGIES)
    scale_lr: bool = _field(False, "Speed", "multiply both phases' learning rates by the "
                            "number of replicas (off: the rates are used as given)")
    # Output
    output: typing.Optional[str] = _field(
        None, "Output", "run directory (default: runs/<timestamp>-<backbone>)")
    overwrite: bool = _field(False, "Output", "delete the contents of an existing run "
                             "directory first (only if it is a visiontune run)")
    resume: bool = _field(False, "Output", "continue the unfinished run in --output from its "
                          "last finished epoch, with its saved config.yaml as defaults")
    seed: int = _field(0, "Output", "seed for the split, shuffling, augmentation and weights")
    quiet: bool = _field(False, "Output", "no progress bars or logs")


# Allowed values, checked for YAML files and flags alike.
_RANGES = {
    "validation_split": (lambda v: 0 < v < 1, "between 0 and 1, exclusive"),
    "image_size": (lambda v: v is None or v >= 32, "at least 32 (or null for the default)"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "cache_copies": (lambda v: v >= 1, "at least 1"),
    "dropout": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "l2": (lambda v: v >= 0, "at least 0"),
    "l1": (lambda v: v >= 0, "at least 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "ema": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "head_epochs": (lambda v: v >= 0, "at least 0"),
    "finetune_epochs": (lambda v: v >= 0, "at least 0"),
    "head_lr": (lambda v: v > 0, "above 0"),
    "finetune_lr": (lambda v: v is None or v > 0, "above 0 (or null for the method's "
                                                  "default)"),
    "lora_rank": (lambda v: v >= 1, "at least 1"),
    "unfreeze_blocks": (lambda v: v >= 0, "at least 0"),
    "warmup_epochs": (lambda v: v >= 0, "at least 0"),
    "lr_decay": (lambda v: 0 < v <= 1, "above 0 and at most 1"),
    "gradual_epochs": (lambda v: v >= 0, "at least 0"),
    "hidden_units": (lambda v: all(u >= 1 for u in v), "positive integers"),
}


# Settings that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"output", "overwrite", "resume", "quiet", "label_issues"}


def check_resumable(config, saved_path):
    """Raises a `ValueError` naming the settings that differ from the run being resumed."""
    saved = load_yaml(saved_path)
    # A setting the saved file predates counts at its default (`backbone_args`: none).
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                         else f.default) for f in dataclasses.fields(TrainConfig)}
    saved = {**defaults, **saved}
    changed = [key for key, value in saved.items()
               if key not in _RESUMABLE_CHANGES and getattr(config, key) != value]
    if changed:
        raise ValueError(
            f"--resume: these settings differ from the run's {saved_path}: "
            + ", ".join(f"{k} ({saved[k]!r} -> {getattr(config, k)!r})" for k in changed)
            + ". A resumed run must keep its settings; drop those flags, or start a new "
            "run with another --output.")


def load_yaml(path):
    """Reads a YAML config and returns its values, checking every key and type."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as error:
        raise ValueError(f"Cannot read config file {path!r}: {error.strerror}.") from None
    except yaml.YAMLError as error:
        raise ValueError(f"Config file {path!r} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"Config file {path!r} must be a mapping of keys to values.")
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            raise ValueError(f"Unknown key {key!r} in {path}."
                             + (f" Did you mean {close[0]!r}?" if close else "")
                             + f" Known keys: {', '.join(hints)}.")
        values[key] = _typed(key, value, hints[key], path)
    return values


def check(config, source=None):
    """Raises a `ValueError` naming the first key whose value is out of range."""
    where = f" in {source}" if source else ""
    if config.backbone_args:
        try:
            backbones.get_spec(config.backbone)
        except ValueError as error:
            raise ValueError(f"Key 'backbone'{where} (--backbone): {error}") from None
        try:
            # Also stores ints given for float arguments as floats: one setting, one key.
            config.backbone_args = backbones.check_backbone_arguments(config.backbone,
                                                                      config.backbone_args)
        except ValueError as error:
            raise ValueError(f"Key 'backbone_args'{where} (--backbone-arg): {error}") from None
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"Key {field.name!r}{where} (--{field.name.replace('_', '-')}) "
                             f"must be one of {list(choices)}. Received: {value!r}.")
        if field.name in _RANGES:
            ok, expected = _RANGES[field.name]
            if not ok(value):
                raise ValueError(f"Key {field.name!r}{where} "
                                 f"(--{field.name.replace('_', '-')}) must be {expected}. "
                                 f"Received: {value!r}.")


def _typed(key, value, hint, path):
    expected = parser_type(hint)
    optional = type(None) in typing.get_args(hint)
    if value is None and optional:
        return None
    if expected is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return dict(value) if ok else _type_error(
            key, value, "a mapping of argument names to values, e.g. {alpha: 0.25}", path)
    if expected is int_tuple:
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in value)
        return tuple(value) if ok else _type_error(key, value, "a list of integers", path)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    return _type_error(key, value, expected.__name__ + (" or null" if optional else ""), path)


def _type_error(key, value, expected, path):
    raise ValueError(f"Key {key!r} in {path} must be {expected}. "
                     f"Received: {value!r} ({type(value).__name__}).")


def saved_yaml(config):
    """Returns the YAML that reproduces `config` with `--config`: no output folder."""
    values = dataclasses.asdict(config)
    values.update(output=None, overwrite=False, resume=False)
    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                           for k, v in values.items()}, sort_keys=False)


def parser_type(hint):
    if hint is tuple:
        return int_tuple
    args = typing.get_args(hint)
    return next((a for a in args if a is not type(None)), hint) if args else hint


def int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 256 or 512,128; got {text!r}") from None
