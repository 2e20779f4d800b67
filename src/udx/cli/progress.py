"""Progress of a pass: a bar per kind of saga (create / delete) with rate and
ETA on a terminal; under cron, an INFO line at most every N seconds
(`udx pass --progress-every N`) and one at the end."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("udx.pass.progress")

KINDS = {"export-create": "create", "export-delete": "delete"}


class PassProgress:
    """Counts the coordinator's progress events (see coordinator.ProgressFn):
    "total:<saga name>" and "done:<saga name>" per kind; "total"/"advance" are
    the sums, ignored here."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.total = {k: 0 for k in KINDS.values()}
        self.done = {k: 0 for k in KINDS.values()}

    def event(self, event: str, n: int) -> str | None:
        """Record one event; the kind it was about, if any."""
        what, _, name = event.partition(":")
        kind = KINDS.get(name)
        if kind is None:
            return None
        if what == "total":
            self.total[kind] = n
        elif what == "done":
            self.done[kind] += n
        return kind

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return sum(self.done.values()) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """`create 120/500, delete 3/10; 4.1 sagas/s, ETA 1m33s`."""
        from udx.cli.tables import fmt_age  # its duration form: 45s, 3m20s, 2h

        parts = [f"{k} {self.done[k]}/{self.total[k]}" for k in self.total if self.total[k]]
        left = sum(self.total.values()) - sum(self.done.values())
        rate = self.rate()
        text = ", ".join(parts) or "no sagas"
        text += f"; {rate:.1f} sagas/s"
        if left > 0 and rate > 0:
            import datetime as dt

            now = dt.datetime.now(dt.UTC)
            text += f", ETA {fmt_age(now - dt.timedelta(seconds=left / rate), now=now)}"
        return text


def logging_notify(every: float, progress: PassProgress) -> Callable[[str, int], None]:
    """A ProgressFn that logs `progress.line()` at INFO at most every `every` seconds."""
    log.setLevel(logging.INFO)  # asked for: shown without -v
    last = [progress.clock()]

    def notify(event: str, n: int) -> None:
        if progress.event(event, n) is None:
            return
        now = progress.clock()
        if now - last[0] >= every:
            last[0] = now
            log.info("pass progress: %s", progress.line())

    return notify


def rich_notify(bar: Any, progress: PassProgress) -> Callable[[str, int], None]:
    """A ProgressFn that drives a Rich Progress with one task per kind of saga."""
    tasks: dict[str, Any] = {}

    def notify(event: str, n: int) -> None:
        kind = progress.event(event, n)
        if kind is None:
            return
        if kind not in tasks:
            tasks[kind] = bar.add_task(kind, total=progress.total[kind] or None)
        if event.startswith("total:"):
            bar.update(tasks[kind], total=n, visible=n > 0)
        else:
            bar.advance(tasks[kind], n)

    return notify
