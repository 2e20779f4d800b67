"""Volumes and the read-only resources they read, accounted as the control plane
accounts them (DESIGN.md sections 2 and 5; upstream: omicron's volume datastore).

A volume's `data` is a Crucible VolumeConstructionRequest. Its *read-only
targets* are the `opts.target` addresses of every read-only `region` part found
walking the volume, its sub_volumes and its read_only_parent. Each target
resolves to exactly one read-only resource: a `region_snapshot` with that
`snapshot_addr`, or a read-only `region` whose dataset ip and own port make that
address. `volume_resource_usage` holds one row per (live volume, resource it
reads): copying a volume adds them, soft-deleting it removes them exactly once,
and a resource left with no row is recorded in the volume's
`resources_to_clean_up` for the control plane to free.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Text,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)

from udx.db.direct import DirectStatement
from udx.db.schema import crucible_dataset, region, region_snapshot, volume, volume_resource_usage
from udx.db.types import GUID, UTCDateTime, utcnow
from udx.domain.address import PantryAddress
from udx.domain.errors import BadInput, Conflict, NotFound, UdxError

log = logging.getLogger(__name__)

rs = region_snapshot
usage = volume_resource_usage

READ_ONLY_REGION = "read_only_region"
REGION_SNAPSHOT = "region_snapshot"


class VolumeDataError(UdxError):
    """A volume's VolumeConstructionRequest is not what it must be."""


class VolumeAccountingError(UdxError):
    """The usage rows do not account for a volume's read-only targets: a target
    resolves to no resource (or to two), or a target has no usage row to give
    back. Never skipped, never clamped: storage could be freed under a reader."""


def parse_request(volume_id: uuid.UUID, data: str) -> dict[str, Any]:
    try:
        vcr = json.loads(data)
    except (TypeError, ValueError) as err:
        raise VolumeDataError(f"volume {volume_id}: data is not valid JSON ({err})") from None
    if not isinstance(vcr, dict) or "type" not in vcr:
        raise VolumeDataError(f"volume {volume_id}: data is not a VolumeConstructionRequest")
    return vcr


def _parts(vcr: Any, where: str = "volume") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every part of a request, depth first, with a path for error messages."""
    if vcr is None:
        return
    if not isinstance(vcr, dict) or not isinstance(vcr.get("type"), str):
        raise VolumeDataError(f"{where}: not a VolumeConstructionRequest part")
    yield where, vcr
    if vcr["type"] == "volume":
        subs = vcr.get("sub_volumes") or []
        if not isinstance(subs, list):
            raise VolumeDataError(f"{where}.sub_volumes: not a list")
        for i, sub in enumerate(subs):
            yield from _parts(sub, f"{where}.sub_volumes[{i}]")
        yield from _parts(vcr.get("read_only_parent"), f"{where}.read_only_parent")


def _region_opts(where: str, part: dict[str, Any]) -> dict[str, Any]:
    opts = part.get("opts")
    if not isinstance(opts, dict) or not isinstance(opts.get("target"), list):
        raise VolumeDataError(f"{where}: region without opts.target")
    return opts


def read_only_targets(vcr: dict[str, Any]) -> list[str]:
    """Distinct read-only target addresses, in the order they appear."""
    seen: dict[str, None] = {}
    for where, part in _parts(vcr):
        if part["type"] == "region":
            opts = _region_opts(where, part)
            if opts.get("read_only") is True:
                for target in opts["target"]:
                    seen.setdefault(str(target), None)
    return list(seen)


def copy_request(
    vcr: dict[str, Any],
    new_volume_id: uuid.UUID,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> dict[str, Any]:
    """A copy of `vcr` with every id replaced: `new_volume_id` on top, fresh ids
    for nested volumes, each region's opts.id, and url and file parts.

    Refuses a request holding a region that is not read-only: only one volume
    may own a writable region.
    """
    copy: dict[str, Any] = json.loads(json.dumps(vcr))
    for where, part in _parts(copy):
        kind = part["type"]
        if kind == "region":
            opts = _region_opts(where, part)
            if opts.get("read_only") is not True:
                raise VolumeDataError(
                    f"{where}: refusing to copy a volume with a writable region "
                    "(only one volume may own it)"
                )
            opts["id"] = str(new_id())
        elif kind in ("volume", "url", "file"):
            part["id"] = str(new_id())
    copy["id"] = str(new_volume_id)
    return copy


# --- read-only resources and their resolution ------------------------------------------


@dataclass(frozen=True)
class ReadOnlyResource:
    """A read-only resource a volume reads: a region snapshot (its three ids) or
    a read-only region (its id). Spelled as the usage row's columns."""

    usage_type: str
    region_id: uuid.UUID | None = None
    snapshot_dataset_id: uuid.UUID | None = None
    snapshot_region_id: uuid.UUID | None = None
    snapshot_id: uuid.UUID | None = None

    @classmethod
    def from_row(cls, row: Any) -> ReadOnlyResource:
        """From a row with the usage table's column names."""
        m = row._mapping
        return cls(
            str(m["usage_type"]),
            m["region_id"],
            m["region_snapshot_dataset_id"],
            m["region_snapshot_region_id"],
            m["region_snapshot_snapshot_id"],
        )

    @property
    def is_region_snapshot(self) -> bool:
        return self.usage_type == REGION_SNAPSHOT

    @property
    def snapshot_key(self) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        assert self.snapshot_dataset_id and self.snapshot_region_id and self.snapshot_id
        return (self.snapshot_dataset_id, self.snapshot_region_id, self.snapshot_id)

    def usage_values(self) -> dict[str, Any]:
        return {
            "usage_type": self.usage_type,
            "region_id": self.region_id,
            "region_snapshot_dataset_id": self.snapshot_dataset_id,
            "region_snapshot_region_id": self.snapshot_region_id,
            "region_snapshot_snapshot_id": self.snapshot_id,
        }

    def __str__(self) -> str:
        if self.is_region_snapshot:
            return (
                f"region snapshot (dataset {self.snapshot_dataset_id}, region "
                f"{self.snapshot_region_id}, snapshot {self.snapshot_id})"
            )
        return f"read-only region {self.region_id}"

    def sort_key(self) -> tuple[str, ...]:
        return (self.usage_type, str(self.region_id), str(self.snapshot_dataset_id),
                str(self.snapshot_region_id), str(self.snapshot_id))


