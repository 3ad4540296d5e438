"""Exceptions a user can act on.

The CLI turns :class:`FactoryError` into one line on stderr and exit code 2; library callers
catch it like any other ``ValueError``.
"""


class FactoryError(ValueError):
    """Bad input or usage: the message names the file, key or parameter at fault."""


class DatasetError(FactoryError):
    """A path is not a readable factory dataset."""
