"""One exception type for every user-facing failure.

The message is a single line that names the problem and the fix; the CLI prints it
as ``error: <message>`` and exits non-zero, without a traceback.
"""


class SonotrapError(Exception):
    """A failure the user can fix; ``str(err)`` is the one-line explanation."""