def _canonical(target: str) -> tuple[str, int] | None:
    """(canonical ip, port) of a target address; None when it is not one."""
    try:
        addr = PantryAddress.parse(target)
    except BadInput:
        return None
    return addr.ip_text, addr.port


# The one statement that resolves targets: region snapshots by address and
# read-only regions by (dataset ip, region port), neither being deleted (as
# upstream's read_only_target_to_volume_resource_usage). Upstream takes a region
# snapshot first and a region only when none matches; udx wants exactly one
# match of either kind, so an ambiguous target is an error rather than a guess.
#
# Its IN lists are fixed-size lists of bind parameters, built once per size
# (rounded up to a power of two and padded with values no row has), not
# expanding parameters: SQLAlchemy re-renders an expanding parameter's SQL on
# every execution, which measured as a tenth of the CPU of the pass's queries.
@functools.lru_cache(maxsize=64)
def _resolve_statement(n_addrs: int, n_ip_ports: int, *, include_deleting: bool) -> Any:
    addr_t, ip_t, port_t = rs.c.snapshot_addr.type, crucible_dataset.c.ip.type, region.c.port.type
    addrs = [bindparam(f"b_a{i}", type_=addr_t) for i in range(n_addrs)]
    rs_where = [rs.c.snapshot_addr.in_(addrs)]
    region_where = [
        region.c.read_only.is_(True),
        tuple_(crucible_dataset.c.ip, region.c.port).in_(
            [
                tuple_(bindparam(f"b_i{i}", type_=ip_t), bindparam(f"b_p{i}", type_=port_t))
                for i in range(n_ip_ports)
            ]
        ),
    ]
    if not include_deleting:
        rs_where.append(rs.c.deleting.is_(False))
        region_where.append(region.c.deleting.is_(False))
    snapshots = select(
        literal_column(f"'{REGION_SNAPSHOT}'").label("usage_type"),
        rs.c.snapshot_addr.label("addr"),
        cast(null(), Text).label("ip"),
        cast(null(), Integer).label("port"),
        cast(null(), GUID).label("region_id"),
        rs.c.dataset_id.label("region_snapshot_dataset_id"),
        rs.c.region_id.label("region_snapshot_region_id"),
        rs.c.snapshot_id.label("region_snapshot_snapshot_id"),
        rs.c.deleting.label("deleting"),
    ).where(*rs_where)
    regions = (
        select(
            literal_column(f"'{READ_ONLY_REGION}'"),
            cast(null(), Text),
            crucible_dataset.c.ip,
            region.c.port,
            region.c.id,
            cast(null(), GUID),
            cast(null(), GUID),
            cast(null(), GUID),
            region.c.deleting,
        )
        .select_from(region.join(crucible_dataset, crucible_dataset.c.id == region.c.dataset_id))
        .where(*region_where)
    )
    return DirectStatement(union_all(snapshots, regions))


# Values per IN list of one statement; with the (ip, port) pairs, 3 x 4096
# variables, well under SQLite's 32766.
_CHUNK = 4096


def _bucket(n: int) -> int:
    """The IN list size for n values: the next power of two, at least 1."""
    return 1 << max(n - 1, 0).bit_length()


