"""Saga log writes: every step of a saga is one conditional write (DESIGN.md 5)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from udx.datastore import saga_log
from udx.db.types import utcnow
from udx.domain.errors import Conflict
from udx.saga.leases import SagaLeases
from udx.saga.run import (
    LOG_ISOLATION,
    ActionFailed,
    Checkpoint,
    Event,
    NotOwner,
    Run,
    Stop,
    one_line,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("udx.saga.executor")


class SagaLogWriter(SagaLeases):
    """Writes a saga's steps to the log, only while this executor owns it."""

    def _write(
        self,
        run: Run,
        states: tuple[str, ...],
        *,
        events: list[Event] | tuple[()] = (),
        new_state: str | None = None,
        outcome: str | None = None,
        inside: Callable[[Connection, bool], list[Event]] | None = None,
    ) -> None:
        """One log write in one transaction, only while this executor owns the saga.
        The first write of a saga started here inserts its row instead of claiming
        it (`Run.logged`); a taken saga id is then a Conflict, passed on.

        `inside`, when given, runs in that transaction after `events` are written
        (an action in its log transaction); the events it returns are written after
        it. It raises ActionFailed, which is passed on at once (not retried). Its
        second argument is True on a retry after an error whose commit may have
        landed (a lost acknowledgement): it must then look in the log first.

        A write that took longer than a third of the lease (waiting on locks) is
        followed by a fresh claim: the lease it set may have run out by its commit,
        and another process may have adopted the saga since.

        `states` are the saga states the write may find; a state change lists its
        target too, so re-running a write whose commit was not acknowledged is a
        no-op. Database errors are retried a few times; then this executor gives the
        saga up ("interrupted") and recovery finishes it later.
        """

        written: list[Event] = []
        maybe_committed = False

        def txn(conn: Connection) -> None:
            written.clear()
            now = utcnow()
            lease = now + timedelta(seconds=self.lease_secs)
            # The saga's first write inserts its row, which takes the row's lock as a
            # claim would. After a lost acknowledgement that row may be there (this
            # write's own commit): then claim it as any later write does.
            if not run.logged and not (maybe_committed and saga_log.exists(conn, run.saga_id)):
                saga_log.insert(
                    conn,
                    saga_id=run.saga_id,
                    name=run.definition.name,
                    params_json=run.params_json,
                    sec_id=self.sec_id,
                    now=now,
                    lease_expires=lease,
                    state=new_state or "running",
                    outcome=outcome,
                )
            elif not saga_log.claim(
                conn,
                run.saga_id,
                self.sec_id,
                run.generation,
                states=states,
                lease_expires=lease,
                new_state=new_state,
                outcome=outcome,
            ):
                raise NotOwner()
            written.extend(events)
            if inside is not None:
                written.extend(inside(conn, maybe_committed))
            saga_log.append_events(
                conn,
                run.saga_id,
                # Events written together keep their order when sorted by time.
                [(n, e, d, now + timedelta(microseconds=i)) for i, (n, e, d) in enumerate(written)],
                creator=self.sec_id,
            )

        delay = 0.1
        for attempt in range(1, self._attempts + 1):
            began = time.monotonic()
            try:
                self.db.transaction(txn, name="saga log write", isolation=LOG_ISOLATION)
                break
            except NotOwner:
                raise self._why_not_owner(run) from None
            except saga_log.EventMismatch as err:
                raise Stop("interrupted", str(err)) from None
            except ActionFailed:
                raise
            except Exception as err:
                if isinstance(err, Conflict) and not run.logged:
                    raise  # the saga id is taken: nothing of this saga was written
                if attempt == self._attempts:
                    raise Stop(
                        "interrupted", f"cannot write the saga log: {one_line(err)}"
                    ) from None
                log.warning("saga %s: log write failed (%s); retrying", run.saga_id, one_line(err))
                maybe_committed = True
                time.sleep(delay)
                delay *= 3
        run.logged = True
        if new_state != "done" and time.monotonic() - began > self.lease_secs / 3:
            self._reclaim(run, (new_state,) if new_state else states)
        last = written[-1] if written else None
        kind = last[1] if last is not None else ("done" if new_state == "done" else new_state)
        self._checkpoint(run.saga_id, kind or "state", last[0] if last else None)

    def _checkpoint(self, saga_id: uuid.UUID, kind: str, node: str | None) -> None:
        if self._hook is not None:
            self._hook(Checkpoint(saga_id, kind, node))
