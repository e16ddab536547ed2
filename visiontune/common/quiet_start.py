"""Keeps TensorFlow's native start-up log lines out of the command line's output.

Importing TensorFlow prints C++ log lines to stderr (the oneDNN notice, "Could
not find cuda drivers", the CPU instruction set), some of them twice and some
even with `TF_CPP_MIN_LOG_LEVEL=3`, because they are written before TensorFlow
reads it. A `python -m visiontune.<command>` user sees them above every command.
Neither TensorFlow nor Keras has a switch for them, so while a command imports
TensorFlow and probes its devices, file descriptor 2 points at a temporary file.
Afterwards every line of it that is not one of those known notices is written
to stderr again, so a real failure (a missing library, an abort message) is
still shown. `--verbose` on any command skips all this. Importing visiontune as
a library (notebooks, a user's script) changes nothing.
"""

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_FLAG = "--verbose"

# TensorFlow's informational and warning lines (absl's "I0000 ..." / "W0000 ..."
# prefix), absl's note about them, the CPU-feature notice's second line, and the
# failed CUDA probe of a CUDA build on a machine without a GPU.
_NOTICE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit)")


def is_command_line():
    """Whether this process is a visiontune command (`python -m visiontune.X`, or a
    `visiontune-*` console script). While `-m` imports the package, `sys.argv[0]` is `-m`."""
    argv = getattr(sys, "argv", None) or [""]
    return argv[0] == "-m" or os.path.basename(argv[0]).startswith("visiontune")


def asks_for_verbose(argv):
    """Whether `argv` has `--verbose`, or a prefix of it that argparse would take for it
    (`--verb`; `--ve` at least, since `--v` could also be `--val-data`)."""
    return any(len(arg) >= 4 and VERBOSE_FLAG.startswith(arg) for arg in argv)


def import_tensorflow():
    """Imports TensorFlow; for a command without `--verbose`, without its notices."""
    if not is_command_line() or asks_for_verbose(sys.argv[1:]):
        import tensorflow
        return tensorflow
    with native_notices_hidden():
        import tensorflow
        tensorflow.config.list_physical_devices()  # Probing devices logs too (CUDA builds).
    return tensorflow


@contextlib.contextmanager
def native_notices_hidden():
    """Sends fd 2 to a temporary file, then writes back what is not a known notice."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No stderr at all (`2>&-`): nothing to keep quiet.
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _NOTICE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def add_flag(parser):
    """Adds `--verbose` to a command's parser (the flag is read before parsing)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show TensorFlow's native start-up log lines, hidden by default")
