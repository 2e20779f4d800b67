"""Issue 14: pantry addresses stored canonically, duplicate spellings merged; the
orphan sweep's memory (`orphan_attachment`).

Revision ID: 0004
Revises: 0003

`pantry.address` and `user_data_export.pantry_ip` are rewritten to the one
spelling udx writes ("[::1]:17123", not "[0:0:0:0:0:0:0:1]:17123"; IPv4-mapped
IPv6 as plain IPv4). Pantry rows that name one address are merged into one,
keeping the more conservative state: expunged wins over in service (a pantry an
operator took out of service must not come back by a migration), with the
earliest time_created and the latest time_expunged.

Values that are not addresses at all are left exactly as they are: udx reports
them at run time (naming the row and the fix) and goes on with the rest.

The parsing is written out here rather than imported, so the migration keeps
meaning what it meant when later code changes. Downgrade drops orphan_attachment
and leaves the addresses: canonical spellings are valid for the older code too, and
merged rows cannot be unmerged.
"""

from __future__ import annotations

import ipaddress

import sqlalchemy as sa
from alembic import op

from udx.db.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _canonical_ip(text: str) -> str | None:
    raw = text.strip()
    if "%" in raw:
        return None
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _canonical_address(text: str) -> str | None:
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep or ":" not in host:
            return None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or ":" in host:
            return None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        return None
    ip = _canonical_ip(host)
    if ip is None:
        return None
    return f"[{ip}]:{int(port_text)}" if ":" in ip else f"{ip}:{int(port_text)}"


pantry = sa.table(
    "pantry",
    sa.column("address", sa.Text),
    sa.column("state", sa.Text),
    sa.column("time_created"),
    sa.column("time_expunged"),
)
user_data_export = sa.table("user_data_export", sa.column("pantry_ip", sa.Text))


def _create_orphan_attachment() -> None:
    # When each pass's orphan sweep first saw an attachment orphaned (issue 14 item 2).
    op.create_table(
        "orphan_attachment",
        sa.Column("pantry_address", sa.Text, primary_key=True),
        sa.Column("volume_id", sa.Text, primary_key=True),
        sa.Column("first_seen", UTCDateTime, nullable=False),
    )


def upgrade() -> None:
    _create_orphan_attachment()
    _canonical_pantry_addresses()


def _canonical_pantry_addresses() -> None:
    if op.get_context().as_sql:
        # Offline SQL generation cannot read rows to parse them; udx itself always
        # migrates online (`udx db upgrade`), where the rewrite below runs.
        return
    conn = op.get_bind()
    groups: dict[str, list[sa.Row]] = {}
    for row in conn.execute(
        sa.select(pantry.c.address, pantry.c.state, pantry.c.time_created, pantry.c.time_expunged)
    ):
        canonical = _canonical_address(row.address)
        if canonical is not None:
            groups.setdefault(canonical, []).append(row)
    for canonical, rows in groups.items():
        if len(rows) == 1 and rows[0].address == canonical:
            continue
        expunged = [r for r in rows if r.state != "in_service"]
        times = [r.time_expunged for r in expunged if r.time_expunged is not None]
        values = {
            "address": canonical,
            "state": "expunged" if expunged else "in_service",
            "time_created": min(r.time_created for r in rows),
            "time_expunged": max(times) if times else None,
        }
        conn.execute(pantry.delete().where(pantry.c.address.in_([r.address for r in rows])))
        conn.execute(pantry.insert().values(**values))

    spellings = conn.execute(
        sa.select(user_data_export.c.pantry_ip)
        .where(user_data_export.c.pantry_ip.is_not(None))
        .distinct()
    ).scalars()
    for stored in list(spellings):
        canonical_ip = _canonical_ip(stored)
        if canonical_ip is not None and canonical_ip != stored:
            conn.execute(
                user_data_export.update()
                .where(user_data_export.c.pantry_ip == stored)
                .values(pantry_ip=canonical_ip)
            )


def downgrade() -> None:
    op.drop_table("orphan_attachment")
