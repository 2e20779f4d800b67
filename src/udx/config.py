"""Configuration: defaults < TOML file < UDX_<SECTION>_<KEY> environment < command line.

Read with tomllib, written with tomli-w (`udx config init`). Unknown keys, and
unknown UDX_* environment variables, are an error, so a typo never silently falls
back to a default. Every number is checked finite and within its range.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from udx.domain.errors import ConfigError

SOURCES = ("db", "static", "dns")

# UDX_* variables that are not settings: they are known names, never "unknown".
OTHER_ENV_VARS = {
    "UDX_CONFIG": "the config file (also --config)",
    "UDX_REQUIRE_POSTGRES": "tests: fail instead of skipping when PostgreSQL is missing",
}


def number(
    default: float, lo: float, hi: float, unit: str, doc: str, *, lo_open: bool = False
) -> Any:
    """A numeric setting with its range, unit and meaning, checked by `_coerce` and
    `_validate`; `udx config init` writes `doc` above the key."""
    return field(default=default, metadata={"range": (lo, hi, lo_open), "unit": unit, "doc": doc})


def text(default: str, doc: str, *, unit: str = "") -> Any:
    """A string setting and its meaning (`udx config init` writes `doc` above it)."""
    return field(default=default, metadata={"unit": unit, "doc": doc})


def text_list(doc: str) -> Any:
    """A list-of-strings setting (default empty) and its meaning."""
    return field(default_factory=list, metadata={"unit": "", "doc": doc})


ISOLATION_LEVELS = ("serializable", "repeatable_read", "read_committed")


# Each key's `doc` is the one-line meaning `udx config init`, `udx config show` and
# the man pages print: this file is the only list of keys.
@dataclass
class DatabaseSettings:
    url: str = text(
        "", "Database URL (postgresql+psycopg://USER@HOST/DB); empty: the embedded SQLite "
        "file in the user's data directory; --db wins"
    )
    isolation: str = text(
        "serializable",
        "PostgreSQL transaction isolation: serializable | repeatable_read | read_committed",
    )
    busy_timeout_secs: float = number(
        30.0, 0.0, 3600.0, "seconds",
        "SQLite: how long a write waits for another process's write lock before exit 3",
    )


@dataclass
class CoordinatorSettings:
    concurrency: int = number(8, 1, 256, "sagas", "Sagas at once in a pass; --concurrency wins")
    # One process drives ~150-200 sagas/s before its GIL is the limit (README,
    # "Performance"); a large pass splits its sagas among worker processes.
    processes: int = number(
        0, 0, 64, "processes",
        "Worker processes for a pass's sagas (0: one per core, at most 4, on "
        "PostgreSQL; 1: none); a pass under 200 sagas runs in one; --processes wins",
    )
    # The orphan sweep detaches an attachment nothing accounts for once it has
    # been seen orphaned this long (passes remember it in orphan_attachment).
    orphan_grace_secs: float = number(
        600.0, 0.0, 2592000.0, "seconds",
        "Detach a pantry attachment nothing accounts for once seen orphaned this long",
    )
    # A bounded pass starts no saga after this long / more than this many; 0: no bound.
    deadline_secs: float = number(
        0.0, 0.0, 86400.0, "seconds",
        "A pass starts no saga after this long; 0: no bound; --deadline wins",
    )
    max_sagas: int = number(
        0, 0, 10_000_000, "sagas",
        "A pass starts at most this many sagas; 0: no limit; --max-sagas wins",
    )
    prune_older_than: str = text(
        "", "After each pass, prune done sagas older than this (30d, 12h); empty: never",
        unit="duration",
    )


@dataclass
class PantrySettings:
    source: str = text(
        "db", 'Where the pantries come from: "db" (the pantry table) | "static" '
        '(addresses) | "dns" (SRV records in dns_zone)'
    )
    addresses: list[str] = text_list(  # noqa: RUF009 (a field with a default_factory)
        'With source = "static": the pantries, "ip:port" or "[ipv6]:port"'
    )
    dns_zone: str = text(
        "control-plane.oxide.internal", 'With source = "dns": SRV _crucible-pantry._tcp.<zone>'
    )
    dns_servers: list[str] = text_list(  # noqa: RUF009 (a field with a default_factory)
        'With source = "dns": the DNS servers to ask, "ip:port" or "[ipv6]:port"'
    )
    request_timeout_secs: float = number(
        10.0, 0.0, 3600.0, "seconds",
        "One pantry HTTP request, wall-clock, the whole answer included", lo_open=True,
    )
    retry_budget_secs: float = number(
        60.0, 0.0, 86400.0, "seconds",
        "Wall-clock time one saga node's pantry calls may spend, retries included",
        lo_open=True,
    )
    slow_status_secs: float = number(
        2.0, 0.0, 3600.0, "seconds",
        "A pantry answering its status call slower than this is degraded: a warning",
        lo_open=True,
    )


@dataclass
class SagaSettings:
    lease_secs: float = number(
        30.0, 0.0, 86400.0, "seconds",
        "How long a dead process keeps its sagas before another process adopts them",
        lo_open=True,
    )


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from: "default", "file" (name: its path),
    "environment" (name: the variable) or "flag" (name: the option)."""

    kind: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" if self.name else self.kind