def _resolve_params(addrs: Sequence[str], ip_ports: Sequence[tuple[str, int]]) -> dict[str, Any]:
    # Padding that matches nothing: no address is "-", no port is -1.
    params: dict[str, Any] = {}
    for i in range(_bucket(len(addrs))):
        params[f"b_a{i}"] = addrs[i] if i < len(addrs) else "-"
    for i in range(_bucket(len(ip_ports))):
        ip, port = ip_ports[i] if i < len(ip_ports) else ("-", -1)
        params[f"b_i{i}"], params[f"b_p{i}"] = ip, port
    return params


def _resolve_rows(
    conn: Connection, targets: Sequence[str], *, include_deleting: bool = False
) -> dict[str, list[tuple[ReadOnlyResource, bool]]]:
    """Every resource each target address names (with its deleting flag)."""
    by_addr: dict[str, set[str]] = {}
    by_ip_port: dict[tuple[str, int], set[str]] = {}
    for t in targets:
        by_addr.setdefault(t, set()).add(t)
        parts = _canonical(t)
        if parts is not None:
            by_addr.setdefault(str(PantryAddress.from_parts(*parts)), set()).add(t)
            by_ip_port.setdefault(parts, set()).add(t)
    found: dict[str, dict[ReadOnlyResource, bool]] = {t: {} for t in targets}
    addrs, ip_ports = list(by_addr), list(by_ip_port)
    # One statement for a request's targets; only a very large set (the
    # migration's backfill, the invariant checker) takes several.
    for i in range(0, max(len(addrs), len(ip_ports)), _CHUNK):
        a, ip = addrs[i : i + _CHUNK], ip_ports[i : i + _CHUNK]
        stmt = _resolve_statement(
            _bucket(len(a)), _bucket(len(ip)), include_deleting=include_deleting
        )
        for row in stmt.execute(conn, _resolve_params(a, ip)):
            resource = ReadOnlyResource.from_row(row)
            if resource.is_region_snapshot:
                names = by_addr.get(row.addr, set())
            else:
                names = by_ip_port.get((row.ip, int(row.port)), set())
            for t in names:
                found[t][resource] = bool(row.deleting)
    return {t: list(res.items()) for t, res in found.items()}


def resolve_targets(
    conn: Connection, targets: Sequence[str]
) -> tuple[dict[str, ReadOnlyResource], dict[str, str]]:
    """Resolve target addresses: (target -> its one resource, target -> why not)."""
    resolved: dict[str, ReadOnlyResource] = {}
    problems: dict[str, str] = {}
    if not targets:
        return resolved, problems
    for t, matches in _resolve_rows(conn, targets).items():
        if len(matches) == 1:
            resolved[t] = matches[0][0]
        elif matches:
            names = ", ".join(sorted(str(r) for r, _ in matches))
            problems[t] = f"resolves to {len(matches)} resources ({names})"
    unresolved = [t for t in targets if t not in resolved and t not in problems]
    if unresolved:
        # The error path only: say when all that matches is being deleted.
        for t, matches in _resolve_rows(conn, unresolved, include_deleting=True).items():
            if matches:
                names = ", ".join(sorted(str(r) for r, _ in matches))
                problems[t] = f"resolves only to resources being deleted ({names})"
            else:
                problems[t] = "resolves to no region snapshot and no read-only region"
    return resolved, problems


def _problem_text(volume_id: uuid.UUID, problems: Mapping[str, str], limit: int = 5) -> str:
    items = sorted(problems.items())
    text = "; ".join(f"read-only target {t} {why}" for t, why in items[:limit])
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return f"volume {volume_id}: {text}{more}"


def resolve_volume(
    conn: Connection, volume_id: uuid.UUID, vcr: dict[str, Any]
) -> dict[str, ReadOnlyResource]:
    """Every read-only target of a volume -> its resource; VolumeAccountingError
    naming the volume and each target that does not resolve to exactly one."""
    resolved, problems = resolve_targets(conn, read_only_targets(vcr))
    if problems:
        raise VolumeAccountingError(_problem_text(volume_id, problems))
    return resolved


def resolve_many(
    conn: Connection, requests: Mapping[uuid.UUID, dict[str, Any]]
) -> tuple[dict[uuid.UUID, dict[str, ReadOnlyResource]], list[str]]:
    """Resolve the targets of many volumes at once (set-based): the resolved
    targets per volume, and one line per volume whose targets do not resolve."""
    targets_of = {vid: read_only_targets(vcr) for vid, vcr in requests.items()}
    every = list(dict.fromkeys(t for ts in targets_of.values() for t in ts))
    resolved, problems = resolve_targets(conn, every)
    out: dict[uuid.UUID, dict[str, ReadOnlyResource]] = {}
    lines: list[str] = []
    for vid, ts in targets_of.items():
        bad = {t: problems[t] for t in ts if t in problems}
        if bad:
            lines.append(_problem_text(vid, bad))
        out[vid] = {t: resolved[t] for t in ts if t in resolved}
    return out, lines


