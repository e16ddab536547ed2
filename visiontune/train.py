"""`python -m visiontune.train`: the command lives in `visiontune/cli/train.py`."""

import sys

from visiontune.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
