"""One exception type for every user-facing failure.

The message is a single line that names the problem and the fix; the CLI prints it
as ``error: <message>`` and exits non-zero, without a traceback.
"""


class SonotrapError(Exception):
    """A failure the user can fix; ``str(err)`` is the one-line explanation."""


def shown(value: object, limit: int = 60, *, quote: bool = True) -> str:
    """``repr(value)`` cut to ``limit`` characters: a bad value named in a message, never echoed whole.

    Input from the network or a file can be megabytes long or hold newlines; a message must
    stay one short line, so every hostile value goes through here. ``quote=False`` shows a
    printable string as itself (a version, a name) and anything else as its repr.
    """
    text = value if not quote and isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
