"""The error of bad command-line input: harness.cli prints its message as one line and exits
with status 2 (as it does for impls' ConfigError, CaseError and BackendError and for
harness.results' ResultsError)."""


class UsageError(Exception):
    """Bad command-line input; the message says what and how to fix it."""
