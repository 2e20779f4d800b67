"""Logging to stderr, for people (human) or for cron and log shippers (json)."""

from __future__ import annotations

import json
import logging
import sys
import time

from udx.db.urls import mask_url


def _json_time(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


def json_line(level: str, logger: str, message: str, *, exception: str | None = None) -> str:
    """One log line as `--log-format json` writes it (for lines not from logging);
    `exception`: a traceback, as the logging formatter adds it."""
    now = time.time()
    out = {
        "time": _json_time(now, (now % 1) * 1000),
        "level": level,
        "logger": logger,
        "message": mask_url(message),
    }
    if exception is not None:
        out["exception"] = mask_url(exception)
    return json.dumps(out)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": _json_time(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_url(record.getMessage()),
        }
        if record.exc_info:
            out["exception"] = mask_url(self.formatException(record.exc_info))
        elif record.exc_text:  # formatted already: a record from a saga worker process
            out["exception"] = mask_url(record.exc_text)
        return json.dumps(out)


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_url(super().format(record))


def setup_logging(*, verbose: bool, fmt: str = "human") -> None:
    root = logging.getLogger("udx")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_HumanFormatter("udx: %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
