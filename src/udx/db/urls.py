"""Database URLs: defaults, normalisation, and masking. Imports nothing heavy."""

from __future__ import annotations

import re
from pathlib import Path

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword)=)[^&\s'\"]*")


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


def check_url_authority(url: str) -> None:
    """BadInput (exit 2) for a host part that no driver could use: a port that is
    not a number in 1..65535, an IPv6 host without its closing bracket."""
    from udx.domain.errors import BadInput

    parts = _split(url)
    if parts is None:
        return
    host = parts[3]
    shown = mask_url(url)
    if len(shown) > 200:
        shown = f"{shown[:100]}...({len(shown)} characters)"
    if host.startswith("["):
        close = host.find("]")
        if close == -1:
            raise BadInput(
                f"malformed database URL {shown!r}: the IPv6 host has no closing ']' "
                "(expected [address]:port)"
            )
        port_text = host[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise BadInput(f"malformed database URL {shown!r}: expected ':port' after ']'")
        port_text = port_text[1:]
    else:
        if "]" in host:
            raise BadInput(f"malformed database URL {shown!r}: ']' without '['")
        port_text = host.rpartition(":")[2] if ":" in host else ""
    if port_text and (
        not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535
    ):
        raise BadInput(
            f"malformed database URL {shown!r}: port {port_text!r} is not a number in 1..65535"
        )


def _split(url: str) -> tuple[str, str, str | None, str, str] | None:
    """(scheme, user, password, host part, rest) of one URL, or None."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    at = authority.rfind("@")  # a password may itself hold "@"
    if at == -1:
        return scheme, "", None, authority, tail
    user, colon, password = authority[:at].partition(":")
    return scheme, user, password if colon else None, authority[at + 1 :], tail


def _mask_one(url: str) -> str:
    parts = _split(url)
    if parts is None:
        return url
    scheme, user, password, host, tail = parts
    if password is not None:
        host = f"{user}:***@{host}"
    elif user:
        host = f"{user}@{host}"
    tail = _QUERY_SECRET.sub(r"\1***", tail)
    return f"{scheme}://{host}{tail}"


def mask_url(text: str) -> str:
    """Hide the passwords of every URL in `text` (it may be a whole message): in
    the user info and in password= query parameters."""
    return _URL.sub(lambda m: _mask_one(m.group(0)), text)


def mask_secrets(text: str, url: str | None) -> str:
    """Mask URLs in `text`, and the literal password of `url` wherever it appears
    (a driver may quote it outside a URL). Passwords under 4 characters are not
    replaced as bare text: that would garble every message without hiding much."""
    out = mask_url(text)
    parts = _split(url) if url else None
    secrets = []
    if parts is not None:
        if parts[2]:
            secrets.append(parts[2])
        secrets += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(parts[4])]
    for secret in secrets:
        if len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


# Driver messages that mean the database could not be reached or the connection
# was lost.
_CONNECTION_LOST_TEXT = (
    "connection refused",
    "could not connect",
    "connection failed",
    "server closed the connection",
    "unable to open database",
    "terminating connection",
    "no such host",
    "name or service not known",
    "connection timeout",
    "timeout expired",
)


def looks_like_lost_connection(sqlstate: str | None, operational_text: str | None) -> bool:
    """Whether a driver error means the database is unreachable or the connection
    was lost: SQLSTATE class 08 or the server shutting down (57P01-57P03), or an
    OperationalError (`operational_text`: its message; None for other errors)
    saying so. Shared by udx.db.engine and the SQLAlchemy-free changeset path."""
    state = sqlstate or ""
    if state.startswith("08") or state in {"57P01", "57P02", "57P03"}:
        return True
    text = (operational_text or "").lower()
    return any(s in text for s in _CONNECTION_LOST_TEXT)
