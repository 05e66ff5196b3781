"""sonotrap edge: the streaming detector that runs on the field recorder (no torch here)."""

__version__ = "0.1.0"
