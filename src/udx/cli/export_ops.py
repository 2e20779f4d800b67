"""`udx export release | diagnose`: the operator's tools for a stuck export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from udx.cli.common import choice_metavar, confirm, print_json, state, stdout_console
from udx.domain.model import ResourceType

if TYPE_CHECKING:
    from udx.domain.model import UserDataExport


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose)
    app.command("release")(release)


def release(
    export_id: str = typer.Argument(..., help="Export record id."),
    saga_id: str = typer.Option(
        ..., "--saga", help="The saga holding the record (`udx export diagnose ID` names it)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Release a record held by a stuck or abandoned saga.

    First does what the saga's own undos would have done, from its log (detach
    the volume copy, ok if gone; give the copy back), then unlocks the record:
    assigning -> requested, deleting -> live (still marked). The next pass takes
    it from there. Refused, with nothing changed, while the saga may still run,
    when the record's lock is not that saga's, or when a cleanup step fails.
    """
    from udx.cli.tables import write_fields, write_heading
    from udx.domain.model import parse_uuid
    from udx.export_release import carry_out, plan_release
    from udx.sagas import make_deps

    eid = parse_uuid(export_id, "export id")
    sid = parse_uuid(saga_id, "saga id")
    st = state()
    db = st.database()
    plan = plan_release(db, eid, sid)
    if not as_json:
        s = plan.saga
        held = ", ".join(x for x in (s.name, s.saga_state, s.outcome) if x)
        write_heading(f"release export {eid}")  # piped, "== ..." between the two
        write_fields(
            f"release export {eid}",
            [
                ("id", str(eid)),
                ("state", plan.record.state.value),
                ("held by saga", f"{sid} ({held})"),
                *(("will", step) for step in plan.steps),
            ],
        )
    confirm(f"Release export {eid} from saga {sid}", yes)
    result = carry_out(db, make_deps(db, st.settings()), plan)
    if as_json:
        print_json(result.to_json())
        return
    write_heading(f"export {eid} released")
    write_fields(
        f"export {eid} released",
        [
            ("id", str(eid)),
            ("state", result.record.state.value),
            *(("done", line) for line in result.done),
        ],
    )
    stdout_console().print(
        f"export {eid} released: now {result.record.state.value}; the next pass takes it "
        "from here (`udx pass`)",
        markup=False,
    )