DEFAULT = Source("default")


@dataclass
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    coordinator: CoordinatorSettings = field(default_factory=CoordinatorSettings)
    pantry: PantrySettings = field(default_factory=PantrySettings)
    saga: SagaSettings = field(default_factory=SagaSettings)
    config_path: Path | None = None  # the file these came from, if any
    # "section.key" -> where its value came from; absent: the default.
    sources: dict[str, Source] = field(default_factory=dict, compare=False, repr=False)

    def source_of(self, section: str, key: str) -> Source:
        return self.sources.get(f"{section}.{key}", DEFAULT)

    @property
    def database_url(self) -> str:
        from udx.db.urls import default_database_url

        return self.database.url or default_database_url()

    def to_toml_dict(self, *, mask: bool = True) -> dict[str, Any]:
        from udx.db.urls import mask_url

        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out["database"]["url"] = self.database_url
        if mask:
            out["database"]["url"] = mask_url(out["database"]["url"])
        return out


SECTIONS = ("database", "coordinator", "pantry", "saga")
_SECTION_TYPES: dict[str, type] = {
    "database": DatabaseSettings,
    "coordinator": CoordinatorSettings,
    "pantry": PantrySettings,
    "saga": SagaSettings,
}


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("udx")) / "config.toml"


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _num(x: float) -> str:
    """2592000, not 2.592e+06; 0.5 as 0.5."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _span(f: Field[Any] | None) -> str:
    """ "1..256 sagas", "more than 0 and at most 60 seconds", or "" without a range."""
    spec = f.metadata.get("range") if f is not None else None
    if f is None or spec is None:
        return ""
    lo, hi, lo_open = spec
    span = f"more than {_num(lo)} and at most {_num(hi)}" if lo_open else f"{_num(lo)}..{_num(hi)}"
    return f"{span} {f.metadata.get('unit', '')}".strip()


def _check_range(where: str, value: float, f: Field[Any] | None) -> None:
    spec = f.metadata.get("range") if f is not None else None
    if spec is None:
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        return
    lo, hi, lo_open = spec
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        raise ConfigError(f"{where} must be {_span(f)}, not {value!r}")


def _coerce(
    section: str, key: str, value: Any, default: Any, origin: str, f: Field[Any] | None = None
) -> Any:
    where = f"{origin}: [{section}] {key}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if isinstance(default, int):
        # Text must be ASCII digits: int() would take "١٢" and "1_000" too.
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            number_value = int(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            number_value = value
        else:
            span = f" ({_span(f)})" if _span(f) else ""
            raise ConfigError(f"{where} must be a whole number{span}, not {value!r}")
        _check_range(where, number_value, f)
        return number_value
    if isinstance(default, float):
        # float() would take "inf", "nan", "1_0" and non-ASCII digits; TOML has inf/nan.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            float_value = float(value.strip())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            float_value = float(value)
        else:
            span = f" ({_span(f)})" if _span(f) else ""
            raise ConfigError(f"{where} must be a number{span}, not {value!r}")
        _check_range(where, float_value, f)
        return float_value
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where} must be a list of strings, not {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return value


def _apply(
    settings: Settings, data: dict[str, Any], origin: str, source: Callable[[str, str], Source]
) -> None:
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section [{section}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        obj = getattr(settings, section)
        known = {f.name: f for f in fields(obj)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{origin}: unknown key {key!r} in [{section}] (known: {', '.join(known)})"
                )
            f = known[key]
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key), origin, f))
            settings.sources[f"{section}.{key}"] = source(section, key)


def _validate(s: Settings) -> None:
    if s.pantry.source not in SOURCES:
        raise ConfigError(
            f"[pantry] source must be one of {', '.join(SOURCES)}, not {s.pantry.source!r}"
        )
    if s.database.isolation not in ISOLATION_LEVELS:
        raise ConfigError(
            f"[database] isolation must be one of {', '.join(ISOLATION_LEVELS)}, "
            f"not {s.database.isolation!r}"
        )
    for section in SECTIONS:  # defaults and values set in code, not only parsed ones
        obj = getattr(s, section)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check_range(f"[{section}] {f.name}", value, f)
    if s.coordinator.prune_older_than:
        from udx.domain.errors import BadInput
        from udx.domain.times import parse_duration

        try:
            parse_duration(s.coordinator.prune_older_than, "prune_older_than")
        except BadInput as err:
            raise ConfigError(f"[coordinator] {err}") from None
    if s.pantry.source == "static" and not s.pantry.addresses:
        raise ConfigError(
            '[pantry] source = "static" needs addresses = ["ip:port", ...] '
            "(an empty list would mean every pantry is expunged)"
        )
    if s.pantry.source == "static":
        from udx.domain.address import PantryAddress
        from udx.domain.errors import BadInput

        for addr in s.pantry.addresses:
            try:
                PantryAddress.parse(addr)
            except BadInput as err:
                raise ConfigError(f"[pantry] addresses: {err}") from None


def _shown_path(path: Path, limit: int = 200) -> str:
    """A path for a one-line message: very long ones are cut, with their length."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...({len(text)} characters)"


