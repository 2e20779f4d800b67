"""Configuration: defaults < TOML file < UDX_<SECTION>_<KEY> < command line."""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path

import pytest

from udx.config import Settings, default_config_path, load_settings, write_settings
from udx.domain.errors import ConfigError

FULL = """
[database]
url = "postgresql+psycopg://udx:hunter2@db.example/omicron"
isolation = "read_committed"
[coordinator]
concurrency = 4
[pantry]
source = "static"
addresses = ["10.0.0.1:17000", "[fd00::1]:17000"]
request_timeout_secs = 2.5
retry_budget_secs = 30
[saga]
lease_secs = 12
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def write(tmp_path: Path, text: str, name: str = "udx.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = load_settings(environ={})
    assert s.config_path is None
    assert s.coordinator.concurrency == 8
    assert s.pantry.source == "db" and s.pantry.addresses == []
    assert s.pantry.retry_budget_secs == 60 and s.saga.lease_secs == 30
    assert s.database.url == ""
    assert s.database_url.startswith("sqlite:///")
    assert str(tmp_path / "xdg-data") in s.database_url  # platformdirs, under XDG
    assert default_config_path() == tmp_path / "xdg-config" / "udx" / "config.toml"


def test_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    s = load_settings(path, environ={})
    assert s.config_path == path
    assert s.database.url == "postgresql+psycopg://udx:hunter2@db.example/omicron"
    assert s.database.isolation == "read_committed"
    assert s.coordinator.concurrency == 4
    assert s.pantry.addresses == ["10.0.0.1:17000", "[fd00::1]:17000"]
    assert s.pantry.request_timeout_secs == 2.5 and s.pantry.retry_budget_secs == 30.0
    assert s.saga.lease_secs == 12.0


def test_default_path_and_udx_config_env(tmp_path: Path) -> None:
    default = default_config_path()
    default.parent.mkdir(parents=True)
    default.write_text("[coordinator]\nconcurrency = 3\n")
    assert load_settings(environ={}).coordinator.concurrency == 3
    other = write(tmp_path, "[coordinator]\nconcurrency = 5\n")
    assert load_settings(environ={"UDX_CONFIG": str(other)}).coordinator.concurrency == 5


def test_precedence_env_over_file_and_command_line_over_both(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    env = {
        "UDX_COORDINATOR_CONCURRENCY": "16",
        "UDX_PANTRY_RETRY_BUDGET_SECS": "7.5",
        "UDX_PANTRY_ADDRESSES": "10.0.0.9:1, [fd00::9]:2",
        "UDX_DATABASE_URL": "sqlite:///from-env.sqlite3",
    }
    s = load_settings(path, environ=env)
    assert s.coordinator.concurrency == 16
    assert s.pantry.retry_budget_secs == 7.5
    assert s.pantry.addresses == ["10.0.0.9:1", "[fd00::9]:2"]
    assert s.database_url == "sqlite:///from-env.sqlite3"
    s = load_settings(path, environ=env, database_url="sqlite:///from-cli.sqlite3")
    assert s.database_url == "sqlite:///from-cli.sqlite3"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[coordinator]\nconcurency = 4\n", "'concurency'"),
        ("[coordnator]\nconcurrency = 4\n", "[coordnator]"),
        ("coordinator = 4\n", "must be a table"),
        ('[coordinator]\nconcurrency = "many"\n', "whole number"),
        ("[coordinator]\nconcurrency = 2.5\n", "whole number"),
        ("[coordinator]\nconcurrency = true\n", "whole number"),
        ("[coordinator]\nconcurrency = 0\n", "1..256"),
        ("[coordinator]\nconcurrency = 1000\n", "1..256"),
        ('[pantry]\nsource = "ldap"\n', "source"),
        ("[pantry]\naddresses = [1, 2]\n", "list of strings"),
        ('[pantry]\nsource = "static"\naddresses = ["10.0.0.1"]\n', "10.0.0.1"),
        ("[pantry]\nretry_budget_secs = 0\n", "retry_budget_secs"),
        ('[pantry]\nrequest_timeout_secs = "soon"\n', "must be a number"),
        ("[saga]\nlease_secs = -1\n", "lease_secs"),
        ("[database]\nurl = 5\n", "must be a string"),
        ('[database]\nisolation = "chaos"\n', "isolation"),
    ],
)
def test_invalid_config_is_a_config_error(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert needle in str(err.value)
    assert err.value.exit_code == 2


def test_bad_environment_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"UDX_COORDINATOR_CONCURRENCY": "lots"})
    assert "environment" in str(err.value) and "concurrency" in str(err.value)


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    cases = {
        "missing": (tmp_path / "nope.toml", "does not exist"),
        "directory": (tmp_path, "cannot read"),
        "not utf-8": (tmp_path / "latin1.toml", "cannot read"),
        "bad toml": (
            write(tmp_path, "[coordinator\nconcurrency = 4\n", "bad.toml"),
            "not valid TOML",
        ),
    }
    (tmp_path / "latin1.toml").write_bytes(b"[saga]\nlease_secs = 1 # caf\xe9\n")
    for path, needle in cases.values():
        with pytest.raises(ConfigError) as err:
            load_settings(path, environ={})
        assert needle in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError):
        load_settings(environ={"UDX_CONFIG": str(tmp_path / "nope.toml")})


def test_write_settings_round_trip(tmp_path: Path) -> None:
    src = load_settings(write(tmp_path, FULL), environ={})
    target = tmp_path / "out" / "config.toml"
    write_settings(src, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    data = tomllib.loads(target.read_text())
    assert set(data) == {"database", "coordinator", "pantry", "saga"}
    # Values other than the defaults are set; defaults are commented out.
    assert set(data["pantry"]) == {
        "source", "addresses", "request_timeout_secs", "retry_budget_secs"
    }
    assert data["database"]["url"] == src.database.url  # not masked in the file
    again = load_settings(target, environ={})
    for section in ("database", "coordinator", "pantry", "saga"):
        assert getattr(again, section) == getattr(src, section)
    with pytest.raises(ConfigError) as err:
        write_settings(Settings(), target)
    assert "already exists" in str(err.value)
    assert load_settings(target, environ={}).coordinator.concurrency == 4  # untouched
    write_settings(Settings(), target, overwrite=True)
    fresh = load_settings(target, environ={})
    assert fresh.coordinator.concurrency == 8
    assert fresh.database.url == ""  # the default: the embedded file, wherever it is then
    assert list(tmp_path.glob("out/*.tmp")) == []


def test_written_file_is_commented_and_loads_back_to_the_defaults(tmp_path: Path) -> None:
    """`udx config init`'s file: every key of every section with its meaning, unit
    and variable, commented out at its default; loaded, it is the defaults; with
    every "#key = value" line uncommented, it is still the defaults."""
    from udx.config import env_var, render_settings, setting_fields

    text = render_settings(Settings())
    target = write(tmp_path, text)
    loaded = load_settings(target, environ={})
    defaults = Settings()
    for section in ("database", "coordinator", "pantry", "saga"):
        assert getattr(loaded, section) == getattr(defaults, section)
    assert all(loaded.source_of(s, f.name).kind == "default" for s, f in setting_fields())
    lines = text.splitlines()
    section = None
    seen = []
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        m = re.fullmatch(r"#([a-z_]+) = .*", line)
        if m is None:
            continue
        key = m.group(1)
        seen.append((section, key))
        comment = []
        j = i - 1
        while j >= 0 and lines[j].startswith("# "):
            comment.insert(0, lines[j][2:])
            j -= 1
        said = " ".join(comment)
        f = dict((f.name, f) for s, f in setting_fields() if s == section)[key]
        assert f.metadata["doc"].split(";")[0][:30] in said, (section, key, said)
        assert env_var(section, key) in said, (section, key)
        if f.metadata.get("unit"):
            assert f.metadata["unit"] in said, (section, key, said)
    assert seen == [(s, f.name) for s, f in setting_fields()]
    uncommented = re.sub(r"(?m)^#([a-z_]+ = )", r"\1", text)
    every = load_settings(write(tmp_path, uncommented, "all.toml"), environ={})
    for section in ("database", "coordinator", "pantry", "saga"):
        assert getattr(every, section) == getattr(defaults, section)
    assert all(every.source_of(s, f.name).kind == "file" for s, f in setting_fields())


def test_every_setting_has_a_meaning() -> None:
    """A key added without its one-line meaning fails here (and `config init`
    refuses to write a file without it)."""
    from dataclasses import field, make_dataclass

    import udx.config as config
    from udx.config import render_settings, setting_fields

    for section, f in setting_fields():
        doc = f.metadata.get("doc", "")
        assert doc and doc[0].isupper() and "\n" not in doc, (section, f.name)
        assert not doc.endswith("."), (section, f.name)  # the writer adds the stop
    documented = field(default=1.0, metadata={"doc": "Documented"})
    undocumented = make_dataclass(
        "SagaSettings", [("lease_secs", float, documented), ("new_key", int, field(default=3))]
    )
    saved = config._SECTION_TYPES["saga"]
    config._SECTION_TYPES["saga"] = undocumented
    try:
        with pytest.raises(ValueError, match="new_key has no doc"):
            render_settings(Settings())
    finally:
        config._SECTION_TYPES["saga"] = saved


def test_sources_of_each_value(tmp_path: Path) -> None:
    from udx.config import Source

    path = write(tmp_path, "[coordinator]\nconcurrency = 4\n[saga]\nlease_secs = 9\n")
    env = {"UDX_SAGA_LEASE_SECS": "7", "UDX_PANTRY_DNS_ZONE": "z.example"}
    s = load_settings(path, environ=env, database_url="sqlite:////tmp/x.sqlite3")
    assert s.source_of("coordinator", "concurrency") == Source("file", str(path))
    assert s.source_of("saga", "lease_secs") == Source("environment", "UDX_SAGA_LEASE_SECS")
    assert s.saga.lease_secs == 7.0
    assert s.source_of("pantry", "dns_zone") == Source("environment", "UDX_PANTRY_DNS_ZONE")
    assert s.source_of("database", "url") == Source("flag", "--db")
    assert s.source_of("pantry", "source") == Source("default")


def test_masked_toml_dict(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), environ={})
    masked = s.to_toml_dict()
    assert "hunter2" not in str(masked)
    assert masked["database"]["url"] == "postgresql+psycopg://udx:***@db.example/omicron"
    assert "hunter2" in s.to_toml_dict(mask=False)["database"]["url"]


def test_static_source_needs_addresses(tmp_path) -> None:
    from udx.config import load_settings
    from udx.domain.errors import ConfigError

    cfg = tmp_path / "udx.toml"
    cfg.write_text('[pantry]\nsource = "static"\n')
    with pytest.raises(ConfigError, match="needs addresses"):
        load_settings(cfg, environ={})


# --- numbers: finite, in range, with the unit in the error (issue 14 item 8) --------------


@pytest.mark.parametrize(
    ("key", "toml_value"),
    [
        ("[saga]\nlease_secs", "inf"),
        ("[saga]\nlease_secs", "nan"),
        ("[saga]\nlease_secs", "-inf"),
        ("[saga]\nlease_secs", "1e300"),
        ("[pantry]\nretry_budget_secs", "1e300"),
        ("[pantry]\nrequest_timeout_secs", "inf"),
        ("[database]\nbusy_timeout_secs", "nan"),
        ("[database]\nbusy_timeout_secs", "-1"),
    ],
)
def test_file_numbers_must_be_finite_and_in_range(
    tmp_path: Path, key: str, toml_value: str
) -> None:
    path = write(tmp_path, f"{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert "seconds" in str(err.value), err.value
    assert key.split("\n")[1] in str(err.value)


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("UDX_SAGA_LEASE_SECS", "inf", "seconds"),
        ("UDX_SAGA_LEASE_SECS", "nan", "must be a number"),
        ("UDX_SAGA_LEASE_SECS", "infinity", "must be a number"),
        ("UDX_SAGA_LEASE_SECS", "1e300", "seconds"),
        ("UDX_PANTRY_RETRY_BUDGET_SECS", "\u0661\u0662", "must be a number"),  # Arabic-Indic digits
        ("UDX_PANTRY_REQUEST_TIMEOUT_SECS", "\uff11\uff10", "must be a number"),  # full-width
        ("UDX_PANTRY_REQUEST_TIMEOUT_SECS", "1_0", "must be a number"),
        ("UDX_COORDINATOR_CONCURRENCY", "\u0661\u0662", "whole number"),
        ("UDX_COORDINATOR_CONCURRENCY", "1e3", "whole number"),
        ("UDX_COORDINATOR_CONCURRENCY", "99999999999999999999", "sagas"),
        ("UDX_DATABASE_BUSY_TIMEOUT_SECS", "7200", "seconds"),
    ],
)
def test_environment_numbers_must_be_ascii_finite_and_in_range(
    var: str, value: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={var: value})
    assert needle in str(err.value) and "environment" in str(err.value), err.value


def test_numbers_in_range_are_taken(tmp_path: Path) -> None:
    s = load_settings(
        environ={
            "UDX_SAGA_LEASE_SECS": " 1.5e1 ",
            "UDX_COORDINATOR_CONCURRENCY": "+16",
            "UDX_DATABASE_BUSY_TIMEOUT_SECS": "0",
        }
    )
    assert s.saga.lease_secs == 15.0 and s.coordinator.concurrency == 16
    assert s.database.busy_timeout_secs == 0.0
    assert load_settings(environ={}).database.busy_timeout_secs == 30.0


# --- unknown UDX_* variables are refused, like unknown file keys -----------------------------


def test_unknown_environment_variable_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"UDX_PANTRY_RETRY_BUDGET": "5"})
    assert "UDX_PANTRY_RETRY_BUDGET" in str(err.value)
    assert "did you mean UDX_PANTRY_RETRY_BUDGET_SECS?" in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match="unknown variable UDX_FROB"):
        load_settings(environ={"UDX_FROB": "1"})


def test_known_non_setting_variables_are_accepted(tmp_path: Path) -> None:
    other = write(tmp_path, "[coordinator]\nconcurrency = 5\n")
    s = load_settings(environ={"UDX_REQUIRE_POSTGRES": "1", "UDX_CONFIG": str(other)})
    assert s.coordinator.concurrency == 5
    # Not udx's prefix: click's completion variable and look-alikes are left alone.
    load_settings(environ={"_UDX_COMPLETE": "bash_source", "UDXX_A": "1", "MY_UDX_B": "2"})


def test_every_udx_variable_the_project_names_is_known() -> None:
    """Any UDX_* name in the code, tests, scripts or README must be a setting or in
    OTHER_ENV_VARS; otherwise setting it would be refused as a typo."""
    import re

    from udx.config import OTHER_ENV_VARS, setting_env_vars

    root = Path(__file__).resolve().parents[1]
    known = set(setting_env_vars()) | set(OTHER_ENV_VARS)
    found: dict[str, str] = {}
    files = [root / "README.md", *root.glob("docs/**/*.md")]
    for sub in ("src", "tests", "scripts", "bench", ".ci"):
        files += [p for p in (root / sub).rglob("*") if p.is_file() and p.suffix in (".py", "")]
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in re.finditer(r"(?<![A-Za-z0-9_])UDX_[A-Z0-9_]*[A-Z0-9]", text):
            found.setdefault(m.group(0), str(p.relative_to(root)))
    # Names tests use on purpose as typos.
    typos = {"UDX_PANTRY_RETRY_BUDGET", "UDX_FROB"}
    unknown = {k: v for k, v in found.items() if k not in known and k not in typos}
    assert not unknown, f"UDX_* names that udx would refuse: {unknown}"


@pytest.mark.parametrize("doc", ["README.md", "docs/DESIGN.md"])
def test_the_docs_config_example_has_every_key(doc: str, tmp_path: Path) -> None:
    """The example config in the docs lists exactly the keys udx.config has, with
    values the loader takes (a key added or renamed there fails here)."""
    from udx.config import setting_fields

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "[coordinator]" in b and "[saga]" in b)
    data = tomllib.loads(block)
    keys = [f"{section}.{key}" for section, values in data.items() for key in values]
    assert sorted(keys) == sorted(f"{s}.{f.name}" for s, f in setting_fields())
    load_settings(write(tmp_path, block), environ={})