def usage_rows(volume_id: uuid.UUID, resources: Iterable[ReadOnlyResource]) -> list[dict[str, Any]]:
    """The usage rows of a volume reading `resources` (one per distinct resource)."""
    distinct = sorted(set(resources), key=ReadOnlyResource.sort_key)
    return [
        {"usage_id": uuid.uuid4(), "volume_id": volume_id, **r.usage_values()} for r in distinct
    ]


# --- resources_to_clean_up -------------------------------------------------------------


@dataclass
class CleanUp:
    """What a soft-deleted volume leaves for the control plane to free.

    Stored as upstream's CrucibleResources::V3 serializes it,
    {"V3": {"regions": [id], "region_snapshots": [{"dataset", "region",
    "snapshot"}]}}, so the control plane's volume-delete work reads udx's rows as
    its own. (`regions` upstream also lists freed read-write regions; a copy
    udx makes never has any.)
    """

    regions: list[uuid.UUID] = field(default_factory=list)
    region_snapshots: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.regions or self.region_snapshots)

    def to_json(self) -> dict[str, Any]:
        return {
            "V3": {
                "regions": [str(r) for r in self.regions],
                "region_snapshots": [
                    {"dataset": str(d), "region": str(r), "snapshot": str(s)}
                    for d, r, s in self.region_snapshots
                ],
            }
        }

    def describe(self) -> list[str]:
        return [f"read-only region {r}" for r in self.regions] + [
            f"region snapshot (dataset {d}, region {r}, snapshot {s})"
            for d, r, s in self.region_snapshots
        ]

    @classmethod
    def parse(cls, text: str | None) -> CleanUp:
        """A stored list; also reads the form udx wrote before volume accounting
        ({"region_snapshots": [{"dataset_id", "region_id", "snapshot_id", ...}]})."""
        if not text:
            return cls()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise VolumeDataError("resources_to_clean_up is not a JSON object")
        if "V3" in data:
            v3 = data["V3"] or {}
            return cls(
                [uuid.UUID(str(r)) for r in v3.get("regions") or []],
                [
                    (uuid.UUID(x["dataset"]), uuid.UUID(x["region"]), uuid.UUID(x["snapshot"]))
                    for x in v3.get("region_snapshots") or []
                ],
            )
        if set(data) <= {"region_snapshots"}:
            return cls(
                [],
                [
                    (uuid.UUID(x["dataset_id"]), uuid.UUID(x["region_id"]),
                     uuid.UUID(x["snapshot_id"]))
                    for x in data.get("region_snapshots") or []
                ],
            )
        raise VolumeDataError(f"resources_to_clean_up has an unknown form: {sorted(data)}")


# --- volume rows -----------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRow:
    id: uuid.UUID
    data: str
    time_deleted: Any
    resources_to_clean_up: str | None

    @property
    def request(self) -> dict[str, Any]:
        return parse_request(self.id, self.data)


# Built once (building a Core statement per call cost more CPU than running it).
_COLUMNS = (volume.c.id, volume.c.data, volume.c.time_deleted, volume.c.resources_to_clean_up)
_GET = select(*_COLUMNS).where(volume.c.id == bindparam("b_id"))
_GET_TWO = DirectStatement(
    select(*_COLUMNS).where(
        volume.c.id.in_([bindparam(n, type_=volume.c.id.type) for n in ("b_id1", "b_id2")])
    )
)
_INSERT = DirectStatement(volume.insert().values(
    id=bindparam("b_id"),
    time_created=bindparam("b_now"),
    time_modified=bindparam("b_now"),
    time_deleted=None,
    rcgen=1,
    data=bindparam("b_data"),
    resources_to_clean_up=None,
))
_USAGE_COLUMNS = (
    usage.c.usage_type,
    usage.c.region_id,
    usage.c.region_snapshot_dataset_id,
    usage.c.region_snapshot_region_id,
    usage.c.region_snapshot_snapshot_id,
)

# Usage rows in one multi-row INSERT per chunk, built once per row count: an
# executemany is one statement per row (psycopg pipelines them, each with its
# own parse, bind and result), for the 3 to 15 rows of a typical copy. A text
# statement, because SQLAlchemy never caches a multi-row insert().values([...])
# ("no key": compiled again on every execution).
_USAGE_CHUNK = 500  # x 7 columns, far below SQLite's 32766 variables


