"""A full file system, for the tests that prove nothing is lost when the disk fills up."""

import os
from pathlib import Path


def fill_fs(directory: Path) -> Path:
    """Write ``directory/filler`` until the file system has no byte left; returns it (unlink to free)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
