"""`python -m visiontune.interpolate`: the command lives in `visiontune/cli/interpolate.py`.

Import `visiontune.cli.interpolate` rather than this module: importing it makes Python
set `visiontune.interpolate` (the function) to this module, as it does for every
submodule it imports.
"""

import sys

from visiontune.cli.interpolate import main

if __name__ == "__main__":
    sys.exit(main())
