"""`udx config`: write a config file, show the effective configuration."""

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
    """Write a config file holding every key with its effective value."""
    from udx.config import Settings, default_config_path, write_settings

    st = state()
    target = path or (Path(st.config_path) if st.config_path else default_config_path())
    settings = Settings()
    if st.db_url:
        settings.database.url = st.db_url
    write_settings(settings, Path(target), overwrite=force)
    stdout_console().print(f"wrote {target}")


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the effective configuration (passwords masked)."""
    import tomli_w

    s = state().settings()
    data = s.to_toml_dict(mask=True)
    if as_json:
        print_json({"config_path": str(s.config_path) if s.config_path else None, **data})
        return
    origin = str(s.config_path) if s.config_path else "(no config file: defaults and environment)"
    print(f"# {origin}")
    print(tomli_w.dumps(data), end="")
