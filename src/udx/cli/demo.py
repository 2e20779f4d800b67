"""`udx demo`: a self-contained tour (being built)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `demo` command to `app`."""
