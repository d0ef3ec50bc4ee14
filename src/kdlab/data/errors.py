"""Data errors: ``DataError`` lives in ``kdlab.errors`` with every other error type; re-exported here."""

from kdlab.errors import DataError

__all__ = ["DataError"]
