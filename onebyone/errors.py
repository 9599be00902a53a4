"""User-facing errors: each carries one line that names the problem."""


class OneByOneError(Exception):
    """An error caused by the user's input (file, option, model); the CLI prints it as one line and exits 2."""


class VerificationFailed(Exception):
    """The optimized model did not meet its tolerances: the message says what failed; `model` and `report` hold the
    optimized model and its report (with the verification). The CLI exits 1 for it."""

    def __init__(self, message: str, model=None, report=None) -> None:
        super().__init__(message)
        self.model = model
        self.report = report