@functools.lru_cache(maxsize=64)
def _insert_usage(n: int) -> Any:
    names = ("usage_id", "volume_id", *(c.name for c in _USAGE_COLUMNS))
    rows = ", ".join("(" + ", ".join(f":b_{c}_{i}" for c in names) + ")" for i in range(n))
    return DirectStatement(
        text(f"INSERT INTO {usage.name} ({', '.join(names)}) VALUES {rows}").bindparams(
            *(bindparam(f"b_{c}_{i}", type_=usage.c[c].type) for i in range(n) for c in names)
        ),
        returns_rows=False,
    )


def insert_usage_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert usage rows (as `usage_rows` makes them), one statement per chunk."""
    for i in range(0, len(rows), _USAGE_CHUNK):
        chunk = rows[i : i + _USAGE_CHUNK]
        params = {f"b_{c}_{j}": v for j, row in enumerate(chunk) for c, v in row.items()}
        _insert_usage(len(chunk)).execute(conn, params)


_SOFT_DELETE = (
    update(volume)
    .where(volume.c.id == bindparam("b_id"), volume.c.time_deleted.is_(None))
    .values(time_deleted=bindparam("b_now"), time_modified=bindparam("b_now"))
)
_RELEASE = (
    delete(usage).where(usage.c.volume_id == bindparam("b_id")).returning(*_USAGE_COLUMNS)
)
_SET_CLEAN_UP = (
    update(volume)
    .where(volume.c.id == bindparam("b_id"))
    .values(resources_to_clean_up=bindparam("b_clean_up"))
)


def get(conn: Connection, volume_id: uuid.UUID) -> VolumeRow | None:
    row = conn.execute(_GET, {"b_id": volume_id}).first()
    return None if row is None else VolumeRow(*row)


def usage_of(conn: Connection, volume_id: uuid.UUID) -> list[ReadOnlyResource]:
    """The resources a volume's usage rows name, sorted."""
    return [r for _usage_id, r in usage_rows_of(conn, volume_id)]


def copy_volume(conn: Connection, source_id: uuid.UUID, new_volume_id: uuid.UUID) -> dict[str, Any]:
    """Create `new_volume_id` as a copy of `source_id`, with one usage row per
    read-only resource it reads. Call in a transaction: a target that does not
    resolve raises VolumeAccountingError and the caller's rollback leaves
    nothing behind. Idempotent by the new id (as upstream's volume_create): when
    that row already exists nothing changes and its request is returned."""
    # Both rows in one read: the copy (if a previous run made it) and the source.
    rows = {
        r[0]: VolumeRow(*r)
        for r in _GET_TWO.execute(conn, {"b_id1": new_volume_id, "b_id2": source_id})
    }
    existing = rows.get(new_volume_id)
    if existing is not None:
        if existing.time_deleted is not None:
            raise Conflict(f"volume {new_volume_id} was already copied and deleted")
        return existing.request
    source = rows.get(source_id)
    if source is None or source.time_deleted is not None:
        raise NotFound(f"source volume {source_id} does not exist or is deleted")
    copy = copy_request(source.request, new_volume_id)
    # Resolved before anything is written; errors name the source volume,
    # whose data is what an operator would have to look at.
    resources = resolve_volume(conn, source_id, copy)
    _INSERT.execute(conn, {"b_id": new_volume_id, "b_now": utcnow(), "b_data": json.dumps(copy)})
    rows_to_add = usage_rows(new_volume_id, resources.values())
    insert_usage_rows(conn, rows_to_add)
    return copy


def check_usage(conn: Connection, volume_id: uuid.UUID) -> int:
    """Raise VolumeAccountingError unless every read-only target of a live
    volume resolves and has its usage row; the number of targets otherwise.
    Reads only (the delete saga checks before it detaches anything)."""
    row = get(conn, volume_id)
    if row is None or row.time_deleted is not None:
        return 0
    resolved = resolve_volume(conn, volume_id, row.request)
    held = set(usage_of(conn, volume_id))
    missing = {t: r for t, r in resolved.items() if r not in held}
    if missing:
        raise VolumeAccountingError(_missing_text(volume_id, missing))
    return len(resolved)


def _missing_text(volume_id: uuid.UUID, missing: Mapping[str, ReadOnlyResource]) -> str:
    return _problem_text(
        volume_id, {t: f"({r}) has no usage row for this volume" for t, r in missing.items()}
    )


def usage_problems(
    volume_id: uuid.UUID,
    resolved: Mapping[str, ReadOnlyResource],
    held: Counter[ReadOnlyResource],
    *,
    live: bool = True,
) -> list[str]:
    """What "exact" usage means for one volume (the invariant checker and
    `udx export diagnose` both ask this): a live volume has exactly one usage row
    per resource its resolved read-only targets name and none other; a
    soft-deleted one has none. `held` counts its usage rows by resource."""
    if not live:
        n = sum(held.values())
        return [f"soft-deleted volume {volume_id} still has {n} usage rows"] if n else []
    lines = []
    for target, resource in sorted(resolved.items()):
        if held[resource] != 1:
            lines.append(
                f"volume {volume_id}: read-only target {target} ({resource}) has "
                f"{held[resource]} usage rows, not 1"
            )
    for resource in sorted(set(held) - set(resolved.values()), key=str):
        lines.append(f"volume {volume_id}: usage row for {resource}, which its data does not name")
    return lines


