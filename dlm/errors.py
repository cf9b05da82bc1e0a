"""User-facing errors: one line that says what was wrong and how to fix it."""


class DlmError(Exception):
    """An error caused by user input (a flag, a path, a checkpoint). The CLI prints it as one line."""
