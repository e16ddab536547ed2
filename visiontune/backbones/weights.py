"""Where backbone weights come from: Keras's ImageNet cache, a local file, or nowhere.

`weights="imagenet"` goes through Keras's own `keras.utils.get_file`, so files
land in Keras's cache (`~/.keras/models`, or `$KERAS_HOME/models`) and a file
already there works offline. What Keras lacks is a fast, clear failure when a
file is missing and the download host cannot be reached: it would try the
download and fail with a bare URL error after network time-outs. `offline_guard`
adds that check around the constructor call.
"""

import contextlib
import os
import urllib.parse

from visiontune.common import keras_private, network


class WeightsUnavailableError(OSError):
    """Raised when pretrained weights are neither cached nor downloadable."""


def resolve(weights):
    """Validates a `weights` argument: `"imagenet"`, `None`, or an existing file path."""
    if weights is None or weights == "imagenet":
        return weights
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Weights file {path!r} does not exist. Expected `weights` to be "
                "'imagenet', None, or the path of an existing .h5 / .weights.h5 file."
            )
        return path
    raise TypeError(
        "Expected `weights` to be 'imagenet', None, or a file path. "
        f"Received: weights={weights!r}"
    )


def keras_cache_dir():
    """Returns the folder where Keras keeps downloaded application weights."""
    return os.path.join(os.path.expanduser(keras_private.keras_home()), "models")


@contextlib.contextmanager
def offline_guard(backbone_name):
    """Makes a missing, undownloadable weights file fail within seconds.

    While active, Keras's `get_file` first looks in the cache. A file that is
    there (and matches its hash) is used as usual, with no network access.
    Otherwise the download host is probed; when it is unreachable a
    `WeightsUnavailableError` names the exact file and folder Keras expects.
    """
    def guard(original):
        def guarded_get_file(fname=None, origin=None, cache_subdir="datasets",
                             cache_dir=None, file_hash=None, **kwargs):
            fname = fname or os.path.basename(urllib.parse.urlsplit(origin).path)
            folder = os.path.join(
                os.path.expanduser(cache_dir or keras_private.keras_home()), cache_subdir)
            target = os.path.join(folder, fname)
            cached = os.path.exists(target) and (
                file_hash is None or keras_private.file_matches_hash(target, file_hash))
            if not cached and not network.host_reachable(origin):
                state = ("is corrupt or incomplete" if os.path.exists(target)
                         else "is not cached")
                raise WeightsUnavailableError(
                    f"ImageNet weights for {backbone_name} are not available offline: "
                    f"{fname} {state} in {folder} and {origin} cannot be reached.\n"
                    f"Download {origin} on a machine with network access and copy it to "
                    f"{target}, or pass `weights=<path to a weights file>` "
                    "(CLI: --weights PATH), or `weights=None` to train from scratch."
                )
            return original(fname=fname, origin=origin, cache_subdir=cache_subdir,
                            cache_dir=cache_dir, file_hash=file_hash, **kwargs)
        return guarded_get_file

    with keras_private.replaced_get_file(guard):
        yield
