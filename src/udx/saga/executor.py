"""The saga executor: runs sagas durably against the saga log.

Every step is first written to the log, through a conditional write that checks
this executor (its `sec_id`, at the saga's `adopt_generation`) still owns the saga;
when that check fails the executor stops driving the saga at once. A background
thread renews the leases of the sagas being driven, so a long node keeps its lease;
a process that dies stops renewing, and after the lease another executor adopts
the saga (`recover`) and continues it from the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from udx.datastore import saga_log
from udx.db.engine import is_retryable
from udx.db.types import utcnow
from udx.domain.errors import BadInput, Conflict, UdxError
from udx.saga.definition import ActionContext, Node, Outcome, SagaDefinition, SagaResult
from udx.saga.errors import SagaFenced, SagaUnrecoverable

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from udx.db.engine import Database

log = logging.getLogger(__name__)

# Saga log writes are guarded by one conditional UPDATE of the saga row (owner
# and adopt generation), which holds that row's lock until commit; that is safe at
# READ COMMITTED. At SERIALIZABLE, PostgreSQL's predicate locks, taken per index
# page, made concurrent sagas abort each other's log writes: thousands of 40001
# retries per 1,000 sagas, for keys no two sagas ever share (measured in
# bench/pass_throughput.py). Nodes run in their log transaction
# (`Node.in_log_transaction`) share this level: the saga row lock keeps every
# other process off the saga, and their writes are compare-and-swap UPDATEs
# (which READ COMMITTED re-checks against the latest row version) or rows keyed
# by ids only this saga holds. Only PostgreSQL honours the override; CockroachDB
# runs everything SERIALIZABLE, where conflicts are per key.
LOG_ISOLATION = "READ COMMITTED"

# (node id, event type, data as JSON text or None)
Event = tuple[str, str, str | None]


class Checkpoint(NamedTuple):
    """A point in a saga's execution, reported to `on_checkpoint` hooks (the crash
    harness kills a process at each one).

    kind: "created", the event types ("started", "succeeded", "failed",
    "undo_started", "undo_finished", "undo_failed") and "done" right after they are
    committed; "action_returned" / "undo_returned" after an action or undo returned
    but before its completion is logged (the point where a crash makes it run twice).
    """

    saga_id: uuid.UUID
    kind: str
    node: str | None


CheckpointHook = Callable[[Checkpoint], None]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `run_many`: `results` holds, in input order, the result of
    each saga that ran, and None for each that never started."""

    def __init__(self, futures: list[Any]) -> None:
        super().__init__("interrupted")
        self.results: list[SagaResult | None] = [
            f.result() if f.done() and not f.cancelled() else None for f in futures
        ]


class _Stop(Exception):
    """This executor must stop driving the saga (abandoned, adopted elsewhere, log down)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.message = message


class _NotOwner(Exception):
    pass


class _ActionFailed(Exception):
    """An action or undo run inside a log transaction failed (not the log write)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


def _failure_info(err: BaseException) -> dict[str, str]:
    failure = {"error": one_line(err), "type": type(err).__name__}
    if isinstance(err, TypeError | ValueError) and "JSON" in str(err):
        failure["error"] = f"output is not JSON-serialisable: {one_line(err)}"
    return failure


@dataclass
class _Run:
    saga_id: uuid.UUID
    definition: SagaDefinition
    params_json: str
    generation: int
    outputs: dict[str, Any] = field(default_factory=dict)
    failed_node: str | None = None
    error: str | None = None
    error_type: str | None = None

    def result(self, outcome: Outcome, error: str | None = None) -> SagaResult:
        return SagaResult(
            saga_id=self.saga_id,
            name=self.definition.name,
            outcome=outcome,
            failed_node=self.failed_node,
            error=error if error is not None else self.error,
            error_type=self.error_type,
            outputs=dict(self.outputs),
        )


