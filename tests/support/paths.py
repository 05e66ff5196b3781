"""Where the repository is, for tests that run its scripts or read its files (one definition)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
