"""`udx pantry-sim`: run a simulated pantry (being built)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `pantry-sim` command to `app`."""
