"""`udx config init` writes a commented file that loads back; `udx config show`
says where each value came from (default, file, environment, flag), through the
real command line."""

from __future__ import annotations

import json
from pathlib import Path

from udx.config import setting_fields

from .helpers import Udx, assert_one_line_error
from .test_operator import clean_env, run_udx

KEYS = [f"{section}.{f.name}" for section, f in setting_fields()]


def _by_key(shown: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {e["key"]: e for e in shown["settings"]}


def test_init_writes_every_key_commented_and_refuses_to_overwrite(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    target = tmp_path / "etc" / "udx.toml"
    r = run_udx(["config", "init", str(target)], env)
    assert r.returncode == 0 and r.stdout == f"wrote {target}\n", r.stderr
    text = target.read_text()
    for key in KEYS:
        section, name = key.split(".")
        assert f"\n#{name} = " in text, key  # at its default, commented out
        assert f"UDX_{section.upper()}_{name.upper()}" in text, key
    assert "seconds" in text and "1..256 sagas" in text
    # Loaded through the real loader: every value is the default.
    shown = json.loads(run_udx(["--config", str(target), "config", "show", "--json"], env).stdout)
    assert shown["config_path"] == str(target)
    assert [e["key"] for e in shown["settings"]] == KEYS
    assert {e["source"] for e in shown["settings"]} == {"default"}
    # Again: refused, one line, exit 2, the file untouched; --force replaces it.
    target.write_text(text + "# my edit\n")
    r = run_udx(["config", "init", str(target)], env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (
        f"udx: error: config file {target} already exists (use --force to overwrite)\n"
    )
    assert target.read_text().endswith("# my edit\n")
    r = run_udx(["config", "init", str(target), "--force"], env)
    assert r.returncode == 0 and target.read_text() == text


def test_init_sets_the_db_url_it_was_given(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    target = tmp_path / "udx.toml"
    url = "postgresql+psycopg://udx:topsecret@db.example/omicron"
    udx.ok("config", "init", str(target), db=url)
    assert f'\nurl = "{url}"\n' in target.read_text()
    assert '# Default: url = ""' in target.read_text()
    shown = _by_key(udx.json("--config", str(target), "config", "show"))
    assert shown["database.url"]["value"] == "postgresql+psycopg://udx:***@db.example/omicron"
    assert shown["database.url"]["source"] == "file"
    assert shown["database.url"]["from"] == str(target)


def test_show_names_each_source(tmp_path: Path) -> None:
    cfg = tmp_path / "udx.toml"
    cfg.write_text('[coordinator]\nconcurrency = 4\n[pantry]\ndns_zone = "file.example"\n')
    env = clean_env(tmp_path, UDX_CONFIG=str(cfg), UDX_SAGA_LEASE_SECS="12")
    url = f"sqlite:///{tmp_path}/flag.sqlite3"
    r = run_udx(["--db", url, "config", "show", "--json"], env)
    assert r.returncode == 0, r.stderr
    shown = _by_key(json.loads(r.stdout))
    assert set(shown) == set(KEYS)
    assert shown["coordinator.concurrency"] == {
        "key": "coordinator.concurrency", "value": 4, "unit": "sagas",
        "source": "file", "from": str(cfg),
    }
    assert shown["saga.lease_secs"] == {
        "key": "saga.lease_secs", "value": 12.0, "unit": "seconds",
        "source": "environment", "from": "UDX_SAGA_LEASE_SECS",
    }
    assert shown["database.url"] == {
        "key": "database.url", "value": url, "unit": None, "source": "flag", "from": "--db",
    }
    assert shown["pantry.source"] == {
        "key": "pantry.source", "value": "db", "unit": None, "source": "default", "from": None,
    }
    # The same, as a table: piped, a header line then one plain line per key.
    r = run_udx(["--db", url, "config", "show"], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["key", "value", "unit", "source", "from"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert list(rows) == KEYS
    assert rows["coordinator.concurrency"] == ["coordinator.concurrency", "4", "sagas", "file",
                                               str(cfg)]
    assert rows["saga.lease_secs"][3:] == ["environment", "UDX_SAGA_LEASE_SECS"]
    assert rows["database.url"][1:] == [url, "-", "flag", "--db"]
    assert rows["pantry.source"][1:] == ["db", "-", "default", "-"]
    assert all(ln == ln.rstrip() for ln in lines)
    r = run_udx(["--db", url, "config", "show", "--no-headers"], env)
    assert r.stdout.splitlines() == lines[1:]


def test_show_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    cfg = tmp_path / "udx.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/file.db"\n'
                   "[coordinator]\nconcurrency = 4\n")
    env_url = f"sqlite:///{tmp_path}/env.db"
    flag_url = f"sqlite:///{tmp_path}/flag.db"

    def source(key: str, *args: str, env: dict[str, str] | None = None) -> tuple[object, str]:
        e = _by_key(udx.json(*args, "config", "show", env=env))[key]
        return e["value"], e["source"]

    assert source("database.url")[1] == "default"
    assert source("database.url")[0].endswith("/data/udx/udx.sqlite3")  # type: ignore[union-attr]
    assert source("database.url", "--config", str(cfg)) == (f"sqlite:///{tmp_path}/file.db",
                                                             "file")
    with_env = {"UDX_DATABASE_URL": env_url, "UDX_COORDINATOR_CONCURRENCY": "6"}
    assert source("database.url", "--config", str(cfg), env=with_env) == (env_url, "environment")
    assert source("database.url", "--config", str(cfg), "--db", flag_url, env=with_env) == (
        flag_url, "flag")
    assert source("coordinator.concurrency", "--config", str(cfg)) == (4, "file")
    assert source("coordinator.concurrency", "--config", str(cfg), env=with_env) == (
        6, "environment")
    assert source("coordinator.concurrency") == (8, "default")


def test_show_refuses_a_bad_value_with_its_source(tmp_path: Path) -> None:
    udx = Udx(tmp_path)
    r = udx("config", "show", env={"UDX_SAGA_LEASE_SECS": "0"})
    assert_one_line_error(r, 2, "environment: [saga] lease_secs", "seconds")


def test_show_on_a_terminal_keeps_keys_whole(tmp_path: Path) -> None:
    cfg = tmp_path / "udx.toml"
    cfg.write_text("[coordinator]\nconcurrency = 4\n")
    for columns in ("80", "160"):
        env = clean_env(tmp_path, UDX_CONFIG=str(cfg), TTY_COMPATIBLE="1", COLUMNS=columns,
                        NO_COLOR="1")
        r = run_udx(["config", "show"], env)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout  # NO_COLOR: no escape at all
        flat = "".join(r.stdout.split())
        assert f"configuration({cfg})({len(KEYS)})" in flat  # the title, folded or not
        if columns == "160":
            assert "│coordinator.concurrency│4│sagas│file│" in flat
        for key in KEYS:
            assert key in r.stdout, (columns, key)  # never cut or wrapped
        if columns == "80":  # the unit and the file's path give way, never the key
            assert "left out to fit 80 columns" in r.stdout
