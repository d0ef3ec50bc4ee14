"""The one exception type for user-facing data problems, so the CLI can print one line instead of a traceback."""

from __future__ import annotations


class DataError(ValueError):
    """A data set cannot be found, read or used; the message is one line naming the file and the problem."""
