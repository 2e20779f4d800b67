from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Udx


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    """`udx --db <a fresh database at the current schema>`, on each engine."""
    return Udx(tmp_path, db_url)


@pytest.fixture
def udx_nodb(tmp_path: Path) -> Udx:
    """`udx` with no --db (the default database under a temp XDG data dir)."""
    return Udx(tmp_path)
