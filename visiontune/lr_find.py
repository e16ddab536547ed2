"""`python -m visiontune.lr_find`: the command lives in `visiontune/cli/lr_find.py`.

Import `visiontune.cli.lr_find` rather than this module: importing it makes Python
set `visiontune.lr_find` (the function) to this module, as it does for every
submodule it imports.
"""

import sys

from visiontune.cli.lr_find import main

if __name__ == "__main__":
    sys.exit(main())
