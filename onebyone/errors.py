"""User-facing errors: each carries one line that names the problem."""


class OneByOneError(Exception):
    """An error caused by the user's input (file, option, model); the CLI prints it as one line and exits 2.

    The message speaks in the terms of the Python API; `cli`, when given, says the same in the command line's terms
    (its options), and the CLI prints that instead."""

    def __init__(self, message: str, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli


class VerificationFailed(Exception):
    """The optimized model did not meet its tolerances: the message says what failed; `model` and `report` hold the
    optimized model and its report (with the verification). The CLI exits 1 for it."""

    def __init__(self, message: str, model=None, report=None) -> None:
        super().__init__(message)
        self.model = model
        self.report = report


def first_line(exc: BaseException | str) -> str:
    """An error's text on one line (whitespace collapsed), at most 300 characters; the type's name when empty."""
    text = " ".join(str(exc).split())
    return (text or (type(exc).__name__ if isinstance(exc, BaseException) else ""))[:300]
