"""One coordinator pass (DESIGN.md section 4), the port of Nexus's background task.

Order: (0) adopt sagas whose owner died; (1) mark records on expunged pantries,
then probe every in-service pantry once: mark records whose pantry lost its
attachment, and sweep attachments nothing accounts for; (2) compute the changeset; (3)
request and create; (4) delete by state; (5) report. One failing item never stops
the others: it adds an error and the pass goes on. Losing a race to another pass
(a record created first elsewhere, a lock held or moved by another saga) is
reported as `skipped`, not as an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress
from udx.domain.errors import Conflict, UdxError
from udx.domain.model import Changeset, ExportState, ResourceRef, UserDataExport
from udx.domain.words import plural

if TYPE_CHECKING:
    from udx.datastore.retention import PruneCount
    from udx.db.engine import Database
    from udx.pantry.health import PassPantries
    from udx.pantry.inventory import Inventory
    from udx.pass_workers import WorkerSpec
    from udx.saga import SagaExecutor, SagaResult
    from udx.sagas.deps import ExportSagaDeps

log = logging.getLogger(__name__)

# "interrupted": this process lost the saga (lease, or the log could not be
# written); recovery finishes it later, but this pass did not. "abandoned": an
# operator stopped it mid-run; its record stays locked until repaired by hand.
FAILED_OUTCOMES = ("unwound", "stuck", "interrupted", "abandoned")
# Every outcome a saga invocation can report, in the order summaries list them.
OUTCOMES = ("succeeded", "skipped", "unwound", "stuck", "interrupted", "abandoned")

# Saga nodes where a Conflict means another pass or saga got there first.
_RACE_NODES = {"read_generation", "lock"}


@dataclass(slots=True)
class SagaInvocation:
    export_id: str
    resource_type: str
    resource_id: str
    saga_id: str | None
    outcome: str  # succeeded | unwound | stuck | interrupted | skipped
    error: str | None = None


@dataclass(slots=True)
class BypassedRecord:
    export_id: str
    resource_type: str
    resource_id: str


@dataclass
class PassStatus:
    create_invoked_ok: list[SagaInvocation] = field(default_factory=list)
    delete_invoked_ok: list[SagaInvocation] = field(default_factory=list)
    records_marked_for_deletion: int = 0
    records_marked_lost: int = 0
    records_bypassed_ok: list[BypassedRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sagas_recovered: int = 0
    orphans_detached: int = 0
    # Sagas a bounded pass (--deadline, --max-sagas) did not start: the next pass
    # runs them. Not an error.
    deferred: int = 0
    # Degraded pantries and the like: loud, but not errors (exit code unchanged).
    warnings: list[str] = field(default_factory=list)
    started: str | None = None  # ISO 8601 UTC, when the pass began
    duration_secs: float | None = None
    # Ctrl-C: the sagas this pass never started (in the JSON only when interrupted).
    not_started: list[SagaInvocation] = field(default_factory=list)
    interrupted: bool = field(default=False, repr=False)
    # Not in the JSON: tells the CLI to exit 3 (inventory unreachable), not 1.
    inventory_unavailable: bool = field(default=False, repr=False)
    # Not in the JSON: each probed in-service pantry, up or not (udx_pantry_up).
    pantries_up: dict[str, bool] = field(default_factory=dict, repr=False)
    # Not in the JSON: what --prune-older-than removed (None: it did not run).
    pruned: PruneCount | None = field(default=None, repr=False)
    # Not in the JSON: step 1 reported the records whose pantry is no address.
    bad_rows_reported: bool = field(default=False, repr=False)

    @property
    def failed(self) -> bool:
        sagas = [*self.create_invoked_ok, *self.delete_invoked_ok]
        if self.interrupted or self.errors:
            return True
        return any(s.outcome in FAILED_OUTCOMES for s in sagas)

    def counts(self) -> dict[str, Any]:
        """The numbers of this pass, for the pass history: sagas by kind and
        outcome, records marked and bypassed, sagas recovered, errors."""
        from collections import Counter

        sagas: Counter[str] = Counter()
        for kind, items in (("create", self.create_invoked_ok), ("delete", self.delete_invoked_ok)):
            sagas.update(f"{kind}:{i.outcome}" for i in items)
        return {
            "sagas": dict(sorted(sagas.items())),
            "records_marked_for_deletion": self.records_marked_for_deletion,
            "records_marked_lost": self.records_marked_lost,
            "records_bypassed": len(self.records_bypassed_ok),
            "sagas_recovered": self.sagas_recovered,
            "orphans_detached": self.orphans_detached,
            "errors": len(self.errors),
        }

    def json_fields(self) -> Iterator[tuple[str, Any]]:
        """The JSON object's (key, value) fields, the outcome lists as streams of
        dicts made while they are written (`udx.jsonstream`): a 100k pass never
        holds its JSON whole. Every dataclass field but those marked repr=False."""
        from udx.jsonstream import Stream

        for f in fields(self):
            if not f.repr or (f.name == "not_started" and not self.interrupted):
                continue  # not_started: Ctrl-C only, then with "interrupted": true
            value = getattr(self, f.name)
            if isinstance(value, list) and f.name != "errors" and f.name != "warnings":
                yield f.name, Stream(_item_json(item) for item in value)
            else:
                yield f.name, value
        if self.interrupted:
            yield "interrupted", True

    def to_json(self) -> dict[str, Any]:
        from udx.jsonstream import Stream

        out: dict[str, Any] = {}
        for key, value in self.json_fields():
            out[key] = list(value.items) if isinstance(value, Stream) else value
        return out


@dataclass
class PlannedStep:
    """One thing a dry run says the pass would do."""

    step: str
    action: str
    export_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    detail: str = ""


@dataclass
class DryRunReport:
    steps: list[PlannedStep] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bad_rows_reported: bool = field(default=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "steps": [asdict(s) for s in self.steps], "errors": self.errors}


# (event, amount): "total" sets, "advance" adds; per saga name too:
# "total:<name>" sets, "done:<name>" adds. A consumer ignores events it does not know.
ProgressFn = Callable[[str, int], None]


class Coordinator:
    """Runs passes. `executor` must know the export saga definitions and carry
    ExportSagaDeps; `inventory` is the same inventory those deps use."""

    def __init__(
        self,
        db: Database,
        inventory: Inventory,
        executor: SagaExecutor,
        *,
        request_timeout_secs: float = 10.0,
        retry_budget_secs: float = 60.0,
        orphan_grace_secs: float = 600.0,
        pantry_transport: Any = None,
        slow_status_secs: float = 2.0,
        workers: WorkerSpec | None = None,
    ) -> None:
        self.db = db
        self.inventory = inventory
        self.executor = executor
        self.request_timeout_secs = request_timeout_secs
        self.retry_budget_secs = retry_budget_secs
        self.orphan_grace_secs = orphan_grace_secs
        self.pantry_transport = pantry_transport
        self.slow_status_secs = slow_status_secs
        # None: every saga runs in this process (tests' transports and inventories
        # live here only); otherwise a large pass uses worker processes.
        self.workers = workers

    @property
    def _deps(self) -> ExportSagaDeps:
        from udx.sagas.deps import ExportSagaDeps

        deps = self.executor.deps
        if not isinstance(deps, ExportSagaDeps):
            raise TypeError("the coordinator's executor needs ExportSagaDeps as its deps")
        return deps

    # --- step 1 ---------------------------------------------------------------------------

    def _in_service(self, status: PassStatus | DryRunReport) -> list[PantryAddress] | None:
        """The in-service list, or None (with an error) when step 1 must not mark."""
        try:
            addresses = list(self.inventory.in_service())
        except UdxError as err:
            status.errors.append(f"cannot read the pantry inventory: {err}")
            if isinstance(status, PassStatus):
                status.inventory_unavailable = True
            return None
        try:
            from udx.datastore import exports
            from udx.pantry.inventory import invalid_entries

            # Once per pass, each naming the row and the fix; the rest goes on.
            status.errors.extend(invalid_entries(self.inventory))
            with self.db.connect() as conn:
                bad = exports.invalid_pantry_spellings(conn)
            status.errors.extend(s.describe() for s in bad)
            status.bad_rows_reported = True
        except UdxError as err:
            status.errors.append(f"cannot check for invalid pantry addresses: {err}")
        if not addresses:
            # An empty list would mark every record on every pantry: far more likely a
            # misconfiguration (an empty static list, an emptied table) than a rack
            # with no pantry left. Refuse, loudly; an operator can expunge by hand.
            status.errors.append(
                "the pantry inventory lists no pantry in service: not marking any record "
                "(check [pantry] source and `udx pantry list`)"
            )
            return None
        return addresses

    def _probe(self, in_service: list[PantryAddress]) -> PassPantries:
        """Ask every in-service pantry for its status once, all at once (a few dead
        ones must not add a timeout each). The answers serve both the lost
        attachments below and every create saga's pick in this pass."""
        from udx.pantry.health import PassPantries, probe_all

        probes = probe_all(in_service, self._deps.client)
        return PassPantries(in_service, probes, slow_secs=self.slow_status_secs)

    def _live_attachments(
        self, in_service: list[PantryAddress]
    ) -> dict[PantryAddress, list[tuple[uuid.UUID, str]]]:
        """(export id, volume id) of each Live, unmarked record on an in-service
        pantry, by pantry: one streamed query of four columns. Read BEFORE the
        pantries are probed: a record Live by then had its volume attached before,
        so a probe after it that lacks the volume means the pantry lost it. (Read
        after the probe, a record another pass made Live in between would look
        lost.)"""
        from udx.datastore import exports

        # Stored addresses are canonical: look them up as text, parsing only a miss.
        by_text = {(a.ip_text, a.port): a for a in in_service}
        wanted = set(in_service)
        out: dict[PantryAddress, list[tuple[uuid.UUID, str]]] = {}
        with self.db.connect() as conn:
            for export_id, ip, port, volume_id in exports.live_attachments(conn):
                if ip is None or port is None:
                    continue
                addr = by_text.get((ip, port))
                if addr is None:
                    try:
                        addr = PantryAddress.from_parts(ip, port)
                    except UdxError:
                        continue  # a malformed address is no pantry of ours
                    if addr not in wanted:
                        continue
                out.setdefault(addr, []).append((export_id, str(volume_id).lower()))
        return out

    @staticmethod
    def _lost_ids(
        live: dict[PantryAddress, list[tuple[uuid.UUID, str]]], pantries: PassPantries
    ) -> list[uuid.UUID]:
        """Of those records, the ones whose pantry answered the probe without their
        volume (it restarted). A pantry that did not answer is skipped, never lost."""
        lost: list[uuid.UUID] = []
        for addr, records in live.items():
            attached = pantries.attached(addr)
            if attached is None:
                continue
            lost += [export_id for export_id, volume_id in records if volume_id not in attached]
        return lost

    # --- the orphan sweep -----------------------------------------------------------------

    def _orphans(
        self, attached: dict[PantryAddress, set[str] | None], *, write: bool
    ) -> tuple[datetime, dict[PantryAddress, dict[str, datetime]]]:
        """Now, and each answering pantry's orphaned attachments with when they were
        first seen orphaned (`now` for new ones). With `write`, the sweep's memory
        (table orphan_attachment) is brought up to date in the same transaction;
        without (dry run), only read. The pantries were probed before this reads
        the database (see udx.datastore.orphans for why that order is safe)."""
        from udx.datastore import orphans
        from udx.db.types import utcnow

        answering = {a: v for a, v in attached.items() if v is not None}

        def txn(conn: Any) -> tuple[datetime, dict[tuple[str, str], datetime]]:
            now = utcnow()
            free = orphans.unaccounted(conn, set().union(*answering.values()))
            current = {a: {v for v in vols if v in free} for a, vols in answering.items()}
            if write:
                return now, orphans.remember(conn, current, now)
            known = orphans.seen_since(conn, answering)
            pairs = {(str(a), v) for a, vids in current.items() for v in vids}
            return now, {k: known.get(k, now) for k in pairs}

        if not answering:
            return utcnow(), {}
        if write:
            now, seen = self.db.transaction(txn, name="orphan sweep")
        else:
            with self.db.connect() as conn:
                now, seen = txn(conn)
        by_name = {str(a): a for a in answering}
        out: dict[PantryAddress, dict[str, datetime]] = {}
        for (addr, vid), first in seen.items():
            out.setdefault(by_name[addr], {})[vid] = first
        return now, out

    def _sweep_orphans(
        self, attached: dict[PantryAddress, set[str] | None], status: PassStatus
    ) -> None:
        """Detach every attachment on an answering pantry that nothing has accounted
        for since longer than the grace period; count them. One pantry's calls
        share one retry budget, pantries are swept at once."""
        from concurrent.futures import ThreadPoolExecutor

        from udx.datastore import orphans

        try:
            now, found = self._orphans(attached, write=True)
        except UdxError as err:
            status.errors.append(f"the orphan sweep failed: {err}")
            return
        cutoff = now - timedelta(seconds=self.orphan_grace_secs)
        due = {
            addr: sorted(v for v, first in vids.items() if first <= cutoff)
            for addr, vids in found.items()
        }
        due = {a: v for a, v in due.items() if v}
        if not due:
            return
        with ThreadPoolExecutor(max_workers=min(len(due), 16)) as pool:
            results = list(pool.map(lambda a: self._detach_orphans(a, due[a]), sorted(due)))
        detached: list[tuple[str, str]] = []
        for addr, (done, error) in zip(sorted(due), results, strict=True):
            for vid in done:
                log.warning(
                    "detached orphan attachment %s on pantry %s (orphaned since %s)",
                    vid,
                    addr,
                    found[addr][vid].isoformat(),
                )
            detached += [(str(addr), v) for v in done]
            if error is not None:
                status.errors.append(f"orphan sweep on pantry {addr}: {error}")
        status.orphans_detached += len(detached)
        try:
            self.db.transaction(lambda c: orphans.forget(c, detached), name="orphan sweep")
        except UdxError as err:  # the next pass finds them gone and forgets them then
            log.warning("could not forget %d detached orphans: %s", len(detached), err)

    def _detach_orphans(
        self, address: PantryAddress, volume_ids: list[str]
    ) -> tuple[list[str], str | None]:
        """Detach these volumes from one pantry, in order, stopping at the first
        failure: (the ones detached, that failure or None)."""
        from udx.pantry.client import PantryError, PantryGone
        from udx.pantry.retry import RetryingPantry

        done: list[str] = []
        pantry = RetryingPantry(
            address,
            self.inventory,
            timeout=self.request_timeout_secs,
            budget_secs=self.retry_budget_secs,
            transport=self.pantry_transport,
        )
        try:
            for vid in volume_ids:
                pantry.detach(uuid.UUID(vid))
                done.append(vid)
        except (PantryError, PantryGone) as err:
            return done, f"detaching orphan attachment {volume_ids[len(done)]} failed: {err}"
        finally:
            pantry.close()
        return done, None

    # --- the pass -------------------------------------------------------------------------------

    def run_pass(
        self,
        *,
        progress: ProgressFn | None = None,
        deadline_secs: float | None = None,
        max_sagas: int | None = None,
        prune_older_than: dt.timedelta | None = None,
    ) -> PassStatus:
        """One pass. `deadline_secs` (from now) and `max_sagas` bound it: once
        either is reached no saga starts; those in flight finish; the rest is
        reported as `deferred` and left to the next pass. `prune_older_than`:
        afterwards, remove done sagas and Deleted records older than that, batch
        by batch while the deadline allows (`udx saga prune`, `udx export prune`)."""
        from udx.db.types import utcnow

        started, t0 = utcnow(), time.monotonic()
        deadline = None if deadline_secs is None else t0 + deadline_secs
        status = self._run_pass(progress, deadline, max_sagas)
        if prune_older_than is not None and not status.interrupted:
            self._prune(status, prune_older_than, deadline)
        status.started = started.isoformat()
        status.duration_secs = round(time.monotonic() - t0, 3)
        # Errors go to the log too, so cron mail and log shippers see a failing
        # pass even when stdout is JSON nobody reads.
        for err in status.errors:
            log.error("%s", err)
        return status

    def _run_pass(
        self, progress: ProgressFn | None, deadline: float | None, max_sagas: int | None
    ) -> PassStatus:
        from udx.datastore import changeset as changeset_sql
        from udx.datastore import exports

        status = PassStatus()
        notify = progress or (lambda _e, _n: None)

        # 0. Sagas left behind by a process that died: adopt and finish them first,
        # so their records are not skipped as "owned by a saga" forever.
        try:
            recovered = self.executor.recover()
            status.sagas_recovered = len(recovered)
            for r in recovered:
                if r.outcome in ("stuck", "interrupted"):
                    status.errors.append(f"recovered saga {r.saga_id} ({r.name}): {r.outcome}")
        except UdxError as err:
            status.errors.append(f"saga recovery failed: {err}")

        # 1. Expunged pantries, then lost attachments (each pantry probed once).
        in_service = self._in_service(status)
        pantries: PassPantries | None = None
        if in_service is not None:
            try:
                status.records_marked_for_deletion = self.db.transaction(
                    lambda c: exports.mark_expunged_pantries(c, in_service),
                    name="mark expunged pantries",
                )
            except UdxError as err:
                status.errors.append(f"marking records on expunged pantries failed: {err}")
            live: dict[PantryAddress, list[tuple[uuid.UUID, str]]] | None = None
            try:
                live = self._live_attachments(in_service)  # before the probe (see there)
            except UdxError as err:
                status.errors.append(f"checking pantries for lost attachments failed: {err}")
            pantries = self._probe(in_service)  # each pantry once per pass
            _note_pantries(status, pantries)
            attached = pantries.attached_sets()
            try:
                ids = self._lost_ids(live, pantries) if live is not None else []
                status.records_marked_lost = self.db.transaction(
                    lambda c: exports.mark_lost(c, ids), name="mark lost attachments"
                )
            except UdxError as err:
                status.errors.append(f"checking pantries for lost attachments failed: {err}")
            self._sweep_orphans(attached, status)

        # 2. The changeset.
        try:
            cs: Changeset = self.db.transaction(changeset_sql.compute, name="changeset")
        except UdxError as err:
            status.errors.append(f"computing the changeset failed: {err}")
            return status
        log.info(
            "changeset: %d to request, %d to create, %d to delete",
            len(cs.request_required),
            len(cs.create_required),
            len(cs.delete_required),
        )

        # 3. Request, then create (one batch of sagas, bounded concurrency).
        creates = self._request(cs.request_required, status)
        creates += cs.create_required

        # 4. Deletes, by state.
        deletes: list[UserDataExport] = []
        for rec in cs.delete_required:
            if rec.state is ExportState.REQUESTED:
                self._bypass(rec, status)
            elif rec.state is ExportState.LIVE:
                if rec.volume_id is None:
                    status.errors.append(f"export {rec.id} is live without a volume id")
                elif rec.pantry_problem is not None:
                    _skip_bad_row(rec, status)
                else:
                    deletes.append(rec)
            elif rec.state is ExportState.DELETED:
                log.error("export %s is deleted but was listed for deletion", rec.id)
                status.errors.append(f"export {rec.id} is deleted but was listed for deletion")
            # assigning / deleting: a saga owns the record; skip.

        # Deletes first: a bounded pass that defers work must not starve them behind
        # a long queue of new exports (they free pantry attachments and volumes).
        jobs = [_Job.delete(r) for r in deletes] + [_Job.create(r) for r in creates]
        del cs, creates, deletes  # from here on only the compact jobs are kept
        budget = len(jobs) if max_sagas is None else min(len(jobs), max_sagas)
        n_deletes = min(sum(1 for j in jobs if j.deleting), budget)  # deletes run first
        notify("total:export-delete", n_deletes)
        notify("total:export-create", budget - n_deletes)
        notify("total", budget)
        if pantries is not None:
            self._deps.begin_pass(pantries)
        try:
            outcomes, deferred, status.interrupted = self._run_sagas(
                jobs, notify, budget, deadline, pantries
            )
        finally:
            if pantries is not None:
                self._deps.end_pass()
                _note_pantries(status, pantries)  # with the failures seen during the pass
        for job, inv in zip(jobs, outcomes, strict=True):
            if inv is not None:
                (status.delete_invoked_ok if job.deleting else status.create_invoked_ok).append(inv)
            elif status.interrupted:
                kind = "delete" if job.deleting else "create"
                status.not_started.append(
                    SagaInvocation(
                        job.export_id,
                        job.resource_type,
                        job.resource_id,
                        None,
                        f"{kind} not started",
                    )
                )
        if not status.interrupted:
            status.deferred = deferred
        if status.deferred:
            log.info("bounded pass: %d sagas deferred to the next pass", status.deferred)
        for inv in [*status.create_invoked_ok, *status.delete_invoked_ok]:
            if inv.outcome in FAILED_OUTCOMES:
                status.errors.append(
                    f"saga {inv.saga_id} for export {inv.export_id} {inv.outcome}: {inv.error}"
                )
        return status

    def _prune(self, status: PassStatus, age: dt.timedelta, deadline: float | None) -> None:
        from udx.datastore import retention
        from udx.db.types import utcnow

        def past_deadline() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        cutoff = utcnow() - age
        try:
            pruned = retention.prune_sagas(self.db, cutoff, stop=past_deadline)
            pruned.records = retention.prune_records(self.db, cutoff, stop=past_deadline).records
        except UdxError as err:
            status.errors.append(f"pruning history older than {age} failed: {err}")
            return
        status.pruned = pruned
        log.info(
            "pruned %d sagas, %d node events and %d Deleted records older than %s",
            pruned.sagas,
            pruned.events,
            pruned.records,
            age,
        )

    def _request(self, refs: list[ResourceRef], status: PassStatus) -> list[UserDataExport]:
        """Step 3's records, set-based: one transaction per REQUEST_CHUNK resources."""
        from udx.datastore import exports

        created: list[UserDataExport] = []
        for start in range(0, len(refs), exports.REQUEST_CHUNK):
            chunk = [(uuid.uuid4(), ref) for ref in refs[start : start + exports.REQUEST_CHUNK]]
            try:
                out = self.db.transaction(
                    partial(exports.request_many, requests=chunk), name="create export records"
                )
            except UdxError as err:
                status.errors.append(
                    f"creating records for {len(chunk)} resources (first "
                    f"{chunk[0][1].resource_type.value} {chunk[0][1].resource_id}): {err}"
                )
                continue
            created += out.created
            for ref, winner in out.taken:
                # Another pass created the record first: a lost race, reported as skipped.
                log.info(
                    "not requesting %s %s: another pass created record %s first",
                    ref.resource_type.value,
                    ref.resource_id,
                    winner.id,
                )
                status.create_invoked_ok.append(
                    SagaInvocation(
                        export_id=str(winner.id),
                        resource_type=ref.resource_type.value,
                        resource_id=str(ref.resource_id),
                        saga_id=None,
                        outcome="skipped",
                    )
                )
            for ref in out.gone:
                # Deleted since the changeset: the next pass no longer lists it.
                log.info(
                    "not requesting %s %s: it is gone", ref.resource_type.value, ref.resource_id
                )
        return created

    def _bypass(self, rec: UserDataExport, status: PassStatus) -> None:
        from udx.datastore import exports

        try:
            self.db.transaction(lambda c: exports.bypass_delete(c, rec.id), name="bypass delete")
        except Conflict as err:
            log.info("not bypassing export %s: %s", rec.id, err)  # moved by another pass
            return
        except UdxError as err:
            status.errors.append(f"bypassing export {rec.id} to deleted: {err}")
            return
        status.records_bypassed_ok.append(
            BypassedRecord(str(rec.id), rec.resource_type.value, str(rec.resource_id))
        )

    def _run_sagas(
        self,
        jobs: list[_Job],
        notify: ProgressFn,
        budget: int,
        deadline: float | None,
        pantries: PassPantries | None,
    ) -> tuple[list[SagaInvocation | None], int, bool]:
        """Run `jobs` in order, at most the executor's max_workers at once (in
        this process's threads, or split among worker processes for a large
        pass), starting no more than `budget` and none once `deadline`
        (monotonic) has passed; those in flight finish. Returns each job's
        compact outcome (None: not started; a saga's node outputs are dropped as
        soon as it ends), the count not started, and whether Ctrl-C stopped it:
        then nothing more starts, the running sagas finish (a second Ctrl-C
        stops at once; the next pass finishes them)."""
        outcomes: list[SagaInvocation | None] = [None] * len(jobs)
        if not jobs:
            return outcomes, 0, False

        def record(index: int, inv: SagaInvocation) -> None:
            outcomes[index] = inv
            try:
                notify("advance", 1)
                notify(f"done:{jobs[index].saga}", 1)
            except Exception as err:  # a progress display must not lose a result
                log.warning("pass progress callback failed: %s", err)

        processes = self.workers.processes_for(budget) if self.workers is not None else 1
        if self.workers is not None and processes > 1:
            from udx.pass_workers import WorkersUnavailable, run_jobs

            try:
                started, interrupted = run_jobs(
                    self.workers,
                    processes,
                    jobs,
                    budget=budget,
                    deadline=deadline,
                    pantries=pantries,
                    finished=lambda index, res: record(index, _invocation(jobs[index], res)),
                )
                return outcomes, len(jobs) - started, interrupted
            except WorkersUnavailable as err:
                log.warning("%s; running the sagas in this process", err)
        started, interrupted = self._run_in_threads(jobs, budget, deadline, record)
        return outcomes, len(jobs) - started, interrupted

    def _run_in_threads(
        self,
        jobs: list[_Job],
        budget: int,
        deadline: float | None,
        record: Callable[[int, SagaInvocation], None],
    ) -> tuple[int, bool]:
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        from udx.pass_workers import run_job

        workers = min(self.executor.max_workers, len(jobs))
        started = 0
        interrupted = False

        def one(index: int) -> None:
            # The result (with every node's output) is dropped before `record`.
            record(index, _invocation(jobs[index], run_job(self.executor, jobs[index])))

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saga") as pool:
            in_flight: set[Future[None]] = set()
            try:
                for index in range(len(jobs)):
                    if len(in_flight) >= workers:
                        _done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    if started >= budget or (
                        deadline is not None and time.monotonic() >= deadline
                    ):
                        break
                    in_flight.add(pool.submit(one, index))
                    started += 1
            except KeyboardInterrupt:
                interrupted = True
                running = sum(1 for f in in_flight if not f.done())
                log.warning(
                    "interrupted: waiting for %s to finish "
                    "(Ctrl-C again to stop at once; the next pass finishes them)",
                    plural(running, "running saga"),
                )
            wait(in_flight)
        return started, interrupted

    def plan(self) -> DryRunReport:
        """What `run_pass` would do, writing nothing and starting no saga."""
        from udx.datastore import changeset as changeset_sql
        from udx.datastore import exports
        from udx.datastore.export_locks import held_by_dead_sagas

        report = DryRunReport()
        # Records no pass will ever move on its own: say so, with the way out.
        with self.db.connect() as conn:
            held = held_by_dead_sagas(conn)
        for h in held:
            report.steps.append(
                PlannedStep(
                    "0-held",
                    f"skip (held by a {h['saga']} saga)",
                    h["export_id"],
                    h["resource_type"],
                    h["resource_id"],
                    f"saga {h['saga_id']}: udx export diagnose {h['export_id']}",
                )
            )
        # Records step 1 would mark join delete_required, as they would after marking.
        to_delete: dict[uuid.UUID, UserDataExport] = {}
        in_service = self._in_service(report)
        if in_service is not None:
            with self.db.connect() as conn:
                affected = exports.records_on_expunged_pantries(conn, in_service)
            for rec in affected:
                detail = f"pantry {rec.pantry_text} is not in service"
                report.steps.append(_step("1-expunged", "mark for deletion", rec, detail))
                to_delete[rec.id] = rec
            live_now = self._live_attachments(in_service)
            pantries = self._probe(in_service)
            attached = pantries.attached_sets()
            lost = set(self._lost_ids(live_now, pantries))
            lost_records: list[UserDataExport] = []
            if lost:
                with self.db.connect() as conn:
                    records = exports.list_exports(conn, states=[ExportState.LIVE])
                lost_records = [r for r in records if r.id in lost]
            for rec in lost_records:
                detail = f"pantry {rec.pantry_text} lost volume {rec.volume_id}"
                report.steps.append(_step("1-lost", "mark for deletion", rec, detail))
                to_delete[rec.id] = rec
            now, found = self._orphans(attached, write=False)
            cutoff = now - timedelta(seconds=self.orphan_grace_secs)
            for addr in sorted(found):
                for vid, first in sorted(found[addr].items()):
                    if first <= cutoff:
                        action = "detach the orphan attachment"
                        when = f"orphaned since {first.isoformat()}"
                    else:
                        action = "keep the orphan attachment (grace period)"
                        when = (
                            f"first seen orphaned {first.isoformat()}; detached from "
                            f"{(first + timedelta(seconds=self.orphan_grace_secs)).isoformat()}"
                        )
                    report.steps.append(
                        PlannedStep(
                            "1-orphans", action, detail=f"pantry {addr} volume {vid}: {when}"
                        )
                    )
        with self.db.connect() as conn:
            cs = changeset_sql.preview(conn)
        for rec in cs.would_mark:
            report.steps.append(_step("2-changeset", "mark for deletion", rec, "resource is gone"))
        for ref in cs.request_required:
            report.steps.append(
                PlannedStep(
                    "3-request",
                    "create record and run the create saga",
                    None,
                    ref.resource_type.value,
                    str(ref.resource_id),
                )
            )
        for rec in cs.create_required:
            if rec.id not in to_delete:
                report.steps.append(_step("3-create", "run the create saga", rec))
        to_delete.update({r.id: r for r in cs.delete_required})
        for rec in sorted(to_delete.values(), key=lambda r: str(r.id)):
            action = {
                ExportState.REQUESTED: "bypass to deleted (no saga)",
                ExportState.ASSIGNING: "skip (a create saga owns it)",
                ExportState.LIVE: "run the delete saga",
                ExportState.DELETING: "skip (a delete saga owns it)",
                ExportState.DELETED: "skip (already deleted; an error)",
            }[rec.state]
            if rec.state is ExportState.LIVE and rec.pantry_problem is not None:
                action = "skip (its pantry is not an address: fix the row first)"
                _skip_bad_row(rec, report)
            report.steps.append(_step("4-delete", action, rec))
        return report


