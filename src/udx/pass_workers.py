"""Saga worker processes: a pass's sagas run on every core (PostgreSQL).

One Python process drives ~150-200 export sagas a second on the development
machine before its GIL is the limit, with a core left half idle (bench/limit.py,
README "Performance"). A pass with many sagas therefore runs them in worker
processes, each with its own database pool, pantry clients and saga executor
(its own SEC id: a saga it runs is leased to it like any other), as the upstream
control plane runs sagas on several Nexus instances at once.

The parent keeps every decision of the pass: which job next, the budget, the
deadline (a worker is handed a job only when one of its threads is free, so no
job waits in a worker past the deadline), progress and outcomes. A worker runs
the sagas it is handed and sends back each one's compact outcome and the
pantries that failed a call; the parent tells the other workers, so a pantry
that fails in one process is picked no more in any.

When things go wrong:
- a worker that dies (killed, out of memory) has its running sagas reported
  "interrupted": their leases expire and the next pass's recovery finishes them,
  as after a crash of a one-process pass. The pass goes on with the others.
- Ctrl-C reaches the parent only (workers ignore SIGINT): it hands out no more
  jobs and waits for the running ones; a second Ctrl-C stops the workers at
  once (the next pass finishes their sagas).
- a worker whose parent dies sees its pipe close, finishes its sagas and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from udx.saga.definition import SagaResult

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from udx.config import Settings
    from udx.db.engine import Database
    from udx.pantry.health import PassPantries, PassPantriesSnapshot
    from udx.saga import SagaExecutor

log = logging.getLogger(__name__)

# Below this many sagas per process, starting processes (~0.3-0.5 s of imports
# each) costs more than it saves.
MIN_SAGAS_PER_PROCESS = 100
# "auto" never starts more than this: beyond it the database is the limit.
MAX_AUTO_PROCESSES = 4
# How long the parent waits for a worker to exit after asking it to.
STOP_WAIT_SECS = 10.0
# How long a worker may take to open the database and build its executor: one
# that has not said "ready" by then is stopped, and the others go on without it.
READY_WAIT_SECS = 60.0


class WorkersUnavailable(Exception):
    """No worker process became ready, so no saga started: the caller runs them in
    its own threads (the message says why, e.g. a worker could not connect)."""


class Job(Protocol):
    """One saga to run: its definition's name and parameters."""

    @property
    def saga(self) -> str: ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker process opens the pass's database and builds its executor
    (picklable: it is sent to each worker). `processes` 0 means one per core, at
    most MAX_AUTO_PROCESSES; `threads` is the pass's concurrency, split among them."""

    url: str
    isolation: str
    busy_timeout_secs: float
    settings: Settings
    processes: int
    threads: int

    @classmethod
    def of(
        cls, db: Database, settings: Settings, processes: int, threads: int
    ) -> WorkerSpec | None:
        """The spec for `db`, or None when the sagas run in this process: when
        asked (1), when workers cannot share the database (an in-memory SQLite
        one lives in this process only), and by default (0) on SQLite, whose
        writers take turns at one file lock (measured: no faster in processes)."""
        if processes == 1 or (db.dialect == "sqlite" and db.sqlite_path is None):
            return None
        if processes == 0 and db.dialect == "sqlite":
            return None
        return cls(db.url, db.isolation, db.busy_timeout_secs, settings, processes, threads)

    def processes_for(self, sagas: int) -> int:
        """Processes for a pass that starts `sagas` sagas; 1: run them in this one."""
        return processes_for(sagas, self.threads, self.processes)


