"""``python -m kaldn``: the ``kaldn`` command (see :mod:`kaldn.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
