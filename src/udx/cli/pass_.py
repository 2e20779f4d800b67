"""`udx pass`: one coordinator pass (being built)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `pass` command to `app`."""
