"""The `visiontune` console command: `visiontune <command> [flags]`.

Each command is one of the `python -m visiontune.<module>` entry points, with
the same flags; `visiontune <command> --help` lists them. The table below names
the modules without importing them, so that `visiontune --help` answers at once.
"""

import argparse
import difflib
import importlib
import sys

# command: (module, what it does)
COMMANDS = {
    "train": ("visiontune.cli.train", "fine-tune a backbone on a folder of images (the recipe)"),
    "predict": ("visiontune.cli.predict", "top classes for image files, from a finished run"),
    "evaluate": ("visiontune.cli.evaluate", "score a finished run on another labelled folder"),
    "export": ("visiontune.cli.export", "SavedModel, TFLite or ONNX, with a parity check"),
    "doctor": ("visiontune.cli.doctor", "check a data folder before training"),
    "lr-find": ("visiontune.cli.lr_find", "learning-rate range test"),
    "interpolate": ("visiontune.cli.interpolate", "WiSE-FT sweep between phase 1 and the end"),
    "explain": ("visiontune.cli.explain", "Grad-CAM overlays: where a finished run looks"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="visiontune", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<12} {what}"
                                         for name, (_, what) in COMMANDS.items())
               + "\n\n'visiontune COMMAND --help' shows a command's flags; "
                 "'python -m visiontune.COMMAND' is the same command.")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND",
                        help=f"one of: {', '.join(COMMANDS)}")
    return parser


def main(argv=None):
    """Entry point of the `visiontune` console command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        parser.error(f"unknown command {argv[0]!r}."
                     + (f" Did you mean {close[0]!r}?" if close else "")
                     + f" Commands: {', '.join(COMMANDS)}.")
    command = parser.parse_args(argv[:1]).command
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(argv[1:])