def setting_env_vars() -> dict[str, tuple[str, str]]:
    """UDX_<SECTION>_<KEY> for every setting: variable -> (section, key)."""
    out: dict[str, tuple[str, str]] = {}
    for section in SECTIONS:
        for f in fields(_SECTION_TYPES[section]):
            out[env_var(section, f.name)] = (section, f.name)
    return out


def env_var(section: str, key: str) -> str:
    """The environment variable of a setting: UDX_<SECTION>_<KEY>."""
    return f"UDX_{section.upper()}_{key.upper()}"


def _refuse_unknown_env(env: dict[str, str], known: set[str]) -> None:
    """An unknown UDX_* variable is a typo (as an unknown file key is): refuse it."""
    unknown = sorted(k for k in env if k.startswith("UDX_") and k not in known)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"environment: unknown variable {name}{more}: {hint}")


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    database_url: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Effective settings. `config_path` None means $UDX_CONFIG or the default
    path, which may be absent; an explicitly named file must exist."""
    env = dict(os.environ if environ is None else environ)
    settings = Settings()
    explicit = config_path is not None or bool(env.get("UDX_CONFIG"))
    path = Path(config_path or env.get("UDX_CONFIG") or default_config_path()).expanduser()
    shown = _shown_path(path)
    try:
        present = path.exists()
    except OSError as err:  # a name too long, a path through a file
        raise ConfigError(f"cannot read config file {shown}: {err.strerror or err}") from None
    if present or explicit:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {shown} does not exist") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {shown}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"cannot read config file {shown}: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {shown} is not valid TOML: {err}") from None
        _apply(settings, data, str(path), lambda _s, _k: Source("file", str(path)))
        settings.config_path = path
    env_data: dict[str, dict[str, Any]] = {}
    names = setting_env_vars()
    for key, (section, name) in names.items():
        if key in env:
            env_data.setdefault(section, {})[name] = env[key]
    _refuse_unknown_env(env, set(names) | set(OTHER_ENV_VARS))
    _apply(
        settings, env_data, "environment", lambda s, k: Source("environment", env_var(s, k))
    )
    if database_url:
        settings.database.url = database_url
        settings.sources["database.url"] = Source("flag", "--db")
    _validate(settings)
    return settings


def setting_fields() -> list[tuple[str, Field[Any]]]:
    """Every setting as (section, field), in file order: the one list of keys."""
    return [(section, f) for section in SECTIONS for f in fields(_SECTION_TYPES[section])]


def describe(settings: Settings, *, mask: bool = True) -> list[dict[str, Any]]:
    """Every effective setting and where it came from, for `udx config show`:
    {"key": "section.key", "value", "unit" (or null), "source": default | file |
    environment | flag, "from": the file's path, the variable or the option (or null)}."""
    from udx.db.urls import mask_url

    out = []
    for section, f in setting_fields():
        value = getattr(getattr(settings, section), f.name)
        if (section, f.name) == ("database", "url"):
            value = settings.database_url
            value = mask_url(value) if mask else value
        source = settings.source_of(section, f.name)
        out.append(
            {
                "key": f"{section}.{f.name}",
                "value": value,
                "unit": f.metadata.get("unit") or None,
                "source": source.kind,
                "from": source.name,
            }
        )
    return out


def _toml_line(key: str, value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({key: value}).strip()


def _comment(doc: str, f: Field[Any], env: str) -> list[str]:
    """The comment lines above a key: its meaning, range and unit, its variable."""
    import textwrap

    span = _span(f)
    unit = f.metadata.get("unit", "")
    if span:
        tail = f" ({span})"
    elif unit:
        tail = f" (a {unit})"
    else:
        tail = ""
    text = f"{doc}{tail}. Environment: {env}."
    return ["# " + line for line in textwrap.wrap(text, 77, break_on_hyphens=False)]


HEADER = """\
# udx configuration (TOML), written by `udx config init`.
#
# Every setting is here with its meaning, unit and default. A line starting with
# "#key = value" is the default, commented out: remove the "#" and change the
# value to set it. Each setting can also be set by the environment variable
# named with it, which wins over this file; command-line options win over both.
# Unknown keys and unknown UDX_* variables are refused. `udx config show` prints
# the effective value of every setting and where it came from.
"""


def render_settings(settings: Settings) -> str:
    """A commented config file: every key of every section with its meaning, range
    and unit and its environment variable; a key at its default commented out (so
    a later udx's default applies), any other set. Loads back to `settings`."""
    defaults = Settings()
    lines = [HEADER.rstrip("\n")]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for f in fields(_SECTION_TYPES[section]):
            doc = f.metadata.get("doc")
            if not doc:
                raise ValueError(f"[{section}] {f.name} has no doc: add one in udx.config")
            value = getattr(getattr(settings, section), f.name)
            default = getattr(getattr(defaults, section), f.name)
            lines += ["", *_comment(doc, f, env_var(section, f.name))]
            if value == default:
                lines.append("#" + _toml_line(f.name, default))
            else:
                lines.append(f"# Default: {_toml_line(f.name, default)}")
                lines.append(_toml_line(f.name, value))
    return "\n".join(lines) + "\n"


def write_settings(settings: Settings, path: Path, *, overwrite: bool = False) -> None:
    """Write a commented config file with every key (atomic; mode 0600, it may hold
    a database password; refuses to replace a file unless `overwrite`)."""
    try:
        exists = path.exists() or path.is_symlink()
    except OSError as err:
        raise ConfigError(f"cannot write the config file {_shown_path(path)}: "
                          f"{err.strerror or err}") from None
    if exists and not overwrite:
        raise ConfigError(f"config file {path} already exists (use --force to overwrite)")
    body = render_settings(settings)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body)
        os.chmod(tmp, 0o600)  # an old .tmp may have had another mode
        tmp.replace(path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the config file {path}: {err.strerror or err}") from None
