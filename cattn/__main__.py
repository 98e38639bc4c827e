"""``python -m cattn``: the ``cattn`` command line (see :mod:`cattn._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
