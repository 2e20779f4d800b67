"""`udx pantry`: (being built)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Pantries: health, affected records, inventory.", no_args_is_help=True)