def one_line(err: BaseException) -> str:
    """An exception as one line for logs and operators."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 500 else line[:497] + "..."


class SagaExecutor:
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

    # --- public API --------------------------------------------------------------------

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
        return self._drive(_Run(saga_id, definition, params_json, gen), state)

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
        return self._drive(_Run(saga_id, definition, params_json, gen), "unwinding"), previous

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

    def close(self) -> None:
        """Stop the lease renewal thread. Sagas still being driven keep running in
        their threads but lose their leases."""
        with self._lock:
            keeper, self._keeper = self._keeper, None
            self._stop_keeper.set()
        if keeper is not None:
            keeper.join(timeout=5)

    def __enter__(self) -> SagaExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- starting, adopting -------------------------------------------------------------

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
        def insert(conn: Connection) -> None:
            now = utcnow()
            saga_log.insert(
                conn,
                saga_id=saga_id,
                name=definition.name,
                params_json=params_json,
                sec_id=self.sec_id,
                now=now,
                lease_expires=now + timedelta(seconds=self.lease_secs),
            )

        self.db.transaction(insert, name="saga insert", isolation=LOG_ISOLATION)
        self._checkpoint(saga_id, "created", None)
        return self._drive(_Run(saga_id, definition, params_json, 1), "running", fresh=True)

    def _check_resumable(self, rec: saga_log.SagaRecord) -> None:
        if rec.saga_state == "abandoned":
            raise Conflict(
                f"saga {rec.id} was abandoned (reason {rec.abandon_reason!r}): "
                "nothing runs on it again"
            )
        if rec.saga_state == "done":
            raise Conflict(
                f"saga {rec.id} is already done (outcome {rec.outcome}): nothing to resume"
            )

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

    def _resolve(
        self, rec: saga_log.SagaRecord, evs: list[saga_log.NodeEvent]
    ) -> tuple[SagaDefinition, str]:
        """The definition and params to continue a logged saga, or SagaUnrecoverable."""
        definition = self._defs.get(rec.name)
        if definition is None:
            known = ", ".join(sorted(self._defs)) or "none"
            raise SagaUnrecoverable(
                f"saga {rec.id}: unknown saga name {rec.name!r} (this udx knows: {known})"
            )
        try:
            params = json.loads(rec.params)
        except ValueError as err:
            raise SagaUnrecoverable(f"saga {rec.id}: params are not JSON: {err}") from None
        if not isinstance(params, dict):
            raise SagaUnrecoverable(f"saga {rec.id}: params are not a JSON object")
        if definition.validate_params is not None:
            try:
                definition.validate_params(params)
            except Exception as err:
                raise SagaUnrecoverable(
                    f"saga {rec.id}: params no longer valid: {one_line(err)}"
                ) from None
        for e in evs:
            try:
                e.decoded()
            except ValueError as err:
                # Continuing would need that output (or error) and cannot have it;
                # adopting it in every pass would only report it interrupted forever.
                raise SagaUnrecoverable(
                    f"saga {rec.id}: the log's {e.event_type!r} event of node {e.node_id!r} "
                    f"is not JSON: {err}"
                ) from None
        names = {n.name for n in definition.nodes}
        unknown = sorted({e.node_id for e in evs} - names)
        if unknown:
            raise SagaUnrecoverable(
                f"saga {rec.id}: the log has nodes {', '.join(unknown)} that saga "
                f"{rec.name!r} no longer has"
            )
        return definition, rec.params

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
            return self._drive(_Run(rec.id, definition, params_json, gen), state)
        except Exception as err:  # one bad saga never blocks the rest
            log.error("recovering saga %s failed: %s", rec.id, one_line(err))
            return SagaResult(rec.id, rec.name, "interrupted", error=one_line(err))

    # --- driving ------------------------------------------------------------------------

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

    def _drive(self, run: _Run, state: str, *, fresh: bool = False) -> SagaResult:
        with self._active_saga(run.saga_id):
            try:
                return self._drive_owned(run, state, fresh)
            except _Stop as stop:
                level = logging.INFO if stop.outcome == "abandoned" else logging.WARNING
                log.log(level, "saga %s: stopped driving it: %s", run.saga_id, stop.message)
                return run.result(stop.outcome, stop.message)

    def _drive_owned(self, run: _Run, state: str, fresh: bool) -> SagaResult:
        # A saga this executor has just created has no events yet: no need to read.
        evs: list[saga_log.NodeEvent] = []
        if not fresh:
            with self.db.connect() as conn:
                evs = saga_log.events(conn, run.saga_id)
        by_node: dict[str, dict[str, saga_log.NodeEvent]] = {}
        for e in evs:
            by_node.setdefault(e.node_id, {})[e.event_type] = e
        for node in run.definition.nodes:
            done = by_node.get(node.name, {}).get("succeeded")
            if done is not None:
                run.outputs[node.name] = done.decoded()
            failed = by_node.get(node.name, {}).get("failed")
            if failed is not None:
                self._note_failure(run, node.name, failed.decoded())

        if state == "running":
            result = self._run_forward(run)
            if result is not None:
                return result
        return self._unwind(run, by_node)

    def _run_forward(self, run: _Run) -> SagaResult | None:
        """Run the nodes not yet done; the result when the saga succeeded, None when
        it must unwind (the failure is logged and noted in `run`).

        Log transactions per node, fewest first:
        - a node's `succeeded` is committed with the next node's `started` (or the
          saga's end);
        - consecutive nodes that run in their log transaction share one
          transaction (with all their events); when one of them fails, all of them
          roll back and run again one transaction each, so the log names exactly
          the node that failed (they are idempotent, and nothing of theirs stayed);
        - such a group also logs the `started` of the node after it when that node
          calls out, still before it runs.
        A crash before a commit re-runs what that commit would have logged, which
        every action must tolerate anyway (it may crash after its own effect).
        """
        nodes = run.definition.nodes
        last = nodes[-1]
        pending: list[Event] = []
        prestarted: str | None = None  # a node whose `started` went with the group before
        solo: set[str] = set()  # in-log nodes to run one per transaction (a group failed)
        finished = False  # the saga's end was logged with the last group
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if node.name in run.outputs:
                i += 1
                continue
            if run.failed_node == node.name:
                # Logged as failed but the saga never turned unwinding: finish that step.
                self._write(run, ("running", "unwinding"), new_state="unwinding")
                return None
            started: list[Event] = [*pending]
            if prestarted != node.name:
                started.append((node.name, "started", None))
            group = [node]
            if node.in_log_transaction and node.name not in solo:
                for nxt in nodes[i + 1 :]:
                    if not nxt.in_log_transaction or nxt.name in run.outputs:
                        break
                    if nxt.name == run.failed_node:
                        break
                    group.append(nxt)
            try:
                if node.in_log_transaction:
                    after = i + len(group)
                    then: list[Event] = []
                    if after < len(nodes) and not nodes[after].in_log_transaction:
                        then = [(nodes[after].name, "started", None)]
                    datas = self._act_in_log_transaction(
                        run, group, started, group[-1] is last, then
                    )
                    if then:
                        prestarted = nodes[after].name
                    for n, data in zip(group, datas, strict=True):
                        run.outputs[n.name] = json.loads(data)
                    finished = group[-1] is last
                    pending = []
                    i = after
                    continue
                if started:
                    self._write(run, ("running",), events=started)
                started = []  # committed
                try:
                    output = node.action(self._context(run, node.name, fence_states=("running",)))
                    data = json.dumps(output, sort_keys=True)
                except SagaFenced as fenced:
                    raise _Stop(fence_outcome(fenced), fenced.message) from None
                except Exception as err:
                    raise _ActionFailed(err) from err
                self._checkpoint(run.saga_id, "action_returned", node.name)
            except _ActionFailed as failed:
                if len(group) > 1:
                    solo.update(n.name for n in group)
                    continue  # nothing was written: run them again, one by one
                failure = _failure_info(failed.err)
                self._note_failure(run, node.name, failure)
                log.info("saga %s: %s", run.saga_id, run.error)
                # `started` is still to write when the action ran (and rolled back)
                # inside its log transaction.
                self._write(
                    run,
                    ("running", "unwinding"),
                    events=[*started, (node.name, "failed", json.dumps(failure, sort_keys=True))],
                    new_state="unwinding",
                )
                return None
            run.outputs[node.name] = json.loads(data)
            pending = [(node.name, "succeeded", data)]
            i += 1
        if not finished:
            self._write(
                run, ("running", "done"), events=pending, new_state="done", outcome="succeeded"
            )
        return run.result("succeeded")

    def _unwind(self, run: _Run, by_node: dict[str, dict[str, saga_log.NodeEvent]]) -> SagaResult:
        for node in reversed(run.definition.nodes):
            if node.name not in run.outputs or node.undo is None:
                continue  # only what succeeded is undone; a failed action left nothing
            if "undo_finished" in by_node.get(node.name, {}):
                continue
            undo_started: list[Event] = [(node.name, "undo_started", None)]
            try:
                if node.in_log_transaction:
                    self._undo_in_log_transaction(run, node, undo_started)
                    continue
                self._write(run, ("unwinding",), events=undo_started)
                undo_started = []  # committed
                try:
                    node.undo(self._context(run, node.name, fence_states=("unwinding",)))
                except SagaFenced as fenced:
                    raise _Stop(fence_outcome(fenced), fenced.message) from None
                except Exception as err:
                    raise _ActionFailed(err) from err
            except _ActionFailed as failed:
                failure = _failure_info(failed.err)
                message = f"undo of node {node.name} failed: {failure['error']}"
                if run.error:
                    message = f"{run.error}; {message}"
                log.error("saga %s is stuck: %s", run.saga_id, message)
                self._write(
                    run,
                    ("unwinding", "done"),
                    events=[
                        *undo_started,
                        (node.name, "undo_failed", json.dumps(failure, sort_keys=True)),
                    ],
                    new_state="done",
                    outcome="stuck",
                )
                return run.result("stuck", message)
            self._checkpoint(run.saga_id, "undo_returned", node.name)
            self._write(run, ("unwinding",), events=[(node.name, "undo_finished", None)])
        self._write(run, ("unwinding", "done"), new_state="done", outcome="unwound")
        return run.result("unwound")

    @staticmethod
    def _note_failure(run: _Run, node: str, failure: Any) -> None:
        info = failure if isinstance(failure, dict) else {"error": str(failure)}
        run.failed_node = node
        run.error = f"node {node} failed: {info.get('error', '?')}"
        run.error_type = info.get("type")

    def _act_in_log_transaction(
        self, run: _Run, group: list[Node], events: list[Event], finish: bool, then: list[Event]
    ) -> list[str]:
        """Run the actions of `group` (consecutive nodes) inside one transaction that
        logs `events` (the first node's `started`, and the previous node's
        `succeeded`), each node's `started` and `succeeded`, and `then` (the next
        node's `started`); with `finish`, the saga's end too. Returns the outputs
        as JSON text; raises _ActionFailed (everything rolled back) when an action
        fails."""
        out: list[str] = []

        def inside(conn: Connection, maybe_committed: bool) -> list[Event]:
            out.clear()
            if maybe_committed:
                # The last attempt's commit may have landed: then its outputs are in
                # the log, and running the actions again could disagree with them
                # (fresh ids, a moved generation).
                logged = {
                    e.node_id: e.data
                    for e in saga_log.events(conn, run.saga_id)
                    if e.event_type == "succeeded"
                }
                if all(n.name in logged for n in group):
                    redo: list[Event] = []
                    for n in group:
                        data = logged[n.name] or "null"
                        if n is not group[0]:
                            redo.append((n.name, "started", None))
                        redo.append((n.name, "succeeded", data))
                        out.append(data)
                    return [*redo, *then]
            db = self.db.bound_to(conn)
            outputs = dict(run.outputs)  # later nodes of the group see earlier outputs
            written: list[Event] = []
            for n in group:
                if n is not group[0]:
                    written.append((n.name, "started", None))
                try:
                    output = n.action(self._context(run, n.name, db, outputs))
                    data = json.dumps(output, sort_keys=True)
                except Exception as err:
                    if is_retryable(err):
                        raise  # the log transaction retries from its start
                    raise _ActionFailed(err) from err
                self._checkpoint(run.saga_id, "action_returned", n.name)
                outputs[n.name] = json.loads(data)
                out.append(data)
                written.append((n.name, "succeeded", data))
            return [*written, *then]

        self._write(
            run,
            ("running", "done") if finish else ("running",),
            events=events,
            inside=inside,
            new_state="done" if finish else None,
            outcome="succeeded" if finish else None,
        )
        return list(out)

    def _undo_in_log_transaction(self, run: _Run, node: Node, events: list[Event]) -> None:
        assert node.undo is not None
        undo = node.undo

        def inside(conn: Connection, maybe_committed: bool) -> list[Event]:
            if maybe_committed and any(
                e.node_id == node.name and e.event_type == "undo_finished"
                for e in saga_log.events(conn, run.saga_id)
            ):
                return [(node.name, "undo_finished", None)]  # the last attempt committed
            try:
                undo(self._context(run, node.name, self.db.bound_to(conn)))
            except Exception as err:
                if is_retryable(err):
                    raise
                raise _ActionFailed(err) from err
            self._checkpoint(run.saga_id, "undo_returned", node.name)
            return [(node.name, "undo_finished", None)]

        self._write(run, ("unwinding",), events=events, inside=inside)

    def _context(
        self,
        run: _Run,
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

    def _fence(self, run: _Run, states: tuple[str, ...]) -> None:
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
        except _Stop as stop:
            raise SagaFenced(stop.outcome, stop.message) from None
        except Exception as err:  # ownership unknown (the database): do not call out
            raise SagaFenced(
                "interrupted", f"cannot confirm this process still owns the saga: {one_line(err)}"
            ) from None

    def _write(
        self,
        run: _Run,
        states: tuple[str, ...],
        *,
        events: list[Event] | tuple[()] = (),
        new_state: str | None = None,
        outcome: str | None = None,
        inside: Callable[[Connection, bool], list[Event]] | None = None,
    ) -> None:
        """One log write in one transaction, only while this executor owns the saga.

        `inside`, when given, runs in that transaction after `events` are written
        (an action in its log transaction); the events it returns are written after
        it. It raises _ActionFailed, which is passed on at once (not retried). Its
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
            if not saga_log.claim(
                conn,
                run.saga_id,
                self.sec_id,
                run.generation,
                states=states,
                lease_expires=now + timedelta(seconds=self.lease_secs),
                new_state=new_state,
                outcome=outcome,
            ):
                raise _NotOwner()
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
            except _NotOwner:
                raise self._why_not_owner(run) from None
            except saga_log.EventMismatch as err:
                raise _Stop("interrupted", str(err)) from None
            except _ActionFailed:
                raise
            except Exception as err:
                if attempt == self._attempts:
                    raise _Stop(
                        "interrupted", f"cannot write the saga log: {one_line(err)}"
                    ) from None
                log.warning("saga %s: log write failed (%s); retrying", run.saga_id, one_line(err))
                maybe_committed = True
                time.sleep(delay)
                delay *= 3
        if new_state != "done" and time.monotonic() - began > self.lease_secs / 3:
            self._reclaim(run, (new_state,) if new_state else states)
        last = written[-1] if written else None
        kind = last[1] if last is not None else ("done" if new_state == "done" else new_state)
        self._checkpoint(run.saga_id, kind or "state", last[0] if last else None)

    def _reclaim(self, run: _Run, states: tuple[str, ...]) -> None:
        """Renew the lease after a slow write, or stop if the saga was adopted."""

        def txn(conn: Connection) -> bool:
            lease = utcnow() + timedelta(seconds=self.lease_secs)
            return saga_log.claim(
                conn, run.saga_id, self.sec_id, run.generation, states=states, lease_expires=lease
            )

        try:
            held = self.db.transaction(txn, name="saga lease renewal", isolation=LOG_ISOLATION)
        except UdxError as err:
            raise _Stop("interrupted", f"cannot renew the lease: {one_line(err)}") from None
        if not held:
            raise self._why_not_owner(run)

    def _why_not_owner(self, run: _Run) -> _Stop:
        with self.db.connect() as conn:
            rec = saga_log.get(conn, run.saga_id)
        if rec is None:
            return _Stop("interrupted", f"saga {run.saga_id} is no longer in the log")
        if rec.saga_state == "abandoned":
            return _Stop(
                "abandoned",
                f"saga {run.saga_id} was abandoned ({rec.abandon_reason}: {rec.abandon_comment})",
            )
        if rec.current_sec != self.sec_id or rec.adopt_generation != run.generation:
            return _Stop(
                "interrupted",
                f"saga {run.saga_id} was adopted by process {rec.current_sec} "
                f"(generation {rec.adopt_generation}); it continues there",
            )
        return _Stop("interrupted", f"saga {run.saga_id} is unexpectedly {rec.saga_state}")

    def _checkpoint(self, saga_id: uuid.UUID, kind: str, node: str | None) -> None:
        if self._hook is not None:
            self._hook(Checkpoint(saga_id, kind, node))


def fence_outcome(fenced: SagaFenced) -> Outcome:
    return "abandoned" if fenced.outcome == "abandoned" else "interrupted"


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