def processes_for(sagas: int, threads: int, asked: int = 0) -> int:
    """Processes for `sagas` sagas at most `threads` at once, `asked` of them (0:
    one per core, at most MAX_AUTO_PROCESSES); 1: run them in this process."""
    wanted = asked or min(os.cpu_count() or 1, MAX_AUTO_PROCESSES)
    return max(1, min(wanted, sagas // MIN_SAGAS_PER_PROCESS, threads))


def run_job(executor: SagaExecutor, job: Job) -> SagaResult:
    """One saga; a saga that cannot even be logged is "interrupted" with the
    error, never an exception (as SagaExecutor.run_many does)."""
    from udx.saga.executor import one_line

    try:
        return executor.run(job.saga, job.params())
    except Exception as err:
        why = one_line(err)
        args = ", ".join(f"{k} {v}" for k, v in job.params().items())
        log.error("%s saga (%s) could not start: %s", job.saga, args, why)
        return SagaResult(uuid.uuid4(), job.saga, "interrupted", error=why)


# --- the parent ---------------------------------------------------------------------------


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    conn: Connection
    threads: int
    running: dict[int, Job] = field(default_factory=dict)
    alive: bool = True
    ready: bool = False
    terminated_at: float | None = None  # asked to exit (not ready in time)


class _Stop:
    """Ctrl-C in the main thread: the first asks to stop handing out jobs, the
    second raises KeyboardInterrupt. A flag, not an exception, the first time: an
    exception in the middle of a pipe read would lose the framing of the stream."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _Stop:
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    @contextlib.contextmanager
    def ignored(self) -> Any:
        """SIGINT ignored while a worker is started: a spawned child inherits the
        disposition, so a Ctrl-C during its imports (before it ignores SIGINT
        itself) is no KeyboardInterrupt traceback on the terminal. One that
        arrives in those few milliseconds is lost to the parent too."""
        if not self._installed:
            yield
            return
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: a handler not installed from Python. Python's own is the best
            # guess: with SIG_DFL a later Ctrl-C (say, in the thread fallback)
            # would kill the process without its summary.
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


def split_threads(threads: int, processes: int) -> list[int]:
    """`threads` sagas at once split among `processes` (the first ones get the
    remainder): exactly `threads` in all, at least one each."""
    base, extra = divmod(max(threads, processes), processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def run_jobs(
    spec: WorkerSpec,
    processes: int,
    jobs: Sequence[Job],
    *,
    budget: int,
    deadline: float | None,
    pantries: PassPantries | None,
    finished: Callable[[int, SagaResult], None],
) -> tuple[int, bool]:
    """Run `jobs` in order in `processes` worker processes, `spec.threads` sagas
    at once in all, starting at most `budget` and none once `deadline`
    (monotonic) has passed. `finished(index, result)` is called in this thread as
    each saga ends. Returns how many started and whether Ctrl-C stopped it.
    Raises WorkersUnavailable when no worker became ready (nothing started)."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # no fork: threads and pools hold locks
    snapshot = pantries.snapshot() if pantries is not None else None
    level = logging.getLogger("udx").getEffectiveLevel()
    workers: list[_Worker] = []
    next_index = 0
    started = 0
    start_failures: list[str] = []
    spawned_at = time.monotonic()

    def more_to_start(stop: _Stop) -> bool:
        if next_index >= len(jobs) or started >= budget or stop.requested:
            return False
        return deadline is None or time.monotonic() < deadline

    def hand_out(worker: _Worker, stop: _Stop) -> None:
        nonlocal next_index, started
        while worker.ready and len(worker.running) < worker.threads and more_to_start(stop):
            job = jobs[next_index]
            try:
                worker.conn.send(("run", next_index, job.saga, job.params()))
            except OSError:
                return  # it died: its sentinel says so below
            worker.running[next_index] = job
            next_index += 1
            started += 1

    def failed_pantries(source: _Worker, failures: list[tuple[Any, str]]) -> None:
        for address, reason in failures:
            if pantries is not None:
                pantries.mark_failed(address, reason)
            for other in workers:
                if other is not source and other.alive:
                    with contextlib.suppress(OSError):  # dead: its sentinel says so
                        other.conn.send(("pantry_failed", address, reason))

    def receive(worker: _Worker) -> bool:
        """One message; False when the pipe is closed."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False
        kind = message[0]
        if kind == "done":
            _, index, fields, failures = message
            worker.running.pop(index, None)
            failed_pantries(worker, failures)
            finished(index, SagaResult(uuid.UUID(fields[0]), *fields[1:]))
        elif kind == "ready":
            worker.ready = True
            log.debug(
                "saga worker process %d ready after %.2f s",
                worker.process.pid,
                time.monotonic() - spawned_at,
            )
        elif kind == "failed":  # it could not start: it exits next
            start_failures.append(message[1])
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logging.getLogger(record.name).handle(record)
        return True

    def bury(worker: _Worker) -> None:
        while worker.conn.poll() and receive(worker):  # what it sent before it died
            pass
        worker.alive = False
        worker.process.join(1.0)
        code = worker.process.exitcode
        why = f"saga worker process {worker.process.pid} exited (code {code}) while running it"
        if worker.running:
            log.error("%s with %d sagas running", why, len(worker.running))
        for index, job in sorted(worker.running.items()):
            finished(index, SagaResult(uuid.uuid4(), job.saga, "interrupted", error=why))
        worker.running.clear()

    def drive(stop: _Stop) -> None:
        warned = False
        ready_by = time.monotonic() + READY_WAIT_SECS
        while True:
            live = [w for w in workers if w.alive]
            if not live and more_to_start(stop) and started:
                log.error("every saga worker process exited: no more sagas started")
            if stop.requested and not warned:
                warned = True
                log.warning(
                    "interrupted: waiting for the running sagas to finish "
                    "(Ctrl-C again to stop at once; the next pass finishes them)"
                )
            for w in live:
                hand_out(w, stop)
            starting = [w for w in live if not w.ready]
            now = time.monotonic()
            for w in starting:
                if w.terminated_at is None and now >= ready_by:
                    log.error(
                        "saga worker process %d was not ready after %.0f s: stopped",
                        w.process.pid,
                        READY_WAIT_SECS,
                    )
                    w.terminated_at = now
                    w.process.terminate()
                elif w.terminated_at is not None and now - w.terminated_at >= STOP_WAIT_SECS:
                    w.process.kill()  # it ignored SIGTERM
            if not any(w.running for w in live) and not (starting and more_to_start(stop)):
                return
            sources: list[Any] = [w.conn for w in live] + [w.process.sentinel for w in live]
            for ready in wait(sources, timeout=0.2):
                for w in live:
                    if not w.alive:
                        continue
                    if (ready is w.conn and not receive(w)) or ready == w.process.sentinel:
                        bury(w)

    with _Stop() as stop:
        if not more_to_start(stop):
            return 0, False  # nothing may start (a budget of 0, a deadline passed)
        try:
            for number, threads in enumerate(split_threads(spec.threads, processes)):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(
                    target=_worker_main,
                    args=(child_end, spec, threads, snapshot, level),
                    name=f"udx-saga-worker-{number}",
                    daemon=True,  # never outlives this process
                )
                try:
                    with stop.ignored():
                        process.start()
                        workers.append(_Worker(number, process, parent_end, threads))
                except Exception as err:  # a process limit, memory: go on with those started
                    from udx.saga.executor import one_line

                    start_failures.append(f"cannot start a process: {one_line(err)}")
                    parent_end.close()
                    break
                finally:
                    child_end.close()
            if workers:
                log.info("running up to %d sagas in %d worker processes", len(jobs), len(workers))
                drive(stop)
        finally:
            _stop_workers(workers)
        interrupted = stop.requested
    if started == 0 and not interrupted and more_to_start(stop):
        # No saga was handed to any worker: running them here runs none twice.
        why = start_failures[0] if start_failures else "they exited before they were ready"
        raise WorkersUnavailable(f"no saga worker process could start: {why}")
    return started, interrupted


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask each worker to stop, wait for the ones with nothing running, and
    terminate the rest (their leases expire; the next pass's recovery finishes
    their sagas). Every worker is terminated, even if the wait is interrupted."""
    for w in workers:
        if w.alive:
            with contextlib.suppress(OSError):
                w.conn.send(("stop",))
    try:
        end = time.monotonic() + STOP_WAIT_SECS
        for w in workers:
            w.process.join(max(0.0, end - time.monotonic()) if not w.running else 0.0)
    finally:
        for w in workers:
            try:
                if w.process.is_alive():
                    w.process.terminate()  # still running sagas (a second Ctrl-C), or hung
                    w.process.join(5.0)
            finally:
                w.conn.close()


# --- a worker -----------------------------------------------------------------------------


# Record attributes that survive the pipe as they are; any other is sent as its
# str(): a record may carry an object that cannot be pickled (a connection, a lock).
_PLAIN = (str, int, float, bool, type(None))


class _PipeLogHandler(logging.Handler):
    """Sends each record to the parent, which logs it as its own."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: v if isinstance(v, _PLAIN) else str(v) for k, v in vars(record).items()}
            fields["msg"] = record.getMessage()
            fields["args"] = None
            fields["exc_info"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            self._send(("log", fields))
        except Exception:  # the parent is gone
            self.handleError(record)


def _worker_main(
    conn: Connection,
    spec: WorkerSpec,
    threads: int,
    snapshot: PassPantriesSnapshot | None,
    level: int,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    udx_log = logging.getLogger("udx")
    udx_log.handlers[:] = [_PipeLogHandler(send)]
    udx_log.setLevel(level)
    udx_log.propagate = False
    logging.raiseExceptions = False  # a log line lost with the parent is no traceback
    try:
        _serve(conn, send, spec, threads, snapshot)
    except Exception as err:  # one line in the parent's log, not a traceback on stderr
        from udx.saga.executor import one_line

        log.error("saga worker process %d failed: %s", os.getpid(), one_line(err))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _serve(
    conn: Connection,
    send: Callable[[tuple[Any, ...]], None],
    spec: WorkerSpec,
    threads: int,
    snapshot: PassPantriesSnapshot | None,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from udx.db.engine import open_database
    from udx.runtime import build_runtime
    from udx.saga.executor import one_line
    from udx.sagas.deps import ExportSagaDeps

    try:
        db = open_database(
            spec.url, isolation=spec.isolation, busy_timeout_secs=spec.busy_timeout_secs
        )
        runtime = build_runtime(db, spec.settings, concurrency=threads, processes=1)
        with db.connect() as conn_check:  # "ready" means it reached the database too
            conn_check.exec_driver_sql("SELECT 1")
    except Exception as err:
        with contextlib.suppress(OSError):
            send(("failed", one_line(err)))
        raise
    pantries = snapshot.restore() if snapshot is not None else None
    if pantries is not None and isinstance(runtime.executor.deps, ExportSagaDeps):
        runtime.executor.deps.begin_pass(pantries)
    reported: set[Any] = set(pantries.failures()) if pantries is not None else set()
    reported_lock = threading.Lock()

    def run(index: int, job: _RemoteJob) -> None:
        # Whatever happens, the parent hears of this job: it waits for a "done"
        # or for this process to exit, never for nothing.
        try:
            result = run_job(runtime.executor, job)
        except BaseException as err:  # run_job returns for an Exception; not for these
            result = SagaResult(uuid.uuid4(), job.saga, "interrupted", error=one_line(err))
        try:
            news: list[tuple[Any, str]] = []
            if pantries is not None:
                with reported_lock:
                    for address, reason in pantries.failures().items():
                        if address not in reported:
                            reported.add(address)
                            news.append((address, reason))
            fields = (
                str(result.saga_id),
                result.name,
                result.outcome,
                result.failed_node,
                result.error,
                result.error_type,
            )
            send(("done", index, fields, news))
        except OSError:
            pass  # the parent is gone; the saga log has the outcome
        except BaseException:
            # The outcome cannot be sent: exit, and the parent reports this
            # process's running sagas "interrupted" (the next pass finishes them).
            os._exit(1)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="saga")
    try:
        send(("ready",))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone: finish what runs, then exit
            if message[0] == "run":
                _, index, saga, params = message
                pool.submit(run, index, _RemoteJob(saga, params))
            elif message[0] == "pantry_failed" and pantries is not None:
                with reported_lock:
                    reported.add(message[1])
                pantries.mark_failed(message[1], message[2])
            elif message[0] == "stop":
                break
    finally:
        pool.shutdown(wait=True)
        runtime.close()
        db.dispose()


@dataclass(frozen=True)
class _RemoteJob:
    saga: str
    args: dict[str, Any]

    def params(self) -> dict[str, Any]:
        return self.args
