"""``python -m edge``: the same command line as the ``sonotrap`` console script."""

import sys

from edge.cli import main

sys.exit(main())
