"""The pass status in the Prometheus text format, for node_exporter's textfile
collector. Written atomically (temp file + rename) so a scrape never sees half."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from udx.coordinator import OUTCOMES, PassStatus


def _value(value: float) -> str:
    """Integers exactly; floats with every digit (a Unix timestamp in `%g` loses
    minutes: 1795677488.86 would read 1.79568e+09)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render_metrics(
    status: PassStatus, *, now: float | None = None, system: dict[str, Any] | None = None
) -> str:
    """`system` (from `system_gauges`) adds the state of the whole log and table."""
    lines = []

    def metric(name: str, help_text: str, kind: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP udx_{name} {help_text}")
        lines.append(f"# TYPE udx_{name} {kind}")
        for labels, value in samples:
            lines.append(f"udx_{name}{labels} {_value(value)}")

    sagas: list[tuple[str, float]] = []
    for kind, items in (("create", status.create_invoked_ok), ("delete", status.delete_invoked_ok)):
        counts = Counter(i.outcome for i in items)
        for outcome in OUTCOMES:
            sagas.append((f'{{saga="{kind}",outcome="{outcome}"}}', counts[outcome]))
    metric("pass_sagas", "Sagas the last pass ran, by kind and outcome.", "gauge", sagas)
    metric(
        "pass_records_marked_for_deletion",
        "Records on expunged pantries marked by the last pass.",
        "gauge",
        [("", status.records_marked_for_deletion)],
    )
    metric(
        "pass_records_marked_lost",
        "Live records whose pantry lost the volume, marked by the last pass.",
        "gauge",
        [("", status.records_marked_lost)],
    )
    metric(
        "pass_records_bypassed",
        "Requested records bypassed to deleted by the last pass.",
        "gauge",
        [("", len(status.records_bypassed_ok))],
    )
    metric(
        "pass_orphans_detached",
        "Attachments no record or running saga accounted for, detached by the last pass.",
        "gauge",
        [("", status.orphans_detached)],
    )
    metric("pass_errors", "Errors in the last pass.", "gauge", [("", len(status.errors))])
    metric(
        "pass_success",
        "1 when the last pass had no errors and every saga succeeded or was skipped.",
        "gauge",
        [("", 0 if status.failed else 1)],
    )
    if status.duration_secs is not None:
        metric(
            "pass_duration_seconds",
            "How long the last pass took.",
            "gauge",
            [("", status.duration_secs)],
        )
    if system is not None:
        metric(
            "sagas",
            "Sagas in the log by state: running (or unwinding), stuck, abandoned.",
            "gauge",
            [(f'{{state="{k}"}}', v) for k, v in system["sagas"].items()],
        )
        metric(
            "saga_oldest_running_age_seconds",
            "Age of the oldest running or unwinding saga (0 when none).",
            "gauge",
            [("", system["oldest_running_secs"] or 0)],
        )
        metric(
            "records",
            "Export records by state.",
            "gauge",
            [(f'{{state="{k}"}}', v) for k, v in system["records"].items()],
        )
    metric(
        "pass_last_run_timestamp_seconds",
        "When the last pass finished (Unix time).",
        "gauge",
        [("", now if now is not None else time.time())],
    )
    return "\n".join(lines) + "\n"


def system_gauges(db: Any) -> dict[str, Any]:
    """Sagas by state, the oldest running saga's age and records by state: three
    aggregate queries."""
    from udx.db.types import utcnow
    from udx.status import records_by_state, saga_counts

    with db.connect() as conn:
        sagas, _expired, oldest = saga_counts(conn, utcnow())
        records = records_by_state(conn)
    return {"sagas": sagas, "oldest_running_secs": oldest, "records": records}


def write_metrics(path: Path, status: PassStatus, system: dict[str, Any] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_metrics(status, system=system))
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish an empty file after a crash
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