@dataclass(frozen=True)
class VolumeUsage:
    """One volume's usage as `udx export diagnose` shows it: each read-only
    target, the resource it resolves to and how many usage rows name that
    resource; every usage row's resource with its count; and the problems
    (empty when the usage is exact)."""

    volume_id: uuid.UUID
    live: bool
    targets: list[tuple[str, ReadOnlyResource | None, int]]
    held: Counter[ReadOnlyResource]
    problems: list[str]

    @property
    def exact(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "targets": [
                {
                    "target": t,
                    "resolves_to": resource_json(r) if r is not None else None,
                    "usage_rows": n,
                }
                for t, r, n in self.targets
            ],
            "rows": [
                {**resource_json(r), "count": n}
                for r, n in sorted(self.held.items(), key=lambda kv: kv[0].sort_key())
            ],
            "problems": self.problems,
        }


def volume_usage(conn: Connection, volume_id: uuid.UUID) -> VolumeUsage | None:
    """The usage rows of one volume checked against its data (None: no such
    volume). Three statements: the row, its usage rows, the target resolution."""
    row = get(conn, volume_id)
    if row is None:
        return None
    held: Counter[ReadOnlyResource] = Counter(r for _uid, r in usage_rows_of(conn, volume_id))
    live = row.time_deleted is None
    if not live:
        gone = usage_problems(volume_id, {}, held, live=False)
        return VolumeUsage(volume_id, False, [], held, gone)
    try:
        vcr = row.request
        addrs = read_only_targets(vcr)
    except VolumeDataError as err:
        bad = [f"volume {volume_id}: unreadable data ({err})"]
        return VolumeUsage(volume_id, True, [], held, bad)
    by_volume, unresolved = resolve_many(conn, {volume_id: vcr})
    resolved = by_volume.get(volume_id, {})
    targets = [(t, resolved.get(t), held[resolved[t]] if t in resolved else 0) for t in addrs]
    return VolumeUsage(
        volume_id, True, targets, held, unresolved + usage_problems(volume_id, resolved, held)
    )


def soft_delete_volume(conn: Connection, volume_id: uuid.UUID) -> CleanUp:
    """Soft-delete a volume, removing its usage rows exactly once; every resource
    left with no usage at all is marked deleting and recorded in the volume's
    `resources_to_clean_up` (and returned). The row stays: the control plane's
    volume-delete work reads it to free the storage.

    A read-only target that does not resolve, or has no usage row, raises
    VolumeAccountingError (call in a transaction: nothing is written). Repeatable
    (as upstream's soft_delete_volume): a soft-deleted volume returns its stored
    list, a missing one an empty list, and neither changes anything.
    """
    row = get(conn, volume_id)
    if row is None:
        return CleanUp()
    if row.time_deleted is not None:
        return CleanUp.parse(row.resources_to_clean_up)
    resolved = resolve_volume(conn, volume_id, row.request)
    # The conditional update is the once-only guard: a concurrent call that
    # loses it (PostgreSQL SERIALIZABLE retries it; SQLite queues writers) finds
    # the volume soft-deleted and gives nothing back.
    if conn.execute(_SOFT_DELETE, {"b_id": volume_id, "b_now": utcnow()}).rowcount != 1:
        again = get(conn, volume_id)
        return CleanUp.parse(again.resources_to_clean_up if again else None)
    released = {ReadOnlyResource.from_row(r) for r in conn.execute(_RELEASE, {"b_id": volume_id})}
    missing = {t: r for t, r in resolved.items() if r not in released}
    if missing:
        # Raising rolls the whole transaction back, the soft delete included.
        raise VolumeAccountingError(_missing_text(volume_id, missing))
    strays = released - set(resolved.values())
    if strays:
        # Upstream deletes only the rows its targets resolve to and would leave
        # these behind forever, pinning the resources. A deleted volume reads
        # nothing, so udx releases them too, and says so.
        log.warning(
            "volume %s held usage rows for resources its data does not name: %s",
            volume_id,
            ", ".join(sorted(str(r) for r in strays)),
        )
    cleanup = _free_unused(conn, released)
    conn.execute(_SET_CLEAN_UP, {"b_id": volume_id, "b_clean_up": json.dumps(cleanup.to_json())})
    return cleanup


