"""User-facing errors: one line that says what was wrong and how to fix it."""


class DlmError(ValueError):
    """An error caused by user input (a flag, a path, a checkpoint, an argument of the API). The CLI prints it as
    one line. A ``ValueError``, so that API callers may catch either."""


class DlmTypeError(DlmError, TypeError):
    """An argument of the API of the wrong type (a list where a tensor belongs); a ``DlmError`` and a
    ``TypeError``."""
