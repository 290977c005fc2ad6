"""User-facing errors: one clear line, exit code 2 from the CLI."""


def first_line(e: BaseException) -> str:
    """An exception's message as one line: its first non-empty line, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class LcpError(Exception):
    """A problem with the user's input or environment that lcp can explain in one line.

    The CLI prints ``lcp: error: <message>`` and exits with code 2; no traceback.
    """


class UnreachableBudget(LcpError):
    """The requested budget cannot be met; ``lowest`` is the lowest reachable ratio."""

    def __init__(self, message: str, lowest: float):
        super().__init__(message)
        self.lowest = lowest