def diagnose(
    export_id: str | None = typer.Argument(None, help="Export record id."),
    resource_type: ResourceType | None = typer.Option(
        None,
        "--resource-type",
        case_sensitive=False,
        metavar=choice_metavar(ResourceType),
        help="With --resource-id: the resource's kind.",
    ),
    resource_id: str | None = typer.Option(None, "--resource-id", help="The resource's UUID."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Why is this export not Live, and what to run next: the record, the saga
    holding it (state, last event, error, owner, lease), the pantry's own view,
    the volume, earlier records, what the next pass does, and a verdict.

    Exit 0 when healthy (or the next pass takes it on by itself), 1 when a
    person must act.
    """
    from udx.datastore import exports
    from udx.diagnose import diagnose as run_diagnosis
    from udx.domain.errors import EXIT_FAILED, BadInput, NotFound
    from udx.domain.model import parse_uuid
    from udx.pantry.inventory import inventory_from_settings

    by_resource = resource_type is not None or resource_id is not None
    if (export_id is None) == (not by_resource):
        raise BadInput("give either an export ID or --resource-type and --resource-id")
    st = state()
    db = st.database()
    with db.connect() as conn:
        if export_id is not None:
            rec = exports.get_required(conn, parse_uuid(export_id, "export id"))
        else:
            if resource_type is None or resource_id is None:
                raise BadInput("--resource-type and --resource-id go together")
            kind = resource_type
            rid = parse_uuid(resource_id, "resource id")
            history = exports.all_for_resource(conn, kind, rid)
            if not history:
                raise NotFound(f"no export record for {kind.value} {rid}")
            current = [r for r in history if r.state.value != "deleted"]
            rec = current[0] if current else history[-1]
    settings = st.settings()
    d = run_diagnosis(
        db,
        inventory_from_settings(settings, db),
        rec,
        timeout=min(5.0, settings.pantry.request_timeout_secs),
    )
    if as_json:
        print_json(d.to_json())
    else:
        _render_diagnosis(d)
    if d.needs_person:
        raise typer.Exit(EXIT_FAILED)


def _render_diagnosis(d: object) -> None:
    from udx.cli.tables import fmt_time, write_fields
    from udx.diagnose import Diagnosis

    assert isinstance(d, Diagnosis)
    rec = d.record
    rows: list[tuple[str, str]] = [
        ("id", str(rec.id)),  # piped, write_fields prints no title
        ("state", rec.state.value),
        ("resource", f"{rec.resource_type.value} {rec.resource_id}"),
        ("generation", str(rec.generation)),
        ("marked for deletion", "yes" if rec.resource_deleted else "no"),
        ("pantry", _pantry_cell(rec)),
        ("volume", str(rec.volume_id) if rec.volume_id else "-"),
    ]
    for key in ("time_created", "time_modified"):
        value = getattr(rec, key, None)
        if value is not None:
            rows.append((key.replace("_", " "), fmt_time(value)))
    h = d.holder
    if h is not None:
        s = h.saga
        rows += [
            ("held by saga", f"{s.id} ({s.name})"),
            ("saga state", s.saga_state + (f" ({s.outcome})" if s.outcome else "")),
            ("last event", h.last_event or "-"),
            ("failing node", h.failed_node or "-"),
            ("error", h.error or "-"),
            ("owner", str(s.current_sec) if s.current_sec else "-"),
            (
                "owner's lease",
                "- (done)"
                if s.saga_state in ("done", "abandoned")
                else "alive"
                if h.lease_alive
                else "expired (the owner died)",
            ),
        ]
        if s.saga_state == "abandoned":
            rows.append(("abandoned", f"{s.abandon_reason}: {s.abandon_comment}"))
    elif d.lock_unknown:
        rows.append(("held by", f"lock {rec.operating_saga_id} (no saga in the log made it)"))
    if d.latest is not None:
        s = d.latest.saga
        status = s.saga_state + (f" ({s.outcome})" if s.outcome else "")
        rows.append(("latest saga", f"{s.id} ({s.name}, {status})"))
        if d.latest.error:
            rows.append(("latest saga error", d.latest.error))
    v = d.pantry_view
    if v is not None:
        if v.get("answered"):
            seen = "attached" if v.get("attached") else "not attached"
            if v.get("attached"):
                seen += ", active" if v.get("active") else ", not active"
        elif v.get("in_service") is False:
            seen = "not asked"
        else:
            seen = f"does not answer ({v.get('error')})"
        service = {True: "in service", False: "NOT in service", None: "unknown"}[
            v.get("in_service")
        ]
        rows.append(("pantry's view", f"{v['pantry']} ({service}): volume {seen}"))
    if d.volume is not None:
        rows += _volume_rows(d.volume)
    for r in d.history:
        rows.append(("earlier record", f"{r.id} {r.state.value} generation {r.generation}"))
    rows.append(("next pass", d.next_pass))
    write_fields(f"export {rec.id}", rows)
    verdict = f"verdict: {d.verdict}"
    if d.command:
        verdict += f"  ->  {d.command}"
    stdout_console().print(verdict, markup=False)


def _volume_rows(vol: dict[str, Any]) -> list[tuple[str, str]]:
    """The volume row and its usage (volume_resource_usage), one field each."""
    from udx.cli.volume import resource_text
    from udx.domain.words import plural

    state_text = "missing" if not vol["exists"] else "deleted" if vol["deleted"] else "live"
    rows = [("volume row", f"{vol['id']} ({state_text})")]
    usage = vol.get("usage")
    if usage is None:
        return rows
    targets, held = usage["targets"], usage["rows"]
    n_rows = sum(int(r["count"]) for r in held)
    summary = f"{plural(len(targets), 'read-only target')}, {plural(n_rows, 'usage row')}"
    rows.append(("usage", ("exact: " if usage["exact"] else "NOT exact: ") + summary))
    for t in targets:
        rows.append(
            (
                "read-only target",
                f"{t['target']} -> {resource_text(t['resolves_to'])}: "
                f"{plural(int(t['usage_rows']), 'usage row')}",
            )
        )
    named = [t["resolves_to"] for t in targets if t["resolves_to"] is not None]
    for r in held:
        key = {k: v for k, v in r.items() if k != "count"}
        if key not in named:
            stray = f"{resource_text(key)} x{r['count']} (its data does not name it)"
            rows.append(("usage row", stray))
    for problem in usage["problems"]:
        rows.append(("usage problem", problem))
    return rows


def _pantry_cell(rec: UserDataExport) -> str:
    if rec.pantry_text is None:
        return "-"
    return rec.pantry_text + (" (invalid)" if rec.pantry_problem is not None else "")
