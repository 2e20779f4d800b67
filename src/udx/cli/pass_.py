"""`udx pass`: one coordinator pass, for cron or by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from udx.cli.common import is_terminal, plural, print_json, state, stdout_console
from udx.domain.errors import EXIT_FAILED, EXIT_UNAVAILABLE, BadInput, UdxError

if TYPE_CHECKING:
    from udx.coordinator import Coordinator, DryRunReport, PassStatus
    from udx.db.engine import Database


def register(app: typer.Typer) -> None:
    group = typer.Typer()  # its help is the pass's own docstring
    group.callback(invoke_without_command=True)(pass_)
    group.command("history")(history)
    app.add_typer(group, name="pass")


def pass_(
    ctx: typer.Context,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what the pass would do; write nothing, start no saga."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1, max=256, help="Sagas at once (default: config, 8)."
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=0,
        max=64,
        metavar="N",
        help="Worker processes the sagas are split among (0: one per core, at most 4, on "
        "PostgreSQL, none on SQLite; 1: this process only; a pass under 200 sagas runs "
        "in this process) (default: config, 0).",
    ),
    deadline: float | None = typer.Option(
        None,
        "--deadline",
        min=0.001,
        metavar="SECS",
        help="Start no saga after SECS from the pass start; those running finish, the "
        "rest is deferred to the next pass (default: config, none).",
    ),
    max_sagas: int | None = typer.Option(
        None,
        "--max-sagas",
        min=1,
        metavar="N",
        help="Start at most N sagas; the rest is deferred to the next pass "
        "(default: config, no limit).",
    ),
    prune_older_than: str | None = typer.Option(
        None,
        "--prune-older-than",
        metavar="DURATION",
        help="After the pass, remove done sagas and Deleted records older than DURATION "
        "(30d), as `udx saga prune` and `udx export prune` do, while the deadline allows "
        "(default: config, never).",
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
    exports. Exit 1 when the status has errors or a saga did not succeed; work
    deferred by --deadline or --max-sagas alone is not a failure.

    Every pass is recorded in the pass history (`udx pass history`) when it
    starts and when it ends; a killed pass shows as "did not finish". A dry
    run is recorded too (dry run: yes) and writes nothing else; `udx status`
    judges the last real pass. Ctrl-C
    starts no more sagas, lets the running ones finish, prints what finished and
    what was left, and exits 130.
    """
    if ctx.invoked_subcommand is not None:
        return

    if metrics_file is not None:
        if dry_run:
            raise BadInput("--metrics-file reports a pass that ran; it cannot go with --dry-run")
        metrics_file = _check_metrics_path(metrics_file)
    from udx.domain.times import parse_duration

    st = state()
    settings = st.settings()
    prune_text = prune_older_than or settings.coordinator.prune_older_than
    bounds: dict[str, Any] = {
        "deadline_secs": deadline or settings.coordinator.deadline_secs or None,
        "max_sagas": max_sagas or settings.coordinator.max_sagas or None,
    }
    if prune_text and not dry_run:
        bounds["prune_older_than"] = parse_duration(prune_text, "--prune-older-than")
    db = st.database()
    # A dry run writes its history row (dry_run = true) and nothing else; one
    # that cannot (a read-only database user, an SQLite file another process is
    # writing: a dry run reads, it never waits for a writer) still shows its plan.
    recorder: _Recorder | None
    if dry_run:
        from udx.domain.errors import DatabaseBusy

        try:
            recorder = _Recorder(db, dry_run)
        except UdxError as err:
            if err.exit_code == EXIT_UNAVAILABLE and not isinstance(err, DatabaseBusy):
                raise
            import logging

            logging.getLogger(__name__).info("could not record the dry run: %s", err)
            recorder = None
    else:
        recorder = _Recorder(db, dry_run)
    try:
        _pass(
            db,
            recorder,
            dry_run,
            (concurrency, processes),
            as_json,
            metrics_file,
            bounds,
            progress_every,
        )
    except typer.Exit as done:
        _finish(recorder, done.exit_code)
        raise
    except UdxError as err:
        _finish(recorder, err.exit_code)
        raise
    except KeyboardInterrupt:
        _finish(recorder, 130)
        raise
    except BaseException:
        _finish(recorder, 1)
        raise
    _finish(recorder, 0)


