"""Saga parameter parsing shared by both export sagas."""

from __future__ import annotations

import uuid
from typing import Any


def uuid_param(params: dict[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(params[key]))
    except (KeyError, ValueError) as err:
        raise ValueError(f"saga params: {key!r} must be a UUID ({err})") from None
