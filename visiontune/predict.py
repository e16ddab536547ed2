"""`python -m visiontune.predict`: the command lives in `visiontune/cli/predict.py`."""

import sys

from visiontune.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
