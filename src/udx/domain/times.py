"""Durations and points in time given on the command line ("30m", "2d", ISO 8601)."""

from __future__ import annotations

import datetime as dt
import re

from udx.domain.errors import BadInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str, what: str = "duration") -> dt.timedelta:
    """'90s', '30m', '12h', '2d', '1w' -> a timedelta (positive)."""
    m = _DURATION.match(text)
    if not m:
        raise BadInput(
            f"malformed {what} {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 30m"
        )
    secs = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if secs <= 0:
        raise BadInput(f"{what} {text!r} must be more than zero")
    return dt.timedelta(seconds=secs)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """A duration back from `now` ('1h') or a UTC time ('2026-12-02T00:27:15Z')."""
    if _DURATION.match(text):
        return now - parse_duration(text, "--since")
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"malformed --since {text!r}: expected a duration (30m, 2d) or a UTC time "
            "(2026-12-02T00:27:15Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)
