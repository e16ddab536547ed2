"""`python -m visiontune.evaluate`: the command lives in `visiontune/cli/evaluate.py`."""

import sys

from visiontune.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
