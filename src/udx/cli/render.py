"""Rendering shared by several commands."""

from __future__ import annotations

from collections.abc import Sequence

from udx.cli.common import print_table, table
from udx.domain.model import UserDataExport


def export_rows(records: Sequence[UserDataExport], title: str) -> None:
    t = table("id", "type", "resource", "state", "gen", "saga", "deleted?", "pantry", "volume")
    for r in records:
        addr = r.pantry_address
        t.add_row(
            str(r.id),
            r.resource_type.value,
            str(r.resource_id),
            r.state.value,
            str(r.generation),
            str(r.operating_saga_id) if r.operating_saga_id else "-",
            "yes" if r.resource_deleted else "no",
            str(addr) if addr else "-",
            str(r.volume_id) if r.volume_id else "-",
        )
    print_table(t, title)
