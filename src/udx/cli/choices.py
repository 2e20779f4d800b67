"""Closed sets of values for options, as Enums: help lists them, a bad value is
refused (exit 2) and completion offers them. Kept import-light (no database
modules): tests check each set against its source of truth."""

from __future__ import annotations

import enum


class SagaState(enum.StrEnum):  # udx.db.schema.SAGA_STATES
    RUNNING = "running"
    UNWINDING = "unwinding"
    DONE = "done"
    ABANDONED = "abandoned"


class SagaName(enum.StrEnum):  # the registered saga definitions
    EXPORT_CREATE = "export-create"
    EXPORT_DELETE = "export-delete"


class LogFormat(enum.StrEnum):
    HUMAN = "human"
    JSON = "json"


class Output(enum.StrEnum):
    """`-o`: the shapes kubectl users expect."""

    JSON = "json"
    WIDE = "wide"
    NAME = "name"  # ids only, one a line


class ExportSort(enum.StrEnum):  # udx.datastore.exports.SORT_FIELDS
    RESOURCE = "resource"
    ID = "id"
    STATE = "state"
    CREATED = "created"
    MODIFIED = "modified"
    PANTRY = "pantry"
    GENERATION = "generation"
