"""Keeps TensorFlow's native start-up log lines out of the command line's output.

Importing TensorFlow prints C++ log lines to stderr (the oneDNN notice, "Could
not find cuda drivers", the CPU instruction set), some of them twice and some
even with `TF_CPP_MIN_LOG_LEVEL=3`, because they are written before TensorFlow
reads it. A `python -m visiontune.<command>` user sees them above every command.
Neither TensorFlow nor Keras has a switch for them, so while the package imports
TensorFlow and probes its devices, file descriptor 2 points at `os.devnull`;
Python errors raised meanwhile are still shown, after it is restored.
`--verbose` on any command keeps the lines. Importing visiontune as a library
(notebooks, a user's script) changes nothing.
"""

import contextlib
import os
import sys

VERBOSE_FLAG = "--verbose"


def is_command_line():
    """Whether this process is a visiontune command (`python -m visiontune.X`, or a
    `visiontune-*` console script). While `-m` imports the package, `sys.argv[0]` is `-m`."""
    argv = getattr(sys, "argv", None) or [""]
    return argv[0] == "-m" or os.path.basename(argv[0]).startswith("visiontune")


@contextlib.contextmanager
def native_logs_hidden():
    """Hides stderr at the file-descriptor level for a command run without `--verbose`.

    Also defaults `TF_CPP_MIN_LOG_LEVEL` to 2 for the rest of the run, which keeps
    TensorFlow's later native warnings and notices out, and its errors in.
    """
    if not is_command_line() or VERBOSE_FLAG in sys.argv[1:]:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def add_flag(parser):
    """Adds `--verbose` to a command's parser (the flag is read before parsing)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show TensorFlow's native start-up log lines, hidden by default")
