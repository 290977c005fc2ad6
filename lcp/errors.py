"""User-facing errors: one clear line, exit code 2 from the CLI."""


class LcpError(Exception):
    """A problem with the user's input or environment that lcp can explain in one line.

    The CLI prints ``lcp: error: <message>`` and exits with code 2; no traceback.
    """


class UnreachableBudget(LcpError):
    """The requested budget cannot be met; ``lowest`` is the lowest reachable ratio."""

    def __init__(self, message: str, lowest: float):
        super().__init__(message)
        self.lowest = lowest
