"""`udx whatis UUID`: what an id names (export, resource, saga, lock, volume,
pantry attachment, pass), each by a primary-key or indexed lookup."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from udx.db.schema import (
    export_saga_lock,
    image,
    pass_run,
    saga,
    snapshot,
    user_data_export,
    volume,
)


@dataclass(frozen=True)
class Meaning:
    kind: str  # export | snapshot | image | saga | lock | volume | attachment | pass
    description: str
    next_command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "command": self.next_command}


def whatis(conn: Connection, the_id: uuid.UUID) -> list[Meaning]:
    """Everything `the_id` is (a volume id is also its attachment id)."""
    out: list[Meaning] = []
    t = user_data_export
    rec = conn.execute(select(t).where(t.c.id == the_id)).first()
    if rec is not None:
        out.append(
            Meaning(
                "export",
                f"export record, {rec.state}, for {rec.resource_type} {rec.resource_id} "
                f"(generation {rec.generation})",
                f"udx export diagnose {the_id}",
            )
        )
    for kind, table in (("snapshot", snapshot), ("image", image)):
        row = conn.execute(
            select(table.c.time_deleted, table.c.volume_id).where(table.c.id == the_id)
        ).first()
        if row is not None:
            gone = "soft-deleted" if row.time_deleted is not None else "live"
            out.append(
                Meaning(
                    kind,
                    f"{kind} ({gone}), volume {row.volume_id}",
                    f"udx export show --resource-type {kind} --resource-id {the_id}",
                )
            )
    s = conn.execute(
        select(saga.c.name, saga.c.saga_state, saga.c.outcome).where(saga.c.id == the_id)
    ).first()
    if s is not None:
        lk = export_saga_lock
        eid = conn.execute(
            select(lk.c.export_id).where(lk.c.saga_id == the_id).limit(1)
        ).scalar_one_or_none()
        status = s.saga_state + (f" ({s.outcome})" if s.outcome else "")
        on = f" for export {eid}" if eid else ""
        out.append(Meaning("saga", f"saga {s.name}, {status}{on}", f"udx saga show {the_id}"))
    lock = conn.execute(
        select(export_saga_lock.c.saga_id, export_saga_lock.c.export_id).where(
            export_saga_lock.c.lock_id == the_id
        )
    ).first()
    if lock is not None:
        held = conn.execute(
            select(t.c.state).where(t.c.id == lock.export_id, t.c.operating_saga_id == the_id)
        ).scalar_one_or_none()
        now = f", holding it ({held})" if held is not None else ", released"
        out.append(
            Meaning(
                "lock",
                f"lock id of saga {lock.saga_id} on export {lock.export_id}{now}",
                f"udx saga show {lock.saga_id}",
            )
        )
    v = conn.execute(select(volume.c.time_deleted).where(volume.c.id == the_id)).first()
    if v is not None:
        gone = "soft-deleted" if v.time_deleted is not None else "live"
        out.append(Meaning("volume", f"volume ({gone})", None))
    owner = conn.execute(
        select(t.c.id, t.c.state, t.c.pantry_ip, t.c.pantry_port).where(t.c.volume_id == the_id)
    ).first()
    if owner is not None:
        from udx.domain.address import format_address

        where = (
            format_address(owner.pantry_ip, owner.pantry_port)
            if owner.pantry_ip is not None and owner.pantry_port is not None
            else "no pantry"
        )
        out.append(
            Meaning(
                "attachment",
                f"pantry attachment id of export {owner.id} ({owner.state}) on {where}",
                f"udx export diagnose {owner.id}",
            )
        )
    p = conn.execute(
        select(
            pass_run.c.started, pass_run.c.host, pass_run.c.finished, pass_run.c.dry_run
        ).where(pass_run.c.id == the_id)
    ).first()
    if p is not None:
        done = "finished" if p.finished is not None else "did not finish"
        what = "dry run" if p.dry_run else "pass"
        out.append(
            Meaning("pass", f"{what} on {p.host} started {p.started} ({done})", "udx pass history")
        )
    return out
