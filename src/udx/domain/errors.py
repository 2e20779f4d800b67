"""The error hierarchy. Each error knows the exit code the CLI reports for it.

Exit codes (DESIGN.md section 7): 0 success; 1 the work ran but something failed;
2 bad usage, bad input or bad config; 3 database or inventory unreachable, or the
schema is missing or out of date.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class UdxError(Exception):
    """Base of every error udx reports to an operator as one line."""

    exit_code = EXIT_FAILED


class BadInput(UdxError):
    """Malformed input: a UUID, an address, a state name, a number out of range."""

    exit_code = EXIT_USAGE


class ConfigError(UdxError):
    """The configuration file cannot be read or holds invalid values."""

    exit_code = EXIT_USAGE


class NotFound(UdxError):
    """A named object (export, saga, resource) does not exist."""

    exit_code = EXIT_USAGE


class Conflict(UdxError):
    """A conditional update found the row in a state it cannot move from."""

    exit_code = EXIT_FAILED


class DatabaseError(UdxError):
    """A statement failed (not a lost connection): a constraint, a serialization
    failure that outlived its retries. The driver's error is the __cause__."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(UdxError):
    """The database cannot be reached."""

    exit_code = EXIT_UNAVAILABLE


class DatabaseBusy(DatabaseUnavailable):
    """SQLite: another process held the lock longer than [database] busy_timeout_secs."""


class DatabaseStorageFull(DatabaseUnavailable):
    """The database cannot grow: its disk (or its size limit) is full."""


class SchemaOutOfDate(UdxError):
    """The schema is missing or older than this version of udx needs."""

    exit_code = EXIT_UNAVAILABLE


class DatabaseMissing(SchemaOutOfDate):
    """The SQLite file does not exist (and this command must not create it)."""


class InventoryUnavailable(UdxError):
    """The pantry inventory (table, static list, DNS) cannot be read."""

    exit_code = EXIT_UNAVAILABLE