def _finish(recorder: _Recorder | None, exit_code: int) -> None:
    if recorder is not None:
        recorder.finish(exit_code)


class _Recorder:
    """The pass's row in `pass_run`: written now, completed by `finish`."""

    def __init__(self, db: Database, dry_run: bool) -> None:
        import os
        import socket
        import uuid

        from udx.datastore import pass_runs
        from udx.db.types import utcnow

        self.db = db
        self.dry_run = dry_run
        self.id = uuid.uuid4()
        self.started = utcnow()
        self.status: PassStatus | None = None
        self.plan: DryRunReport | None = None
        host, pid = socket.gethostname(), os.getpid()
        db.transaction(
            lambda c: pass_runs.start(
                c, self.id, host=host, pid=pid, started=self.started, dry_run=dry_run
            ),
            name="record pass start",
            wait=not dry_run,
        )

    def finish(self, exit_code: int) -> None:
        import logging

        from udx.datastore import pass_runs
        from udx.db.types import utcnow

        status = self.status
        counts: dict[str, object] = {}
        errors: list[str] = list(status.errors) if status is not None else []
        warnings: list[str] = list(getattr(status, "warnings", []) or [])
        if status is not None:
            counts = status.counts()
        elif self.plan is not None:  # a dry run: what it would have done
            from collections import Counter

            errors = list(self.plan.errors)
            counts = {"planned": dict(Counter(s.step for s in self.plan.steps))}
        try:
            self.db.transaction(
                lambda c: pass_runs.finish(
                    c,
                    self.id,
                    finished=utcnow(),
                    exit_code=exit_code,
                    counts=counts,
                    errors=errors,
                    warnings=warnings,
                ),
                name="record pass end",
                wait=not self.dry_run,
            )
        except Exception as err:  # the pass's own result matters more than its history
            # INFO, not WARNING: the pass's own error (often the same cause) is the one line.
            logging.getLogger(__name__).info("could not record the end of the pass: %s", err)


def _pass(
    db: Database,
    recorder: _Recorder | None,
    dry_run: bool,
    parallel: tuple[int | None, int | None],
    as_json: bool,
    metrics_file: Path | None,
    bounds: dict[str, Any],
    progress_every: float | None = None,
) -> None:
    from udx.runtime import build_runtime

    st = state()
    concurrency, processes = parallel
    runtime = build_runtime(db, st.settings(), concurrency=concurrency, processes=processes)
    try:
        if dry_run:
            report = runtime.coordinator.plan()
            if recorder is not None:
                recorder.plan = report
            if as_json:
                print_json(report.to_json())
            else:
                _render_plan(report)
            if report.errors:
                _exit_unavailable_if_database_down(db)
                raise typer.Exit(EXIT_FAILED)
            return
        status = _run_with_progress(
            runtime.coordinator,
            show=not as_json and is_terminal(),
            every=progress_every,
            **bounds,
        )
        if recorder is not None:
            recorder.status = status
    finally:
        runtime.close()
    # The status first: a metrics file that cannot be written must not hide it.
    if as_json:
        from udx.jsonstream import write_json

        write_json(sys.stdout, status.json_fields(), indent=2 if is_terminal() else None)
    else:
        _render_status(status)
    if metrics_file is not None:
        from udx.metrics import system_gauges, write_metrics

        try:
            system = system_gauges(db)
        except UdxError as err:  # the pass's own numbers still go out
            import logging

            logging.getLogger(__name__).warning("metrics without the system gauges: %s", err)
            system = None
        try:
            write_metrics(metrics_file, status, system)
        except OSError as err:
            raise UdxError(
                f"cannot write the metrics file {metrics_file}: {err.strerror or err}"
            ) from err
    if status.interrupted:
        raise typer.Exit(130)  # as a shell reports SIGINT
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
    coordinator: Coordinator, show: bool, every: float | None = None, **bounds: Any
) -> PassStatus:
    from udx.cli.progress import PassProgress, log, logging_notify, rich_notify

    counts = PassProgress()
    if not show:
        if every is None:
            return coordinator.run_pass(**bounds)
        status = coordinator.run_pass(progress=logging_notify(every, counts), **bounds)
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
        return coordinator.run_pass(progress=rich_notify(bar, counts), **bounds)


