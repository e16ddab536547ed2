"""`python -m visiontune.explain`: the command lives in `visiontune/cli/explain.py`.

Import `visiontune.cli.explain` rather than this module: importing it makes Python
set `visiontune.explain` (the function) to this module, as it does for every
submodule it imports.
"""

import sys

from visiontune.cli.explain import main

if __name__ == "__main__":
    sys.exit(main())
