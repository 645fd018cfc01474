"""User-facing errors.

Anything raised as :class:`CodeclensError` is the user's to fix (a bad spec, a
missing file, an empty split). The CLI prints its message on one line and
exits non-zero; every other exception is a bug and keeps its traceback.
"""


class CodeclensError(Exception):
    """An error caused by input, printed as one line by the CLI."""


class SpecError(CodeclensError):
    """A spec string that cannot be parsed or names unknown things."""
