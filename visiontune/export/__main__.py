"""`python -m visiontune.export`: the command lives in `visiontune/cli/export.py`."""

import sys

from visiontune.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
