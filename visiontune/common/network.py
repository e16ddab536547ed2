"""Whether a download host can be reached, decided in seconds, before a download is tried.

TensorFlow and Keras try a download and fail after network time-outs with a
bare URL error; visiontune checks first and says what to do instead
(`backbones.weights.offline_guard`, `data.sources.load_tfds`).
"""

import socket
import threading
import urllib.parse

_PROBE_TIMEOUT_S = 4.0


def host_reachable(url, timeout=_PROBE_TIMEOUT_S):
    """Returns whether a TCP connection to `url`'s host opens within `timeout` s.

    Name resolution ignores socket time-outs, so the probe runs in a daemon
    thread that is abandoned when it takes too long.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
