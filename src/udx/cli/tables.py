"""The one table writer every list command uses (the contract is in team COMMON.md).

On a terminal: a Rich table with its title and row count; an id or address
(`key=True`) is never wrapped, cut or dropped; when the terminal is too narrow,
whole non-key columns are dropped, highest `priority` number first, and a line
under the table names them. Piped: a plain writer for grep and awk, header line
then one line per row, columns aligned with two spaces, no trailing spaces,
nothing above the header; Rich is not imported at all (it was >95% of a piped
`export list`).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from udx.cli.common import is_terminal

__all__ = ["Column", "fmt_age", "fmt_time", "write_fields", "write_table"]

# Rich's rounded box with an edge: "│ a │ b │" is 3 characters per column plus 1.
_BOX_PER_COLUMN = 3
# A prose column (its cells have spaces: errors, details) may wrap down to this.
_PROSE_MIN = 24


@dataclass(frozen=True)
class Column:
    header: str
    _: KW_ONLY
    key: bool = False  # an id or address: never wrapped, cut or dropped
    wide: bool = False  # only with -o wide
    priority: int = 1  # a narrow terminal drops the highest number first
    justify: str = "left"

    def __post_init__(self) -> None:
        if self.justify not in ("left", "right"):
            raise ValueError(f"justify must be left or right, not {self.justify!r}")


def _one_line(cell: str) -> str:
    # One record, one line: a multi-line error must not break `wc -l` or awk.
    if "\n" in cell or "\r" in cell or "\t" in cell:
        return " ".join(cell.split())
    return cell


def write_table(
    columns: Sequence[Column],
    rows: Iterable[Sequence[str]],
    *,
    title: str,
    total: int | None = None,
    wide: bool = False,
    headers: bool = True,
) -> None:
    """Write rows of plain-text cells; `total` is the count before a --limit."""
    shown = [i for i, c in enumerate(columns) if wide or not c.wide]
    cols = [columns[i] for i in shown]
    if len(shown) == len(columns):
        table_rows = [[_one_line(cell) for cell in row] for row in rows]
    else:
        table_rows = [[_one_line(row[i]) for i in shown] for row in rows]
    for row in table_rows:
        if len(row) != len(cols):
            raise ValueError(f"a row has {len(row)} cells for {len(cols)} columns")
    if is_terminal():
        _write_rich(cols, table_rows, title=title, total=total, headers=headers)
    else:
        _write_plain(cols, table_rows, headers=headers)


def _write_plain(cols: Sequence[Column], rows: list[list[str]], *, headers: bool) -> None:
    if not cols:
        return
    widths = [len(c.header) if headers else 0 for c in cols]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    last = len(cols) - 1
    right = [c.justify == "right" for c in cols]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            if right[i]:
                parts.append(cell.rjust(widths[i]))
            elif i == last:
                parts.append(cell)
            else:
                parts.append(cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = sys.stdout
    if headers:
        out.write(line([c.header for c in cols]) + "\n")
    chunk: list[str] = []
    for row in rows:
        chunk.append(line(row))
        if len(chunk) >= 1000:
            out.write("\n".join(chunk) + "\n")
            chunk.clear()
    if chunk:
        out.write("\n".join(chunk) + "\n")
    out.flush()


def _count(n: int, total: int | None) -> str:
    return f"{n} of {total}" if total is not None and total != n else str(n)


def _min_width(header: str, cells: list[str], natural: int, key: bool) -> int:
    if key:
        return natural
    # Tokens (ids, states, numbers, addresses) keep their width; prose may wrap.
    if any(" " in cell for cell in cells):
        return min(natural, max(len(header), _PROSE_MIN))
    return natural


def fit_columns(
    cols: Sequence[Column], rows: list[list[str]], width: int, *, headers: bool = True
) -> tuple[list[int], list[int], list[int]]:
    """Which columns a terminal `width` wide shows (indexes), and each column's
    minimum and natural widths.

    Non-key columns go whole, highest priority number first (the rightmost first
    among equals), until the rest fits; key columns always stay.
    """
    natural = [len(c.header) if headers else 1 for c in cols]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > natural[i]:
                natural[i] = len(cell)
    mins = [
        _min_width(c.header, [row[i] for row in rows], natural[i], c.key)
        for i, c in enumerate(cols)
    ]
    keep = list(range(len(cols)))

    def needed() -> int:
        return sum(mins[i] for i in keep) + _BOX_PER_COLUMN * len(keep) + 1

    droppable = sorted(
        (i for i, c in enumerate(cols) if not c.key),
        key=lambda i: (cols[i].priority, i),
        reverse=True,
    )
    dropped: list[int] = []
    for i in droppable:
        if needed() <= width:
            break
        keep.remove(i)
        dropped.append(i)
    # A narrow column dropped on the way may fit beside what stayed: the most
    # important first.
    for i in reversed(dropped):
        keep.append(i)
        if needed() > width:
            keep.remove(i)
    keep.sort()
    return keep, mins, natural


def _write_rich(
    cols: Sequence[Column],
    rows: list[list[str]],
    *,
    title: str,
    total: int | None,
    headers: bool,
) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from udx.cli.common import stdout_console

    console = stdout_console()
    keep, mins, natural = fit_columns(cols, rows, console.width, headers=headers)
    dropped = [cols[i].header for i in range(len(cols)) if i not in keep]
    t = Table(
        title=f"{title} ({_count(len(rows), total)})",
        box=box.ROUNDED,
        header_style="bold",
        show_header=headers,
    )
    for i in keep:
        c = cols[i]
        t.add_column(
            c.header,
            justify="right" if c.justify == "right" else "left",
            no_wrap=mins[i] == natural[i],  # ids and other tokens; prose may wrap
            min_width=mins[i],
            overflow="fold",
        )
    for row in rows:
        t.add_row(*(Text(row[i]) for i in keep))
    need = sum(mins[i] for i in keep) + _BOX_PER_COLUMN * len(keep) + 1
    kwargs: dict[str, Any] = {}
    if need > console.width:
        # Only ids are left and they still do not fit: let the lines run long
        # (the terminal folds them) rather than cut an id.
        kwargs.update(width=need, crop=False)
    console.print(t, **kwargs)
    if dropped:
        console.print(
            Text(
                f"left out to fit {console.width} columns: {', '.join(dropped)} "
                "(a wider terminal or piped output shows them)",
                style="dim",
            )
        )


def write_fields(title: str, fields: Sequence[tuple[str, str]]) -> None:
    """One object's fields: a titled two-column table on a terminal, `name  value`
    lines piped (no header, no title: `awk '$1 == "state" {print $2}'`)."""
    rows = [[name, value] for name, value in fields]
    if not is_terminal():
        _write_plain([Column("field"), Column("value")], rows, headers=False)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from udx.cli.common import stdout_console

    t = Table(title=title, box=box.ROUNDED, show_header=False)
    t.add_column("field", style="bold", no_wrap=True)
    # Values are mostly ids and times: fold only what cannot fit at all.
    t.add_column("value", overflow="fold")
    for name, value in rows:
        t.add_row(Text(name), Text(_one_line(value)))
    stdout_console().print(t)


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:  # udx stores UTC; a naive value is UTC
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def fmt_time(value: dt.datetime | None) -> str:
    """UTC to the second with a Z: 2026-12-02T00:27:15Z; "-" for none."""
    if value is None:
        return "-"
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_age(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, as kubectl prints it: 45s, 3m20s, 5m, 7h, 2d3h, 12d, 3y."""
    if value is None:
        return "-"
    current = _utc(now) if now is not None else dt.datetime.now(dt.UTC)
    secs = int((current - _utc(value)).total_seconds())
    if secs < 0:
        return "0s"  # a clock a little ahead of ours
    minutes, hours, days = secs // 60, secs // 3600, secs // 86400
    if secs < 120:
        return f"{secs}s"
    if minutes < 10:
        return f"{minutes}m{secs % 60}s" if secs % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


def write_heading(text: str) -> None:
    """Piped, a `== text` line between the tables of a screen that prints several
    (changeset, demo); on a terminal each table's title already says it."""
    if not is_terminal():
        sys.stdout.write(f"== {_one_line(text)}\n")