def _free_unused(conn: Connection, released: set[ReadOnlyResource]) -> CleanUp:
    """Of `released`, the resources no usage row names any more, marked deleting."""
    regions = sorted({r.region_id for r in released if not r.is_region_snapshot and r.region_id})
    snaps = sorted({r.snapshot_key for r in released if r.is_region_snapshot})
    if not regions and not snaps:
        return CleanUp()
    used = {
        ReadOnlyResource.from_row(r)
        for r in conn.execute(
            select(*_USAGE_COLUMNS)
            .where(
                or_(
                    usage.c.region_id.in_(regions or [None]),
                    tuple_(
                        usage.c.region_snapshot_dataset_id,
                        usage.c.region_snapshot_region_id,
                        usage.c.region_snapshot_snapshot_id,
                    ).in_(snaps or [(None, None, None)]),
                )
            )
            .distinct()
        )
    }
    free_regions = [r for r in regions if ReadOnlyResource(READ_ONLY_REGION, r) not in used]
    free_snaps = [
        k for k in snaps if ReadOnlyResource(REGION_SNAPSHOT, None, *k) not in used
    ]
    if free_regions:
        conn.execute(
            update(region)
            .where(region.c.id.in_(free_regions), region.c.read_only.is_(True))
            .values(deleting=True, time_modified=utcnow())
        )
    if free_snaps:
        conn.execute(
            update(rs)
            .where(tuple_(rs.c.dataset_id, rs.c.region_id, rs.c.snapshot_id).in_(free_snaps))
            .values(deleting=True)
        )
    return CleanUp(free_regions, free_snaps)


def soft_deleted_with_clean_up(conn: Connection) -> Iterator[tuple[uuid.UUID, CleanUp]]:
    """Every soft-deleted volume and its cleanup list."""
    rows = conn.execute(
        select(volume.c.id, volume.c.resources_to_clean_up).where(
            volume.c.time_deleted.is_not(None)
        )
    )
    for vid, clean_up in rows:
        yield vid, CleanUp.parse(clean_up)



# --- what an operator sees: `udx volume list|show` -------------------------------------


def resource_json(r: ReadOnlyResource) -> dict[str, Any]:
    if r.is_region_snapshot:
        return {
            "type": REGION_SNAPSHOT,
            "dataset_id": str(r.snapshot_dataset_id),
            "region_id": str(r.snapshot_region_id),
            "snapshot_id": str(r.snapshot_id),
        }
    return {"type": READ_ONLY_REGION, "region_id": str(r.region_id)}


@dataclass(frozen=True)
class VolumeSummary:
    id: uuid.UUID
    time_created: Any
    time_deleted: Any
    targets: int | None  # None: the data cannot be read
    usage_rows: int
    clean_up: CleanUp | None
    used_by: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "state": "live" if self.time_deleted is None else "deleted",
            "time_created": self.time_created.isoformat(),
            "time_deleted": self.time_deleted.isoformat() if self.time_deleted else None,
            "targets": self.targets,
            "usage_rows": self.usage_rows,
            "resources_to_clean_up": self.clean_up.to_json() if self.clean_up is not None else None,
            "used_by": self.used_by,
        }


def _owners(conn: Connection, ids: Sequence[uuid.UUID] | None) -> dict[uuid.UUID, list[str]]:
    """Who names each volume: snapshots, images, export records. One statement."""
    from udx.db.schema import image, snapshot, user_data_export

    parts = [
        select(literal_column("'snapshot'").label("kind"), snapshot.c.id, snapshot.c.volume_id,
               cast(null(), Text).label("state"), snapshot.c.time_deleted),
        select(literal_column("'image'"), image.c.id, image.c.volume_id, cast(null(), Text),
               image.c.time_deleted),
        select(literal_column("'export'"), user_data_export.c.id, user_data_export.c.volume_id,
               user_data_export.c.state, cast(null(), UTCDateTime)),
    ]
    stmt = union_all(*parts).subquery()
    q = select(stmt)
    if ids is not None:
        q = q.where(stmt.c.volume_id.in_(list(ids)))
    out: dict[uuid.UUID, list[str]] = {}
    for kind, oid, vid, state, deleted in conn.execute(q):
        if vid is None:
            continue
        note = f" ({state})" if state else (" (deleted)" if deleted is not None else "")
        out.setdefault(vid, []).append(f"{kind} {oid}{note}")
    for names in out.values():
        names.sort()
    return out