def _render_status(status: PassStatus) -> None:
    from collections import Counter

    from udx.cli.tables import write_fields
    from udx.coordinator import OUTCOMES

    c = stdout_console()
    rows: list[list[str]] = []
    creates = Counter(s.outcome for s in status.create_invoked_ok)
    deletes = Counter(s.outcome for s in status.delete_invoked_ok)
    for outcome in OUTCOMES:
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
        ["sagas deferred to the next pass", str(status.deferred)],
    ]
    if status.pruned is not None:
        rows.append(["sagas pruned (with their events)", str(status.pruned.sagas)])
        rows.append(["Deleted records pruned", str(status.pruned.records)])
    rows.append(["warnings", str(len(status.warnings))])
    rows.append(["errors", str(len(status.errors))])
    if status.started is not None:
        rows.append(["started", status.started[:19] + "Z"])
    if status.duration_secs is not None:
        rows.append(["duration", f"{status.duration_secs:.1f} s"])
    write_fields("pass summary", [(item, count) for item, count in rows])
    for warning in status.warnings:
        c.print(f"warning: {warning}", markup=False)
    for err in status.errors:
        c.print(f"error: {err}", markup=False)
    if status.interrupted:
        _render_interrupted(status)


def _render_interrupted(status: PassStatus) -> None:
    """After Ctrl-C: what finished and what was left."""
    c = stdout_console()
    done = [*status.create_invoked_ok, *status.delete_invoked_ok]
    c.print(
        f"interrupted: {plural(len(done), 'saga')} finished, {len(status.not_started)} not started "
        "(the next pass runs them)",
        markup=False,
    )
    for inv in status.not_started:
        c.print(
            f"  not started: {inv.outcome.split()[0]} export {inv.export_id} "
            f"({inv.resource_type} {inv.resource_id})",
            markup=False,
        )


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


def history(
    limit: int = typer.Option(
        50, "--limit", min=1, metavar="N", help="At most this many passes, newest first."
    ),
    all_: bool = typer.Option(False, "--all", help="Every recorded pass (no --limit)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """Show past passes, newest first (50 unless --limit or --all): when, where,
    how long, the result (a pass that was killed shows as "did not finish"),
    counts and errors. Dry runs are listed too, with "dry run" yes."""
    from udx.cli.tables import Column, fmt_time, write_table
    from udx.datastore import pass_runs

    db = state().database()
    with db.connect() as conn:
        runs = pass_runs.recent(conn, None if all_ else limit)
        total = len(runs) if all_ or len(runs) < limit else pass_runs.count(conn)
    if as_json:
        print_json([r.to_json() for r in runs])
        return

    def sagas_of(r: Any) -> str:
        if r.dry_run:
            return "-"
        sagas = r.counts.get("sagas", {}) if isinstance(r.counts, dict) else {}
        return str(sum(int(v) for v in sagas.values()) if isinstance(sagas, dict) else 0)

    write_table(
        (
            Column("id", key=True),
            Column("started"),
            Column("host", priority=3),
            Column("pid", priority=3, justify="right"),
            Column("dry run", priority=2),
            Column("duration", priority=2, justify="right"),
            Column("result"),
            Column("sagas", justify="right"),
            Column("errors", justify="right"),
            Column("warnings", priority=2, justify="right"),
        ),
        (
            [
                str(r.id),
                fmt_time(r.started),
                r.host,
                str(r.pid),
                "yes" if r.dry_run else "no",
                f"{r.duration_secs:.1f}s" if r.duration_secs is not None else "-",
                r.result,
                sagas_of(r),
                str(len(r.errors)),
                str(len(r.warnings)),
            ]
            for r in runs
        ),
        title="passes",
        total=total,
        headers=not no_headers,
    )
    if not runs:
        stdout_console().print("no pass has run yet", markup=False)
    elif total > len(runs) and is_terminal():
        stdout_console().print(
            f"the newest {len(runs)} of {total}: --limit N or --all for more",
            style="dim",
            markup=False,
        )
