"""``python -m kugelwire``: the command line (see :mod:`kugelwire.cli`)."""

import sys

from .cli import main

sys.exit(main())