def list_volumes(
    conn: Connection, *, deleted: bool = False, limit: int | None = None
) -> tuple[list[VolumeSummary], int]:
    """Live volumes (or soft-deleted ones), newest first, at most `limit`, with
    their counts and who names them; and how many there are in all. Four
    statements whatever the number of volumes."""
    cond = volume.c.time_deleted.is_not(None) if deleted else volume.c.time_deleted.is_(None)
    q = (
        select(
            volume.c.id, volume.c.time_created, volume.c.time_deleted, volume.c.data,
            volume.c.resources_to_clean_up,
        )
        .where(cond)
        .order_by(volume.c.time_created.desc(), volume.c.id.desc())
    )
    if limit is not None:
        q = q.limit(limit)
    rows = conn.execute(q).all()
    if limit is None or len(rows) < limit:
        total = len(rows)
    else:
        total = int(conn.execute(select(func.count()).select_from(volume).where(cond)).scalar_one())
    ids = [r[0] for r in rows]
    counts: dict[uuid.UUID, int] = {}
    owners: dict[uuid.UUID, list[str]] = {}
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        counts.update(
            (vid, int(n))
            for vid, n in conn.execute(
                select(usage.c.volume_id, func.count())
                .where(usage.c.volume_id.in_(chunk))
                .group_by(usage.c.volume_id)
            )
        )
        owners.update(_owners(conn, chunk))
    out = []
    for vid, created, time_deleted, data, clean_up_text in rows:
        try:
            targets: int | None = len(read_only_targets(parse_request(vid, data)))
        except VolumeDataError:
            targets = None
        try:
            clean_up = CleanUp.parse(clean_up_text) if time_deleted is not None else None
        except (VolumeDataError, ValueError, KeyError, TypeError):
            clean_up = None
        out.append(
            VolumeSummary(vid, created, time_deleted, targets, int(counts.get(vid, 0)), clean_up,
                          owners.get(vid, []))
        )
    return out, total


def describe_volume(conn: Connection, volume_id: uuid.UUID) -> dict[str, Any]:
    """One volume as `udx volume show` prints it: its read-only targets, what
    each resolves to and whether it has its usage row, every usage row, who
    names the volume, and its cleanup list."""
    row = conn.execute(
        select(volume.c.id, volume.c.time_created, volume.c.time_modified,
               volume.c.time_deleted, volume.c.data, volume.c.resources_to_clean_up)
        .where(volume.c.id == volume_id)
    ).first()
    if row is None:
        raise NotFound(f"volume {volume_id} does not exist")
    held = usage_rows_of(conn, volume_id)
    data_error = None
    targets: list[dict[str, Any]] = []
    named: set[ReadOnlyResource] = set()
    try:
        addrs = read_only_targets(parse_request(volume_id, row.data))
    except VolumeDataError as err:
        data_error, addrs = str(err), []
    resolved, problems = resolve_targets(conn, addrs)
    # What a deleted volume read is normally being deleted itself: show it.
    deleting_only = {
        t: matches[0][0]
        for t, matches in _resolve_rows(
            conn, [t for t in addrs if t not in resolved], include_deleting=True
        ).items()
        if len(matches) == 1
    } if len(resolved) < len(addrs) else {}
    live = row.time_deleted is None
    held_resources = {r for _uid, r in held}
    for t in addrs:
        res = resolved.get(t) or deleting_only.get(t)
        if res is not None:
            named.add(res)
        targets.append({
            "target": t,
            "resolves_to": resource_json(res) if res else None,
            "deleting": t in deleting_only,
            # A live volume must resolve every target; a deleted one's being
            # deleted is what its soft delete did.
            "problem": problems.get(t) if live or t not in deleting_only else None,
            "usage_row": res is not None and res in held_resources,
        })
    clean_up_error = None
    clean_up = None
    if row.resources_to_clean_up is not None:
        try:
            clean_up = CleanUp.parse(row.resources_to_clean_up).to_json()
        except (VolumeDataError, ValueError, KeyError, TypeError) as err:
            clean_up_error = f"unreadable: {err}"
    return {
        "id": str(row.id),
        "state": "live" if row.time_deleted is None else "deleted",
        "time_created": row.time_created.isoformat(),
        "time_modified": row.time_modified.isoformat(),
        "time_deleted": row.time_deleted.isoformat() if row.time_deleted else None,
        "used_by": _owners(conn, [volume_id]).get(volume_id, []),
        "data_error": data_error,
        "targets": targets,
        "usage": [
            {"usage_id": str(uid), **resource_json(r), "named_by_data": r in named}
            for uid, r in held
        ],
        "resources_to_clean_up": clean_up,
        "resources_to_clean_up_error": clean_up_error,
    }


def usage_rows_of(
    conn: Connection, volume_id: uuid.UUID
) -> list[tuple[uuid.UUID, ReadOnlyResource]]:
    rows = conn.execute(
        select(usage.c.usage_id, *_USAGE_COLUMNS).where(usage.c.volume_id == volume_id)
    )
    out = [(r.usage_id, ReadOnlyResource.from_row(r)) for r in rows]
    return sorted(out, key=lambda p: p[1].sort_key())
