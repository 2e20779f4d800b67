"""Database URLs: defaults, normalisation, and masking. Imports nothing heavy."""

from __future__ import annotations

import re
from pathlib import Path

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")


def default_database_url() -> str:
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('udx')) / 'udx.sqlite3'}"


def normalize_url(url: str) -> str:
    """Accept the spellings operators type; pick the driver we ship (psycopg 3)."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("cockroachdb://"):
        return "cockroachdb+psycopg://" + url[len("cockroachdb://") :]
    return url


def mask_url(url: str) -> str:
    """Hide the password of every URL in `url` (it may be a whole message)."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}:***@", url)


def mask_secrets(text: str, url: str | None) -> str:
    """Mask URLs in `text`, and the literal password of `url` wherever it appears."""
    out = mask_url(text)
    if url:
        m = _PASSWORD.search(url)
        if m and m.group("pw"):
            out = out.replace(m.group("pw"), "***")
    return out
