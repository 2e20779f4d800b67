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

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress
from udx.domain.errors import Conflict, UdxError
from udx.domain.model import Changeset, ExportState, ResourceRef, UserDataExport

if TYPE_CHECKING:
    from udx.db.engine import Database
    from udx.pantry.inventory import Inventory
    from udx.saga import SagaExecutor, SagaResult

log = logging.getLogger(__name__)

# "interrupted": this process lost the saga (lease, or the log could not be
# written); recovery finishes it later, but this pass did not. "abandoned": an
# operator stopped it mid-run; its record stays locked until repaired by hand.
FAILED_OUTCOMES = ("unwound", "stuck", "interrupted", "abandoned")
# Every outcome a saga invocation can report, in the order summaries list them.
OUTCOMES = ("succeeded", "skipped", "unwound", "stuck", "interrupted", "abandoned")

# Saga nodes where a Conflict means another pass or saga got there first.
_RACE_NODES = {"read_generation", "lock"}


@dataclass
class SagaInvocation:
    export_id: str
    resource_type: str
    resource_id: str
    saga_id: str | None
    outcome: str  # succeeded | unwound | stuck | interrupted | skipped
    error: str | None = None


@dataclass
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
    started: str | None = None  # ISO 8601 UTC, when the pass began
    duration_secs: float | None = None
    # Ctrl-C: the sagas this pass never started (in the JSON only when interrupted).
    not_started: list[SagaInvocation] = field(default_factory=list)
    interrupted: bool = field(default=False, repr=False)
    # Not in the JSON: tells the CLI to exit 3 (inventory unreachable), not 1.
    inventory_unavailable: bool = field(default=False, repr=False)

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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["inventory_unavailable"]
        if not out.pop("interrupted"):
            del out["not_started"]
        else:
            out["interrupted"] = True
        for key in ("create_invoked_ok", "delete_invoked_ok"):
            for item in out[key]:
                if item["error"] is None:
                    del item["error"]
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
    ) -> None:
        self.db = db
        self.inventory = inventory
        self.executor = executor
        self.request_timeout_secs = request_timeout_secs
        self.retry_budget_secs = retry_budget_secs
        self.orphan_grace_secs = orphan_grace_secs
        self.pantry_transport = pantry_transport

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

    def _attached_volumes(self, address: PantryAddress) -> set[str] | None:
        """The volumes a pantry says it holds; None when it does not answer."""
        from udx.pantry.client import PantryClient, PantryError

        client = PantryClient(
            address, timeout=self.request_timeout_secs, transport=self.pantry_transport
        )
        try:
            return {v.lower() for v in client.status().volumes}
        except (PantryError, OSError) as err:
            log.info("pantry %s did not answer its status call (%s); skipped", address, err)
            return None
        finally:
            client.close()

    def _probe(self, in_service: list[PantryAddress]) -> dict[PantryAddress, set[str] | None]:
        """Each in-service pantry's attached volumes (None: it did not answer), one
        status call per pantry, all at once: a few dead ones must not add a
        timeout each."""
        from concurrent.futures import ThreadPoolExecutor

        addresses = sorted(set(in_service))
        if not addresses:
            return {}
        with ThreadPoolExecutor(max_workers=min(len(addresses), 16)) as pool:
            return dict(zip(addresses, pool.map(self._attached_volumes, addresses), strict=True))

    def _lost_records(
        self, attached: dict[PantryAddress, set[str] | None]
    ) -> list[UserDataExport]:
        """Live, unmarked records on an answering in-service pantry that no longer
        holds their volume (it restarted). One query."""
        from udx.datastore import exports

        with self.db.connect() as conn:
            live = exports.list_exports(conn, states=[ExportState.LIVE])
        lost: list[UserDataExport] = []
        for rec in live:
            held = attached.get(rec.pantry_address) if rec.pantry_address else None
            if held is not None and not rec.resource_deleted and (
                str(rec.volume_id).lower() not in held
            ):
                lost.append(rec)
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

    def run_pass(self, *, progress: ProgressFn | None = None) -> PassStatus:
        import time

        from udx.db.types import utcnow

        started, t0 = utcnow(), time.monotonic()
        status = self._run_pass(progress)
        status.started = started.isoformat()
        status.duration_secs = round(time.monotonic() - t0, 3)
        # Errors go to the log too, so cron mail and log shippers see a failing
        # pass even when stdout is JSON nobody reads.
        for err in status.errors:
            log.error("%s", err)
        return status

    def _run_pass(self, progress: ProgressFn | None) -> PassStatus:
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

        # 1. Expunged pantries, then lost attachments.
        in_service = self._in_service(status)
        if in_service is not None:
            try:
                status.records_marked_for_deletion = self.db.transaction(
                    lambda c: exports.mark_expunged_pantries(c, in_service),
                    name="mark expunged pantries",
                )
            except UdxError as err:
                status.errors.append(f"marking records on expunged pantries failed: {err}")
            attached = self._probe(in_service)  # each pantry once per pass
            try:
                lost = self._lost_records(attached)
                ids = [r.id for r in lost]
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
                else:
                    deletes.append(rec)
            elif rec.state is ExportState.DELETED:
                log.error("export %s is deleted but was listed for deletion", rec.id)
                status.errors.append(f"export {rec.id} is deleted but was listed for deletion")
            # assigning / deleting: a saga owns the record; skip.

        jobs: list[tuple[str, dict[str, Any]]] = [
            ("export-create", {"export_id": str(rec.id)}) for rec in creates
        ]
        jobs += [
            ("export-delete", {"export_id": str(r.id), "volume_id": str(r.volume_id)})
            for r in deletes
        ]
        notify("total:export-create", len(creates))
        notify("total:export-delete", len(deletes))
        notify("total", len(jobs))
        from udx.saga.executor import RunInterrupted

        try:
            results: list[SagaResult | None] = list(self._run_sagas(jobs, notify))
        except RunInterrupted as stop:
            results = stop.results
            status.interrupted = True
        create_results = results[: len(creates)]
        delete_results = results[len(creates) :]
        for kind, recs, outs in (
            ("create", creates, create_results),
            ("delete", deletes, delete_results),
        ):
            done = status.create_invoked_ok if kind == "create" else status.delete_invoked_ok
            for rec, res in zip(recs, outs, strict=True):
                if res is None:
                    status.not_started.append(
                        SagaInvocation(
                            str(rec.id),
                            rec.resource_type.value,
                            str(rec.resource_id),
                            None,
                            f"{kind} not started",
                        )
                    )
                else:
                    done.append(_invocation(rec, res))
        for inv in [*status.create_invoked_ok, *status.delete_invoked_ok]:
            if inv.outcome in FAILED_OUTCOMES:
                status.errors.append(
                    f"saga {inv.saga_id} for export {inv.export_id} {inv.outcome}: {inv.error}"
                )
        return status

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
        self, jobs: list[tuple[str, dict[str, Any]]], notify: ProgressFn
    ) -> list[SagaResult]:
        if not jobs:
            return []
        def done(result: SagaResult) -> None:
            notify("advance", 1)
            notify(f"done:{result.name}", 1)

        results: list[SagaResult] = list(self.executor.run_many(jobs, on_done=done))
        return results

    # --- dry run ----------------------------------------------------------------------------------

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
                detail = f"pantry {rec.pantry_address} is not in service"
                report.steps.append(_step("1-expunged", "mark for deletion", rec, detail))
                to_delete[rec.id] = rec
            attached = self._probe(in_service)
            for rec in self._lost_records(attached):
                detail = f"pantry {rec.pantry_address} lost volume {rec.volume_id}"
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
            report.steps.append(_step("4-delete", action, rec))
        return report


def _step(step: str, action: str, rec: UserDataExport, detail: str = "") -> PlannedStep:
    return PlannedStep(
        step, action, str(rec.id), rec.resource_type.value, str(rec.resource_id), detail
    )


def _invocation(rec: UserDataExport, res: SagaResult) -> SagaInvocation:
    base = dict(
        export_id=str(rec.id),
        resource_type=rec.resource_type.value,
        resource_id=str(rec.resource_id),
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
