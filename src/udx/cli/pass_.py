"""`udx pass`: one coordinator pass, for cron or by hand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from udx.cli.common import is_terminal, print_json, state, stdout_console
from udx.domain.errors import EXIT_FAILED, EXIT_UNAVAILABLE, BadInput, UdxError

if TYPE_CHECKING:
    from udx.coordinator import Coordinator, DryRunReport, PassStatus
    from udx.db.engine import Database


def register(app: typer.Typer) -> None:
    app.command("pass")(pass_)


def pass_(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what the pass would do; write nothing, start no saga."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1, max=256, help="Sagas at once (default: config, 8)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status object as JSON."),
    progress_every: float | None = typer.Option(
        None,
        "--progress-every",
        min=1,
        metavar="SECS",
        help="When not on a terminal (cron): log an INFO progress line at most every SECS "
        "seconds while sagas finish, and one at the end.",
    ),
    metrics_file: Path | None = typer.Option(
        None, "--metrics-file", help="Also write the counts in Prometheus text format (atomic)."
    ),
) -> None:
    """Run one coordinator pass: mark, compute the changeset, create and delete
    exports. Exit 1 when the status has errors or a saga did not succeed."""
    from udx.runtime import build_runtime

    if metrics_file is not None:
        if dry_run:
            raise BadInput("--metrics-file reports a pass that ran; it cannot go with --dry-run")
        metrics_file = _check_metrics_path(metrics_file)
    st = state()
    db = st.database()
    runtime = build_runtime(db, st.settings(), concurrency=concurrency)
    try:
        if dry_run:
            report = runtime.coordinator.plan()
            if as_json:
                print_json(report.to_json())
            else:
                _render_plan(report)
            if report.errors:
                _exit_unavailable_if_database_down(db)
                raise typer.Exit(EXIT_FAILED)
            return
        status = _run_with_progress(
            runtime.coordinator, show=not as_json and is_terminal(), every=progress_every
        )
    finally:
        runtime.close()
    # The status first: a metrics file that cannot be written must not hide it.
    if as_json:
        print_json(status.to_json())
    else:
        _render_status(status)
    if metrics_file is not None:
        from udx.metrics import write_metrics

        try:
            write_metrics(metrics_file, status)
        except OSError as err:
            raise UdxError(
                f"cannot write the metrics file {metrics_file}: {err.strerror or err}"
            ) from err
    if status.failed:
        _exit_unavailable_if_database_down(db)
        if status.inventory_unavailable:
            raise typer.Exit(EXIT_UNAVAILABLE)  # DESIGN.md section 7: exit 3
        raise typer.Exit(EXIT_FAILED)


def _exit_unavailable_if_database_down(db: Database) -> None:
    """A pass that failed because its database went away exits 3 (unreachable),
    not 1: probe it once. Any other probe failure leaves the exit code at 1."""
    from udx.domain.errors import DatabaseUnavailable

    try:
        with db.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DatabaseUnavailable:
        raise
    except Exception:
        return


def _check_metrics_path(path: Path) -> Path:
    """Fail before the pass (exit 2) when the metrics file cannot be written."""
    import os

    path = path.expanduser()
    if path.is_dir():
        raise BadInput(f"--metrics-file {path} is a directory; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(
            f"--metrics-file {path}: cannot create its directory: {err.strerror or err}"
        ) from err
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BadInput(f"--metrics-file {path}: the directory {path.parent} is not writable")
    return path


def _run_with_progress(
    coordinator: Coordinator, show: bool, every: float | None = None
) -> PassStatus:
    from udx.cli.progress import PassProgress, log, logging_notify, rich_notify

    counts = PassProgress()
    if not show:
        if every is None:
            return coordinator.run_pass()
        status = coordinator.run_pass(progress=logging_notify(every, counts))
        log.info("pass progress: %s (done)", counts.line())
        return status
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")

    with Progress(
        "sagas {task.description:<6}",
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        "ETA",
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=stdout_console(),
        transient=True,
    ) as bar:
        return coordinator.run_pass(progress=rich_notify(bar, counts))


def _render_status(status: PassStatus) -> None:
    from collections import Counter

    from udx.cli.tables import write_fields

    c = stdout_console()
    rows: list[list[str]] = []
    creates = Counter(s.outcome for s in status.create_invoked_ok)
    deletes = Counter(s.outcome for s in status.delete_invoked_ok)
    for outcome in ("succeeded", "skipped", "unwound", "stuck", "interrupted"):
        if creates[outcome]:
            rows.append([f"create sagas {outcome}", str(creates[outcome])])
        if deletes[outcome]:
            rows.append([f"delete sagas {outcome}", str(deletes[outcome])])
    rows += [
        ["records marked for deletion (expunged pantry)", str(status.records_marked_for_deletion)],
        ["records marked lost (pantry restarted)", str(status.records_marked_lost)],
        ["records bypassed to deleted", str(len(status.records_bypassed_ok))],
        ["sagas recovered", str(status.sagas_recovered)],
        ["orphan attachments detached", str(status.orphans_detached)],
        ["errors", str(len(status.errors))],
    ]
    write_fields("pass summary", [(item, count) for item, count in rows])
    for err in status.errors:
        c.print(f"error: {err}", markup=False)


def _render_plan(report: DryRunReport) -> None:
    from udx.cli.tables import Column, write_table

    write_table(
        (
            Column("step"),
            Column("would"),
            Column("export", key=True),
            Column("type", priority=2),
            Column("resource", priority=2),
            Column("detail", priority=3),
        ),
        (
            [
                s.step,
                s.action,
                s.export_id or ("(new)" if s.step.startswith("3") else "-"),
                s.resource_type or "-",
                str(s.resource_id) if s.resource_type else "-",
                s.detail or "-",
            ]
            for s in report.steps
        ),
        title="dry run: the pass would",
    )
    if not report.steps:
        stdout_console().print("nothing to do")
    for err in report.errors:
        stdout_console().print(f"error: {err}", markup=False)
