"""Child processes whose output goes to files, never to a pipe nobody reads.

A pipe holds 64 KiB. A long-running daemon whose stderr is read only at the end blocks in its
next log call once the pipe is full, and every thread that logs stops with it: no more
reconnects, a status file that stops changing. It looks like a bug in the daemon and fails a
test only when a busy machine makes the daemon log a little more than usual. Files have no
such limit, and what is in them can be read at any time.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


class Spawned(subprocess.Popen):
    """``subprocess.Popen`` with stdout and stderr in temporary files.

    ``communicate()`` waits (with the same ``timeout`` and ``TimeoutExpired``) and returns both
    as text; ``output()`` reads them while the child runs.
    """

    def __init__(self, args, **kw) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="sonotrap-child-")
        self.stdout_path = Path(self._dir.name) / "stdout"
        self.stderr_path = Path(self._dir.name) / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            super().__init__(args, stdout=out, stderr=err, **kw)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far."""
        return (self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(errors="replace"))

    def communicate(self, input=None, timeout: float | None = None) -> tuple[str, str]:  # noqa: A002
        if input is not None:
            raise ValueError("Spawned has no stdin pipe")
        self.wait(timeout)
        return self.output()
