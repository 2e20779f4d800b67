"""`udx saga`: (being built)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect, resume, recover and abandon sagas.", no_args_is_help=True)
