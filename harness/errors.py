"""The harness's own exceptions. Each carries the exit code DESIGN.md assigns to its kind.

Messages name the file, field or run involved and the fix; the CLI prints them on one line.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a problem the user can fix. Exit code 2 unless a subclass says otherwise."""

    exit_code = 2


class UsageError(HarnessError):
    """A bad flag or argument combination."""


class InputError(HarnessError):
    """A bad input file: dataset, suite, spec or log."""


class DatasetError(InputError):
    """A dataset file that cannot be used (empty, malformed line, missing field)."""


class SuiteError(InputError):
    """A suite spec with one or more errors (all reported together)."""


class ModelNotFoundError(InputError):
    """A base model that cannot be resolved to local files."""


class AdapterFileError(InputError):
    """An adapter directory or file that is missing, truncated or unreadable."""


class AdapterConfigError(InputError):
    """A malformed or invalid ``adapter_config.json``."""


class IncompatibleError(HarnessError):
    """Artifacts that do not fit together: adapter vs base model, DB schema newer than the harness."""

    exit_code = 3


class SafetyError(HarnessError):
    """Refused for safety: pickle weights, remote code."""

    exit_code = 4


class StorageError(HarnessError):
    """Storage trouble: database locked past the timeout, corrupt file, disk full."""

    exit_code = 5


class GateFailure(HarnessError):
    """A quality gate failed."""

    exit_code = 1


class TrainingStopped(HarnessError):
    """Training was stopped by the live anomaly check (NaN, divergence, no learning...): no adapter written.

    ``result`` holds the step logs and findings so that they can still be stored.
    """

    exit_code = 1

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