def _skip_bad_row(rec: UserDataExport, status: PassStatus | DryRunReport) -> None:
    """A Live record marked for deletion whose pantry is not an address: no
    delete saga starts (it could not detach, and would unwind on every pass).
    Step 1 reported it with the fix, once per spelling, as for every bad row;
    when step 1 could not (no inventory), it is reported here, once."""
    if status.bad_rows_reported:
        return
    from udx.datastore.exports import pantry_fix

    status.errors.append(
        f"export {rec.id} names pantry {rec.pantry_text!r}, which is not an address "
        f"({rec.pantry_problem}): not deleted; fix it by hand: {pantry_fix(rec)}"
    )


def _item_json(item: Any) -> dict[str, Any]:
    """One outcome as a JSON object: `error` only when there is one."""
    out = {f.name: getattr(item, f.name) for f in fields(item)}
    if out.get("error", "") is None:
        del out["error"]
    return out


def _note_pantries(status: PassStatus, pantries: PassPantries) -> None:
    status.warnings = pantries.warnings
    status.pantries_up = {str(a): up for a, up in pantries.up().items()}


def _step(step: str, action: str, rec: UserDataExport, detail: str = "") -> PlannedStep:
    return PlannedStep(
        step, action, str(rec.id), rec.resource_type.value, str(rec.resource_id), detail
    )


