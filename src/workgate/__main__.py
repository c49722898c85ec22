"""``python -m workgate`` runs the ``workgate`` command line."""

import sys

from workgate.cli import main

if __name__ == '__main__':
    sys.exit(main())
