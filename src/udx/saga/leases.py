"""Leases and fencing: which sagas this executor owns, and keeping them.

An executor owns a saga while the saga row names it (`current_sec`) at the
generation it adopted; every log write re-checks that (`saga_log.claim`). This
part adopts sagas, keeps their leases alive from a background thread while they
are driven, renews a lease after a slow write, explains a lost saga, and fences
nodes that call out (`ActionContext.fence`).
"""

from __future__ import annotations

import json
import logging
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from udx.datastore import saga_log
from udx.db.types import utcnow
from udx.domain.errors import Conflict, UdxError
from udx.saga.definition import ActionContext
from udx.saga.errors import SagaFenced
from udx.saga.run import LOG_ISOLATION, CheckpointHook, Run, Stop, one_line

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from udx.db.engine import Database

log = logging.getLogger("udx.saga.executor")


class SagaLeases:
    """The ownership half of `SagaExecutor` (which sets these attributes)."""

    db: Database
    deps: Any
    lease_secs: float
    sec_id: uuid.UUID
    _hook: CheckpointHook | None
    _attempts: int
    _lock: threading.Lock
    _active: set[uuid.UUID]
    _stop_keeper: threading.Event
    _keeper: threading.Thread | None

    def _adopt(self, saga_id: uuid.UUID) -> tuple[int, str] | None:
        def txn(conn: Connection) -> tuple[int, str] | None:
            now = utcnow()
            gen = saga_log.adopt(
                conn,
                saga_id,
                self.sec_id,
                now=now,
                lease_expires=now + timedelta(seconds=self.lease_secs),
            )
            if gen is None:
                return None
            return gen, saga_log.get_required(conn, saga_id).saga_state

        adopted = self.db.transaction(txn, name="saga adopt", isolation=LOG_ISOLATION)
        if adopted is not None:
            log.info("saga %s adopted by %s (generation %d)", saga_id, self.sec_id, adopted[0])
        return adopted

    @contextmanager
    def _active_saga(self, saga_id: uuid.UUID) -> Iterator[None]:
        with self._lock:
            if saga_id in self._active:
                raise Conflict(f"saga {saga_id} is already being run by this process")
            self._active.add(saga_id)
            if self._keeper is None:
                self._stop_keeper = threading.Event()
                self._keeper = threading.Thread(
                    target=self._keep_leases, name=f"saga-lease-{self.sec_id}", daemon=True
                )
                self._keeper.start()
        try:
            yield
        finally:
            with self._lock:
                self._active.discard(saga_id)

    def _keep_leases(self) -> None:
        # Renew well before expiry: three chances per lease period.
        interval = self.lease_secs / 3
        stop = self._stop_keeper  # this thread's own stop flag (close() then run() again)
        while not stop.wait(interval):
            with self._lock:
                ids = list(self._active)
            if not ids:
                continue
            try:
                self.db.transaction(
                    partial(self._renew, ids), name="saga lease renewal", isolation=LOG_ISOLATION
                )
            except Exception as err:
                # The driving threads' own writes still check ownership; a missed
                # renewal only risks losing the saga to recovery, never two drivers.
                log.warning("could not renew saga leases: %s", one_line(err))

    def _renew(self, ids: list[uuid.UUID], conn: Connection) -> None:
        saga_log.renew(conn, ids, self.sec_id, utcnow() + timedelta(seconds=self.lease_secs))

    def close(self) -> None:
        """Stop the lease renewal thread. Sagas still being driven keep running in
        their threads but lose their leases."""
        with self._lock:
            keeper, self._keeper = self._keeper, None
            self._stop_keeper.set()
        if keeper is not None:
            keeper.join(timeout=5)

    def _reclaim(self, run: Run, states: tuple[str, ...]) -> None:
        """Renew the lease after a slow write, or stop if the saga was adopted."""

        def txn(conn: Connection) -> bool:
            lease = utcnow() + timedelta(seconds=self.lease_secs)
            return saga_log.claim(
                conn, run.saga_id, self.sec_id, run.generation, states=states, lease_expires=lease
            )

        try:
            held = self.db.transaction(txn, name="saga lease renewal", isolation=LOG_ISOLATION)
        except UdxError as err:
            raise Stop("interrupted", f"cannot renew the lease: {one_line(err)}") from None
        if not held:
            raise self._why_not_owner(run)

    def _why_not_owner(self, run: Run) -> Stop:
        with self.db.connect() as conn:
            rec = saga_log.get(conn, run.saga_id)
        if rec is None:
            return Stop("interrupted", f"saga {run.saga_id} is no longer in the log")
        if rec.saga_state == "abandoned":
            return Stop(
                "abandoned",
                f"saga {run.saga_id} was abandoned ({rec.abandon_reason}: {rec.abandon_comment})",
            )
        if rec.current_sec != self.sec_id or rec.adopt_generation != run.generation:
            return Stop(
                "interrupted",
                f"saga {run.saga_id} was adopted by process {rec.current_sec} "
                f"(generation {rec.adopt_generation}); it continues there",
            )
        return Stop("interrupted", f"saga {run.saga_id} is unexpectedly {rec.saga_state}")

    def _context(
        self,
        run: Run,
        node: str,
        db: Database | None = None,
        outputs: dict[str, Any] | None = None,
        fence_states: tuple[str, ...] | None = None,
    ) -> ActionContext:
        """What a node gets. `fence_states` (the saga states the node runs in) arms
        `ctx.fence` for a node run outside its log transaction; inside one, the
        transaction's own claim holds the saga and the fence is a no-op."""
        fence: Callable[[], None] = (
            partial(self._fence, run, fence_states) if fence_states else (lambda: None)
        )
        return ActionContext(
            saga_id=run.saga_id,
            params=json.loads(run.params_json),
            node=node,
            db=db or self.db,
            deps=self.deps,
            _outputs=types.MappingProxyType(dict(run.outputs if outputs is None else outputs)),
            _fence=fence,
        )

    def _fence(self, run: Run, states: tuple[str, ...]) -> None:
        """`ActionContext.fence`: confirm ownership in the database, or SagaFenced.

        Why a database round trip and not the lease expiry this executor knows
        locally (it set every lease, so `monotonic() < last renewal + lease_secs`
        costs nothing):
        - the local clock does not see every pause. CLOCK_MONOTONIC keeps running
          while a process is SIGSTOPped or in a GC pause, but a frozen VM's guest
          clock typically stops with it (kvmclock) and resumes as if no time had
          passed, while the adopter compares the lease with its own wall clock;
          a local "the lease is fine" would then be wrong exactly when it matters;
        - an expired lease does not mean the saga was lost (nobody may have
          adopted it: then this process may go on), and an unexpired local lease
          does not mean it is held (an operator may have abandoned it);
        - the keeper thread's renewals can fail silently (database trouble), so
          the local view can be stale in either direction.
        The claim is the same conditional UPDATE every log write makes (owner,
        adopt generation, state) and renews the lease: after it commits, no other
        process can adopt the saga for a whole lease on its clock (hosts keep
        their clocks close, as the lease already requires). Calls are fenced only
        after a node's first (retries, second requests, cleanup), which are rare
        and at least a backoff apart, so the hot path pays nothing. What remains
        is a pause between this claim and the request reaching the pantry, which
        no client-side check can close; the orphan sweep of the pass removes an
        attachment such a late request leaves.
        """
        try:
            self._reclaim(run, states)
        except Stop as stop:
            raise SagaFenced(stop.outcome, stop.message) from None
        except Exception as err:  # ownership unknown (the database): do not call out
            raise SagaFenced(
                "interrupted", f"cannot confirm this process still owns the saga: {one_line(err)}"
            ) from None