@dataclass(frozen=True, slots=True)
class _Job:
    """One saga the pass will run, with only what its outcome needs."""

    saga: str
    export_id: str
    resource_type: str
    resource_id: str
    volume_id: str | None = None

    @property
    def deleting(self) -> bool:
        return self.volume_id is not None

    def params(self) -> dict[str, Any]:
        if self.volume_id is None:
            return {"export_id": self.export_id}
        return {"export_id": self.export_id, "volume_id": self.volume_id}

    @classmethod
    def create(cls, rec: UserDataExport) -> _Job:
        return cls("export-create", str(rec.id), rec.resource_type.value, str(rec.resource_id))

    @classmethod
    def delete(cls, rec: UserDataExport) -> _Job:
        return cls(
            "export-delete",
            str(rec.id),
            rec.resource_type.value,
            str(rec.resource_id),
            str(rec.volume_id),
        )


def _invocation(job: _Job, res: SagaResult) -> SagaInvocation:
    base = dict(
        export_id=job.export_id,
        resource_type=job.resource_type,
        resource_id=job.resource_id,
    )
    outcome = res.outcome
    if (
        outcome == "unwound"
        and res.failed_node in _RACE_NODES
        and res.error_type in ("Conflict", "NotFound")
    ):
        outcome = "skipped"  # another pass or saga holds or already moved the record
    error = None if outcome in ("succeeded", "skipped") else res.error
    return SagaInvocation(**base, saga_id=str(res.saga_id), outcome=outcome, error=error)
