"""`udx config`: write a commented config file, show the effective configuration
and where each value came from."""

from __future__ import annotations

from pathlib import Path

import typer

from udx.cli.common import print_json, state, stdout_console

app = typer.Typer(help="Write and show the configuration.", no_args_is_help=True)


@app.command("init")
def init(
    path: Path | None = typer.Argument(
        None, help="Where to write (default: --config or the user config dir)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented config file with every key.

    Each key comes with its meaning, unit, range and environment variable, at its
    default and commented out (a --db URL is set). Refuses to replace an existing
    file unless --force.
    """
    from udx.config import Settings, default_config_path, write_settings

    st = state()
    target = path or (Path(st.config_path) if st.config_path else default_config_path())
    settings = Settings()
    if st.db_url:
        settings.database.url = st.db_url
    write_settings(settings, Path(target), overwrite=force)
    stdout_console().print(f"wrote {target}", markup=False)


@app.command("show")
def show(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """Show every setting's value and where it came from.

    The source is default, file (its path), environment (the variable) or flag
    (the option). Passwords are masked.
    """
    from udx.config import describe

    s = state().settings()
    entries = describe(s, mask=True)
    if as_json:
        print_json({"config_path": str(s.config_path) if s.config_path else None,
                    "settings": entries})
        return
    from udx.cli.tables import Column, write_table

    def shown(value: object) -> str:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "-"
        if value == "":
            return '""'
        return str(value)

    where = str(s.config_path) if s.config_path else "no config file"
    write_table(
        (
            Column("key", key=True),
            Column("value"),
            Column("unit", priority=3),
            Column("source"),
            Column("from", priority=2),
        ),
        (
            [e["key"], shown(e["value"]), e["unit"] or "-", e["source"], e["from"] or "-"]
            for e in entries
        ),
        title=f"configuration ({where})",
        headers=not no_headers,
    )
