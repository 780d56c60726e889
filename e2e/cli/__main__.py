"""``python -m e2e.cli``: the ``pveoi`` command (how the virtual host and the tests run it)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
