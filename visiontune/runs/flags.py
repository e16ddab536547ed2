"""The `python -m visiontune.train` command line, generated from `TrainConfig`'s fields.

One flag per field, in the field's group, with its help; `--config run.yaml`
sets defaults that flags override, and `--resume` reads the run's own
`config.yaml`. `parse_config` returns a checked `TrainConfig`.
"""

import argparse
import dataclasses
import os
import typing

import yaml

from visiontune.common import quiet_start
from visiontune.runs import config


def parse_config(argv=None, prog="python -m visiontune.train", description=None):
    """Returns a checked `TrainConfig` from YAML defaults (`--config`) and flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--output")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(prog, description)
    source = known.config
    if known.resume and not known.config and known.output:
        saved = os.path.join(known.output, "config.yaml")
        source = saved if os.path.isfile(saved) else None
    if source:
        parser.set_defaults(**config.load_yaml(source))
    settings = config_from_args(parser.parse_args(argv))
    config.check(settings, source)
    return settings


def build_parser(prog="python -m visiontune.train", description=None):
    """Returns an `argparse` parser with one flag per `TrainConfig` field, in groups."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=_HelpFormatter)
    parser.add_argument("--config", metavar="YAML",
                        help="YAML file of settings (keys as below, with underscores); "
                             "flags override it")
    quiet_start.add_flag(parser)
    groups = {name: parser.add_argument_group(name, text) for name, text in config.GROUPS.items()}
    hints = typing.get_type_hints(config.TrainConfig)
    for field in dataclasses.fields(config.TrainConfig):
        meta = field.metadata
        flag = "--" + field.name.replace("_", "-")
        group = groups[meta["group"]]
        if hints[field.name] is dict:
            group.add_argument(meta["flag"], dest=field.name, action=_KeyValue, default={},
                               metavar=meta["metavar"], help=meta["help"])
            continue
        if hints[field.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               default=field.default, help=meta["help"])
            continue
        group.add_argument(flag, type=config.parser_type(hints[field.name]),
                           default=field.default,
                           choices=meta.get("choices"), help=meta["help"],
                           metavar=None if meta.get("choices") else field.name.upper())
    return parser


class _KeyValue(argparse.Action):
    """`--backbone-arg alpha=0.25`, repeatable: adds to a dict (over the YAML's values).

    Values are read as YAML scalars, so `0.25` is a float, `3` an int, `true` a bool.
    """

    def __call__(self, parser, namespace, text, option_string=None):
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            parser.error(f"{option_string}: expected KEY=VALUE, e.g. alpha=0.25. "
                         f"Received: {text!r}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # YAML 1.1 reads 1e-3 (no dot) as a string.
            except ValueError:
                pass
        pairs = dict(getattr(namespace, self.dest) or {})
        pairs[key.strip()] = value if isinstance(parsed, (list, dict)) else parsed
        setattr(namespace, self.dest, pairs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds each flag's default to its help, unless the help already says it in words."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def config_from_args(args):
    """Returns a `TrainConfig` from parsed arguments."""
    names = {f.name for f in dataclasses.fields(config.TrainConfig)}
    return config.TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
