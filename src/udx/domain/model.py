"""Export records, resource kinds, and the changeset: plain values, no I/O."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

from udx.domain.address import PantryAddress, format_address
from udx.domain.errors import BadInput


class ExportState(enum.StrEnum):
    REQUESTED = "requested"
    ASSIGNING = "assigning"
    LIVE = "live"
    DELETING = "deleting"
    DELETED = "deleted"

    @classmethod
    def parse(cls, text: str) -> ExportState:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise BadInput(f"unknown export state {text!r} (expected one of: {choices})") from None


class ResourceType(enum.StrEnum):
    SNAPSHOT = "snapshot"
    IMAGE = "image"

    @classmethod
    def parse(cls, text: str) -> ResourceType:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise BadInput(f"unknown resource type {text!r} (expected one of: {choices})") from None


def json_time(value: dt.datetime | None) -> str | None:
    """A time in JSON output: UTC, microseconds, Z (2026-12-02T00:27:15.123456Z)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_uuid(text: str | uuid.UUID, what: str = "id") -> uuid.UUID:
    """Parse a UUID given by a person; a clear BadInput when it is malformed."""
    if isinstance(text, uuid.UUID):
        return text
    try:
        return uuid.UUID(str(text).strip())
    except ValueError:
        raise BadInput(f"malformed {what} {text!r}: expected a UUID") from None


@dataclass(frozen=True)
class UserDataExport:
    """One row of `user_data_export`."""

    id: uuid.UUID
    state: ExportState
    operating_saga_id: uuid.UUID | None
    generation: int
    resource_id: uuid.UUID
    resource_type: ResourceType
    resource_deleted: bool
    pantry_ip: str | None
    pantry_port: int | None
    volume_id: uuid.UUID | None
    # Kept since schema 0005; None only for a record built without them.
    time_created: dt.datetime | None = None
    time_modified: dt.datetime | None = None

    @property
    def pantry_address(self) -> PantryAddress | None:
        """The record's pantry; BadInput when the stored one is not an address."""
        if self.pantry_ip is None or self.pantry_port is None:
            return None
        return PantryAddress.from_parts(self.pantry_ip, self.pantry_port)

    @property
    def pantry_problem(self) -> str | None:
        """Why the stored pantry_ip/pantry_port is not an address (None: it is, or unset)."""
        try:
            _ = self.pantry_address
        except BadInput as err:
            return str(err)
        return None

    def valid_pantry_address(self) -> PantryAddress | None:
        """`pantry_address`, or None when unset or not an address (see pantry_problem)."""
        try:
            return self.pantry_address
        except BadInput:
            return None

    @property
    def pantry_text(self) -> str | None:
        """The stored pantry as "ip:port" text, valid or not (for lists)."""
        if self.pantry_ip is None or self.pantry_port is None:
            return None
        return format_address(self.pantry_ip, self.pantry_port)

    def to_json(self) -> dict[str, Any]:
        """Every column, plus `pantry_address` (DESIGN.md section 7)."""
        ip, port = self.pantry_ip, self.pantry_port
        # Formatted as stored rather than parsed: udx stores canonical addresses, and
        # parsing each one cost a quarter of a 100k-record `changeset --json`.
        addr = None if ip is None or port is None else format_address(ip, port)
        return {
            "id": str(self.id),
            "state": self.state.value,
            "operating_saga_id": str(self.operating_saga_id) if self.operating_saga_id else None,
            "generation": self.generation,
            "resource_id": str(self.resource_id),
            "resource_type": self.resource_type.value,
            "resource_deleted": self.resource_deleted,
            "pantry_ip": self.pantry_ip,
            "pantry_port": self.pantry_port,
            "volume_id": str(self.volume_id) if self.volume_id else None,
            "time_created": json_time(self.time_created),
            "time_modified": json_time(self.time_modified),
            "pantry_address": addr,
        }


@dataclass(frozen=True, order=True)
class ResourceRef:
    """A snapshot or image that needs an export record."""

    resource_type: ResourceType
    resource_id: uuid.UUID

    def to_json(self) -> dict[str, Any]:
        return {"resource_type": self.resource_type.value, "resource_id": str(self.resource_id)}


@dataclass(frozen=True)
class Changeset:
    """What a pass must do (DESIGN.md section 4).

    `would_mark` is only filled by the read-only form: the records whose resource
    is gone and whose `resource_deleted` the mutating form would set.
    """

    request_required: list[ResourceRef] = field(default_factory=list)
    create_required: list[UserDataExport] = field(default_factory=list)
    delete_required: list[UserDataExport] = field(default_factory=list)
    would_mark: list[UserDataExport] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.request_required or self.create_required or self.delete_required)

    def to_json(self, include_would_mark: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_required": [r.to_json() for r in self.request_required],
            "create_required": [r.to_json() for r in self.create_required],
            "delete_required": [r.to_json() for r in self.delete_required],
        }
        if include_would_mark:
            out["would_mark_for_deletion"] = [r.to_json() for r in self.would_mark]
        return out
