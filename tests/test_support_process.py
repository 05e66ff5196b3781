"""The test helper that runs daemons: their logs never stall them, however much they write."""

from __future__ import annotations

import sys

from tests.support.process import Spawned
from tests.support.waiting import wait_for

CHATTY = """
import sys, time
for i in range(4000):  # ~400 KB, six times what a pipe holds
    print(f"log line {i:05d} " + "x" * 80, file=sys.stderr, flush=True)
print("done", flush=True)
time.sleep(30)  # a daemon keeps running: only a stalled one would miss the deadline above
"""


def test_a_child_that_logs_more_than_a_pipe_holds_never_blocks() -> None:
    proc = Spawned([sys.executable, "-c", CHATTY])
    try:
        wait_for(lambda: proc.output()[0] == "done\n", 20)
        err = proc.output()[1].splitlines()
        assert len(err) == 4000 and err[-1].startswith("log line 03999")
    finally:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    assert out == "done\n" and len(err.splitlines()) == 4000
