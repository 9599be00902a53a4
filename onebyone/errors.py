"""User-facing errors: each carries one line that names the problem."""


class OneByOneError(Exception):
    """An error caused by the user's input (file, option, model); the CLI prints it as one line and exits 2."""


class VerificationFailed(OneByOneError):
    """The optimized model did not meet its tolerances."""
