"""The search package's error type."""


class SearchError(ValueError):
    """A search that cannot run as configured; the message names the argument or file and the problem."""
