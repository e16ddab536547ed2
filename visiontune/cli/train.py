"""`python -m visiontune.train`: two-phase fine-tuning from the command line.

The command line is a thin layer over `run(config)` (`runs/run.py`), which
notebooks can call with a `TrainConfig` too.
"""

import sys
import time

from visiontune.runs import flags
from visiontune.runs.run import run
from visiontune.training import history, worker_loop


def main(argv=None):
    """Entry point of `python -m visiontune.train`."""
    began = time.perf_counter()
    try:
        config = flags.parse_config(argv, description=__doc__.splitlines()[0])
        run(config)
    except (ValueError, FileNotFoundError, FileExistsError, OSError,
            history.TrainingDivergedError, worker_loop.WorkerLostError) as error:
        print(f"visiontune.train: error: {error}", file=sys.stderr)
        return 2
    if not config.quiet:
        print(f"visiontune: done in {time.perf_counter() - began:.1f} s")
    return 0
