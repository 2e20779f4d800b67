"""`pass_run`: the history of coordinator passes, one row per pass.

The row is written when the pass starts and completed when it ends, so a pass
that was killed (or is still running) shows with no `finished`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update

from udx.db.schema import pass_run

t = pass_run


@dataclass(frozen=True)
class PassRun:
    id: uuid.UUID
    host: str
    pid: int
    started: dt.datetime
    finished: dt.datetime | None
    dry_run: bool
    exit_code: int | None
    counts: dict[str, Any]
    errors: list[str]
    warnings: list[str]

    @property
    def duration_secs(self) -> float | None:
        if self.finished is None:
            return None
        return round((self.finished - self.started).total_seconds(), 3)

    @property
    def running(self) -> bool:
        """Unfinished, and its process is alive on this host (a pass still going)."""
        if self.finished is not None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def result(self) -> str:
        if self.finished is None:
            return "running" if self.running else "did not finish"
        return {0: "ok", 1: "failed", 2: "bad input", 3: "unavailable", 130: "interrupted"}.get(
            self.exit_code if self.exit_code is not None else -1, f"exit {self.exit_code}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "host": self.host,
            "pid": self.pid,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "duration_secs": self.duration_secs,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "result": self.result,
            "counts": self.counts,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def _loads(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _row(row: Any) -> PassRun:
    m = row._mapping
    return PassRun(
        id=m["id"],
        host=m["host"],
        pid=int(m["pid"]),
        started=m["started"],
        finished=m["finished"],
        dry_run=bool(m["dry_run"]),
        exit_code=m["exit_code"],
        counts=_loads(m["counts"], {}),
        errors=_loads(m["errors"], []),
        warnings=_loads(m["warnings"], []),
    )


def start(
    conn: Connection,
    run_id: uuid.UUID,
    *,
    host: str,
    pid: int,
    started: dt.datetime,
    dry_run: bool,
) -> None:
    conn.execute(t.insert().values(id=run_id, host=host, pid=pid, started=started, dry_run=dry_run))


def finish(
    conn: Connection,
    run_id: uuid.UUID,
    *,
    finished: dt.datetime,
    exit_code: int,
    counts: dict[str, Any],
    errors: list[str],
    warnings: list[str],
) -> None:
    conn.execute(
        update(t)
        .where(t.c.id == run_id)
        .values(
            finished=finished,
            exit_code=exit_code,
            counts=json.dumps(counts, sort_keys=True),
            errors=json.dumps(errors),
            warnings=json.dumps(warnings),
        )
    )


def recent(
    conn: Connection, limit: int | None = 20, *, dry_run: bool | None = None
) -> list[PassRun]:
    """The latest passes, newest first."""
    q = select(t).order_by(t.c.started.desc(), t.c.id.desc())
    if dry_run is not None:
        q = q.where(t.c.dry_run.is_(dry_run))
    if limit is not None:
        q = q.limit(limit)
    return [_row(r) for r in conn.execute(q)]


def count(conn: Connection) -> int:
    """Every recorded pass, dry runs included (what `udx pass history --all` lists)."""
    return int(conn.execute(select(func.count()).select_from(t)).scalar_one())


def totals(conn: Connection) -> dict[str, int]:
    """Over the whole history (real passes, not dry runs): passes, finished ok,
    failed, did not finish."""
    real = t.c.dry_run.is_(False)
    row = conn.execute(
        select(
            func.count(),
            func.count().filter(t.c.exit_code == 0),
            func.count().filter(t.c.finished.is_not(None), t.c.exit_code != 0),
            func.count().filter(t.c.finished.is_(None)),
        ).where(real)
    ).one()
    return {
        "passes": int(row[0]),
        "ok": int(row[1]),
        "failed": int(row[2]),
        "did_not_finish": int(row[3]),
    }
