"""`python -m visiontune.doctor`: the command lives in `visiontune/cli/doctor.py`."""

import sys

from visiontune.cli.doctor import main

if __name__ == "__main__":
    sys.exit(main())
