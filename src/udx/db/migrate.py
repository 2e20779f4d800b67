"""Schema versions, through Alembic, always on a connection udx opened itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from udx.domain.errors import SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

    from udx.db.engine import Database

_MIGRATIONS = Path(__file__).parent / "migrations"

# The newest migration. Every command checks the schema before it runs; comparing
# with this constant (one SELECT) spares it importing Alembic and parsing the
# migration scripts. tests/test_migrations.py keeps it equal to Alembic's head.
SCHEMA_HEAD = "0006"


def _alembic_config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def all_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def status(db: Database) -> SchemaStatus:
    current = current_revision(db)
    revisions = all_revisions()
    if current is None:
        pending = revisions
    elif current in revisions:
        pending = revisions[revisions.index(current) + 1 :]
    else:  # written by a newer udx: nothing this version could apply
        pending = []
    return SchemaStatus(current=current, head=revisions[-1], pending=pending)


def upgrade(db: Database, target: str = "head") -> SchemaStatus:
    """Apply every missing migration, in one transaction where the engine allows."""
    from alembic import command

    with db.begin() as conn:
        command.upgrade(_alembic_config(conn), target)
    return status(db)


def _stored_revision(db: Database) -> str | None:
    """alembic_version's row, read without Alembic (None when there is none)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from udx.db.engine import is_connection_error

    try:
        with db.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError as err:
        if is_connection_error(err):
            raise db.translate(err) from err
        return None  # no alembic_version table: the full status below says what to do
    return str(rows[0][0]) if len(rows) == 1 else None


def require_current(db: Database) -> None:
    """Exit-3 error unless the schema is exactly the version this udx needs."""
    if _stored_revision(db) == SCHEMA_HEAD:
        return
    st = status(db)
    if st.current is None:
        raise SchemaOutOfDate(f"the database {db.display_url} has no udx schema: run `udx db init`")
    if not st.up_to_date:
        if st.current not in all_revisions():
            raise SchemaOutOfDate(
                f"the database schema is at version {st.current}, which this udx does not know "
                f"(newest known: {st.head}): upgrade udx"
            )
        raise SchemaOutOfDate(
            f"the database schema is at version {st.current}, udx needs {st.head}: "
            "run `udx db upgrade`"
        )
