"""sonotrap edge: the streaming detector that runs on the field recorder (no torch here)."""

import os

# The frontend's matrix products are tiny. numpy's OpenBLAS would start a worker per core that
# busy-waits after each one: measured 10% of a core at hop 1 s on a 2-core machine for nothing.
# Set before anything imports numpy; an explicit setting in the environment still wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
