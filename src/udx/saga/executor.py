"""The saga executor: runs sagas durably against the saga log.

Every step is first written to the log, through a conditional write that checks
this executor (its `sec_id`, at the saga's `adopt_generation`) still owns the saga;
when that check fails the executor stops driving the saga at once. A background
thread renews the leases of the sagas being driven, so a long node keeps its lease;
a process that dies stops renewing, and after the lease another executor adopts
the saga (`recover`) and continues it from the log.

The executor is split by concern: `forward` drives nodes, `unwind` undoes them,
`drive` continues a saga from its log, `leases` holds ownership and fencing,
`log_writes` writes the log, and `run` holds what they share; `SagaExecutor`
here adds the public API.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from udx.datastore import saga_log
from udx.db.types import utcnow
from udx.domain.errors import BadInput, Conflict, UdxError
from udx.saga.definition import SagaDefinition, SagaResult
from udx.saga.drive import SagaDriver
from udx.saga.errors import SagaUnrecoverable
from udx.saga.run import (
    LOG_ISOLATION,
    Checkpoint,
    CheckpointHook,
    Run,
    RunInterrupted,
    one_line,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from udx.db.engine import Database

log = logging.getLogger(__name__)

__all__ = ["LOG_ISOLATION", "Checkpoint", "RunInterrupted", "SagaExecutor", "abandon", "one_line"]


class SagaExecutor(SagaDriver):
    """Runs, resumes and recovers sagas of the given definitions.

    deps is handed to every action as `ctx.deps` (the engine never looks inside).
    lease_secs: how long this process keeps a saga without renewing; recovery by
    another process waits that long after a crash. sec_id identifies this executor
    in the log (fresh per executor unless given). on_checkpoint is a test hook.
    """

    def __init__(
        self,
        db: Database,
        definitions: Iterable[SagaDefinition],
        *,
        deps: Any = None,
        lease_secs: float = 30.0,
        max_workers: int = 8,
        sec_id: uuid.UUID | None = None,
        on_checkpoint: CheckpointHook | None = None,
        log_write_attempts: int = 4,
    ) -> None:
        if lease_secs <= 0:
            raise ValueError("lease_secs must be positive")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.db = db
        self.deps = deps
        self.lease_secs = lease_secs
        self.max_workers = max_workers
        self.sec_id = sec_id or uuid.uuid4()
        self._hook = on_checkpoint
        self._attempts = max(1, log_write_attempts)
        self._defs: dict[str, SagaDefinition] = {}
        for d in definitions:
            if d.name in self._defs:
                raise ValueError(f"two saga definitions are named {d.name!r}")
            self._defs[d.name] = d
        self._lock = threading.Lock()
        self._active: set[uuid.UUID] = set()
        self._stop_keeper = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def definitions(self) -> dict[str, SagaDefinition]:
        return dict(self._defs)

    def run(
        self, name: str, params: dict[str, Any], *, saga_id: uuid.UUID | None = None
    ) -> SagaResult:
        """Start a saga and run it to the end in this thread.

        Raises BadInput (unknown name, params not JSON or rejected by
        validate_params) or Conflict (saga_id taken) before anything is logged.
        """
        definition, params_json = self._prepare(name, params)
        return self._start(definition, params_json, saga_id or uuid.uuid4())

    def run_many(
        self,
        items: list[tuple[str, dict[str, Any]]],
        *,
        on_done: Callable[[SagaResult], None] | None = None,
    ) -> list[SagaResult]:
        """Run several sagas, at most max_workers at once; results in input order.

        Every item is validated before any saga starts. A saga that cannot even be
        logged comes back as outcome "interrupted" with the error, never an exception.
        on_done (progress display) is called with each result as it finishes, from
        the worker threads.
        """
        prepared = [self._prepare(name, params) for name, params in items]

        def one(p: tuple[SagaDefinition, str]) -> SagaResult:
            saga_id = uuid.uuid4()
            try:
                result = self._start(p[0], p[1], saga_id)
            except Exception as err:
                log.error("saga %s (%s) could not start: %s", saga_id, p[0].name, one_line(err))
                result = SagaResult(saga_id, p[0].name, "interrupted", error=one_line(err))
            if on_done is not None:
                try:
                    on_done(result)
                except Exception as err:  # a progress display must not lose a result
                    log.warning("saga progress callback failed: %s", one_line(err))
            return result

        if not prepared:
            return []
        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(prepared)), thread_name_prefix="saga"
        ) as pool:
            futures = [pool.submit(one, p) for p in prepared]
            try:
                return [f.result() for f in futures]
            except KeyboardInterrupt:
                # Ctrl-C: start nothing more; the sagas already running finish
                # (leaving the pool waits for them) unless a second Ctrl-C stops
                # the process, when recovery finishes them later.
                pool.shutdown(wait=False, cancel_futures=True)
                running = sum(1 for f in futures if f.running())
                log.warning(
                    "interrupted: waiting for the %d running saga(s) to finish "
                    "(Ctrl-C again to stop at once; the next pass finishes them)",
                    running,
                )
        raise RunInterrupted(futures)  # after the pool waited for the running ones

    def resume(self, saga_id: uuid.UUID) -> SagaResult:
        """Adopt one saga (its owner's lease must have expired, or be this executor's)
        and continue it from the log.

        NotFound: no such saga. Conflict: done, abandoned, or owned by a live
        process. SagaUnrecoverable: this process cannot run it (see `abandon`).
        """
        with self.db.connect() as conn:
            rec = saga_log.get_required(conn, saga_id)
            evs = saga_log.events(conn, saga_id)
        self._check_resumable(rec)
        with self._lock:
            if saga_id in self._active:
                raise Conflict(f"saga {saga_id} is already being run by this process")
        definition, params_json = self._resolve(rec, evs)
        adopted = self._adopt(saga_id)
        if adopted is None:
            with self.db.connect() as conn:
                now_rec = saga_log.get_required(conn, saga_id)
            self._check_resumable(now_rec)
            lease = now_rec.lease_expires.isoformat() if now_rec.lease_expires else "?"
            raise Conflict(
                f"saga {saga_id} is being run by process {now_rec.current_sec} (lease until "
                f"{lease}); it can be resumed once that lease expires"
            )
        gen, state = adopted
        return self._drive(Run(saga_id, definition, params_json, gen), state)

    def retry_undo(self, saga_id: uuid.UUID) -> tuple[SagaResult, str | None]:
        """Run a stuck saga's failed undo again (its cause was fixed) and finish
        unwinding; returns the result and the earlier undo error.

        NotFound: no such saga. Conflict: not stuck. SagaUnrecoverable: this
        process cannot run it.
        """
        with self.db.connect() as conn:
            rec = saga_log.get_required(conn, saga_id)
            evs = saga_log.events(conn, saga_id)
        if rec.saga_state != "done" or rec.outcome != "stuck":
            status = rec.saga_state + (f" ({rec.outcome})" if rec.outcome else "")
            raise Conflict(f"saga {saga_id} is {status}, not stuck: no undo to retry")
        definition, params_json = self._resolve(rec, evs)

        def txn(conn: Connection) -> tuple[int, str | None] | None:
            now = utcnow()
            lease = now + timedelta(seconds=self.lease_secs)
            return saga_log.reopen_stuck(conn, saga_id, self.sec_id, now=now, lease_expires=lease)

        reopened = self.db.transaction(txn, name="saga retry undo", isolation=LOG_ISOLATION)
        if reopened is None:
            raise Conflict(f"saga {saga_id} is no longer stuck (someone else retried it)")
        gen, previous = reopened
        log.warning("saga %s: retrying its failed undo (was: %s)", saga_id, previous)
        return self._drive(Run(saga_id, definition, params_json, gen), "unwinding"), previous

    def recover(self) -> list[SagaResult]:
        """Adopt and finish every running/unwinding saga whose owner's lease expired.

        Sagas this process cannot run are abandoned with reason "unrecoverable";
        one bad saga never stops the others. Returns one result per saga adopted
        here (sagas another process adopted first are left to it).
        """
        with self.db.connect() as conn:
            candidates = saga_log.expired(conn, utcnow())
        if not candidates:
            return []
        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(candidates)), thread_name_prefix="saga-recover"
        ) as pool:
            results = list(pool.map(self._recover_one, candidates))
        return [r for r in results if r is not None]

    def __enter__(self) -> SagaExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, name: str, params: dict[str, Any]) -> tuple[SagaDefinition, str]:
        definition = self._defs.get(name)
        if definition is None:
            known = ", ".join(sorted(self._defs)) or "none"
            raise BadInput(f"unknown saga {name!r} (known: {known})")
        if not isinstance(params, dict):
            raise BadInput(f"saga {name!r}: params must be a JSON object")
        try:
            params_json = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise BadInput(f"saga {name!r}: params are not JSON-serialisable: {err}") from None
        if definition.validate_params is not None:
            try:
                definition.validate_params(json.loads(params_json))
            except UdxError:
                raise
            except Exception as err:
                raise BadInput(f"saga {name!r}: invalid params: {one_line(err)}") from None
        return definition, params_json

    def _start(
        self, definition: SagaDefinition, params_json: str, saga_id: uuid.UUID
    ) -> SagaResult:
        # No transaction of its own: the first log write inserts the saga row (with
        # the first node's `started`, and the node itself when it runs in its log
        # transaction). Until that commits nothing of the saga exists anywhere; a
        # crash before it leaves nothing to recover. A taken saga_id is a Conflict
        # from that first write, still before anything is logged.
        run = Run(saga_id, definition, params_json, 1, logged=False)
        return self._drive(run, "running", fresh=True)

    def _recover_one(self, rec: saga_log.SagaRecord) -> SagaResult | None:
        try:
            with self._lock:
                if rec.id in self._active:
                    return None
            adopted = self._adopt(rec.id)
            if adopted is None:
                return None  # another process adopted it first, or it finished
            gen, state = adopted
            with self.db.connect() as conn:
                current = saga_log.get_required(conn, rec.id)
                evs = saga_log.events(conn, rec.id)
            try:
                definition, params_json = self._resolve(current, evs)
            except SagaUnrecoverable as err:
                comment = str(err)
                self.db.transaction(
                    lambda c: saga_log.abandon(
                        c,
                        rec.id,
                        reason="unrecoverable",
                        comment=comment,
                        now=utcnow(),
                        owner=(self.sec_id, gen),
                    ),
                    name="saga abandon",
                )
                log.warning("saga %s abandoned as unrecoverable: %s", rec.id, comment)
                return SagaResult(rec.id, rec.name, "abandoned", error=comment)
            return self._drive(Run(rec.id, definition, params_json, gen), state)
        except Exception as err:  # one bad saga never blocks the rest
            log.error("recovering saga %s failed: %s", rec.id, one_line(err))
            return SagaResult(rec.id, rec.name, "interrupted", error=one_line(err))


def abandon(db: Database, saga_id: uuid.UUID, reason: str, comment: str) -> None:
    """Abandon a saga that is not done: nothing runs on it again. An executor driving
    it stops at its next step (an action already running finishes).

    NotFound: no such saga. Conflict: already done or abandoned. BadInput: empty
    reason or comment.
    """
    if not reason.strip():
        raise BadInput("abandoning a saga needs a reason")
    if not comment.strip():
        raise BadInput("abandoning a saga needs a comment")

    def txn(conn: Connection) -> None:
        saga_log.abandon(
            conn, saga_id, reason=reason.strip(), comment=comment.strip(), now=utcnow()
        )

    db.transaction(txn, name="saga abandon", isolation=LOG_ISOLATION)
