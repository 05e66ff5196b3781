"""The one polling helper of the suite: wait until a condition holds, or fail with a reason."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.05,
             poll: Callable[[], Any] | None = None) -> Any:
    """Return ``pred()``'s first truthy value; raise AssertionError after ``timeout`` seconds.

    ``poll`` runs between checks instead of sleeping ``every`` (e.g. reading an audio source,
    which is what makes its state advance).
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if poll is not None:
            poll()
        else:
            time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {pred}")
