"""Portable column types.

PostgreSQL gets its native types. SQLite gets what a person can read with the
sqlite3 shell: canonical lower-case UUID text, 'YYYY-MM-DD HH:MM:SS.ffffff' UTC
text, 0/1 booleans (SQLAlchemy's Boolean already stores those).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"
# Dialects with a native uuid type (CockroachDB's dialect is PostgreSQL's, renamed).
_NATIVE_UUID = ("postgresql", "cockroachdb")


class GUID(TypeDecorator[uuid.UUID]):
    """uuid on PostgreSQL and CockroachDB, 36-character lower-case text elsewhere."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _NATIVE_UUID:
            # Imported here: on SQLite the PostgreSQL dialect is never loaded.
            from sqlalchemy.dialects import postgresql

            return dialect.type_descriptor(postgresql.UUID(as_uuid=True))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, uuid.UUID):
            value = uuid.UUID(str(value))
        return value if dialect.name in _NATIVE_UUID else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(str(value))


class UTCDateTime(TypeDecorator[dt.datetime]):
    """timestamptz on PostgreSQL; UTC text on SQLite. Always returns aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(26))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.strftime(_SQLITE_TS)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            # SQLite: tolerate values typed by hand without microseconds.
            fmt = _SQLITE_TS if "." in value else "%Y-%m-%d %H:%M:%S"
            return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.UTC)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
