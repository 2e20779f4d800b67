"""Volume accounting under concurrency, on both engines: soft deletes of volumes
sharing resources free each resource exactly once (no write skew leaves a
resource with no usage and not deleting), and a copy racing the delete of its
source never ends up reading storage listed for clean-up."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from udx import seed
from udx.datastore import volumes
from udx.db.engine import Database
from udx.db.schema import image
from udx.domain.errors import NotFound
from udx.testing.invariants import check_invariants


def _source(db: Database) -> uuid.UUID:
    with db.begin() as conn:
        s = seed.Seeder()
        iid = s.add_image(replaced=1, parent_replaced=1)
        s.flush(conn)
        return conn.execute(select(image.c.volume_id).where(image.c.id == iid)).scalar_one()


def _all_at_once(db: Database, jobs: list[Any]) -> list[Any]:
    """Run each job (a function of a connection) in its own transaction, all
    released together; an exception is returned, not raised."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Any) -> Any:
        barrier.wait()
        try:
            return db.transaction(job, name="test")
        except Exception as err:  # the caller looks at it
            return err

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_concurrent_soft_deletes_free_each_resource_exactly_once(db: Database) -> None:
    for _round in range(3):
        src = _source(db)
        copies = [uuid.uuid4() for _ in range(5)]
        with db.begin() as conn:
            for c in copies:
                volumes.copy_volume(conn, src, c)
        # Every volume twice: the once-only guard and the last-user race at once.
        vids = [src, *copies] * 2
        results = _all_at_once(
            db, [lambda conn, v=v: volumes.soft_delete_volume(conn, v) for v in vids]
        )
        errors = [r for r in results if isinstance(r, Exception)]
        assert errors == []
        # A repeat returns the stored list: count each volume's list once.
        by_volume = dict(zip(vids, results, strict=True))
        freed = Counter()
        for cleanup in by_volume.values():
            freed.update(cleanup.describe())
        assert len(freed) == 6 and set(freed.values()) == {1}, freed
        assert check_invariants(db) == []


def test_a_copy_racing_the_delete_of_its_source(db: Database) -> None:
    outcomes = Counter()
    for _round in range(4):
        src = _source(db)
        new = uuid.uuid4()
        deleted, copied = _all_at_once(
            db,
            [
                lambda conn: volumes.soft_delete_volume(conn, src),  # noqa: B023
                lambda conn: volumes.copy_volume(conn, src, new),  # noqa: B023
            ],
        )
        assert not isinstance(deleted, Exception), deleted
        if isinstance(copied, Exception):
            # The delete won: the copy was refused and everything is freed.
            assert isinstance(copied, NotFound), copied
            assert len(deleted.describe()) == 6
            outcomes["delete first"] += 1
        else:
            # The copy won: the delete frees nothing the copy reads.
            assert not deleted
            with db.connect() as conn:
                assert len(volumes.usage_of(conn, new)) == 6
            outcomes["copy first"] += 1
        assert check_invariants(db) == []
    assert sum(outcomes.values()) == 4
