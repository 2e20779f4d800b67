"""Configuration: defaults < TOML file < UDX_<SECTION>_<KEY> environment < command line.

Read with tomllib, written with tomli-w (`udx config init`). Unknown keys, and
unknown UDX_* environment variables, are an error, so a typo never silently falls
back to a default. Every number is checked finite and within its range.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
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


def number(default: float, lo: float, hi: float, unit: str, *, lo_open: bool = False) -> Any:
    """A numeric setting with its range and unit, checked by `_coerce` and `_validate`."""
    return field(default=default, metadata={"range": (lo, hi, lo_open), "unit": unit})
ISOLATION_LEVELS = ("serializable", "repeatable_read", "read_committed")


@dataclass
class DatabaseSettings:
    url: str = ""  # empty: the embedded SQLite file in the user's data directory
    isolation: str = "serializable"  # PostgreSQL only
    # SQLite: how long a write waits for another process's write lock before exit 3.
    busy_timeout_secs: float = number(30.0, 0.0, 3600.0, "seconds")


@dataclass
class CoordinatorSettings:
    concurrency: int = number(8, 1, 256, "sagas")
    # The orphan sweep detaches an attachment nothing accounts for once it has
    # been seen orphaned this long (passes remember it in orphan_attachment).
    orphan_grace_secs: float = number(600.0, 0.0, 2592000.0, "seconds")
    # A bounded pass starts no saga after this long / more than this many; 0: no bound.
    deadline_secs: float = number(0.0, 0.0, 86400.0, "seconds")
    max_sagas: int = number(0, 0, 10_000_000, "sagas")
    prune_older_than: str = ""  # after a pass, prune history older than this; "": never


@dataclass
class PantrySettings:
    source: str = "db"
    addresses: list[str] = field(default_factory=list)
    dns_zone: str = "control-plane.oxide.internal"
    dns_servers: list[str] = field(default_factory=list)
    request_timeout_secs: float = number(10.0, 0.0, 3600.0, "seconds", lo_open=True)
    retry_budget_secs: float = number(60.0, 0.0, 86400.0, "seconds", lo_open=True)
    slow_status_secs: float = number(2.0, 0.0, 3600.0, "seconds", lo_open=True)


@dataclass
class SagaSettings:
    lease_secs: float = number(30.0, 0.0, 86400.0, "seconds", lo_open=True)


@dataclass
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    coordinator: CoordinatorSettings = field(default_factory=CoordinatorSettings)
    pantry: PantrySettings = field(default_factory=PantrySettings)
    saga: SagaSettings = field(default_factory=SagaSettings)
    config_path: Path | None = None  # the file these came from, if any

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


def _span(f: Field[Any] | None) -> str:
    """ "1..256 sagas", "more than 0 and at most 60 seconds", or "" without a range."""
    spec = f.metadata.get("range") if f is not None else None
    if f is None or spec is None:
        return ""
    lo, hi, lo_open = spec
    span = f"more than {lo:g} and at most {hi:g}" if lo_open else f"{lo:g}..{hi:g}"
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


def _apply(settings: Settings, data: dict[str, Any], origin: str) -> None:
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
            out[f"UDX_{section.upper()}_{f.name.upper()}"] = (section, f.name)
    return out


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
        _apply(settings, data, str(path))
        settings.config_path = path
    env_data: dict[str, dict[str, Any]] = {}
    names = setting_env_vars()
    for key, (section, name) in names.items():
        if key in env:
            env_data.setdefault(section, {})[name] = env[key]
    _refuse_unknown_env(env, set(names) | set(OTHER_ENV_VARS))
    _apply(settings, env_data, "environment")
    if database_url:
        settings.database.url = database_url
    _validate(settings)
    return settings


def write_settings(settings: Settings, path: Path, *, overwrite: bool = False) -> None:
    """Write a config file with every key (atomic; refuses to clobber)."""
    import tomli_w

    if path.exists() and not overwrite:
        raise ConfigError(f"config file {path} already exists (use --force to overwrite)")
    data = settings.to_toml_dict(mask=False)
    if not settings.database.url:
        data["database"]["url"] = settings.database_url
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
        os.chmod(tmp, 0o600)  # it may hold a database password
        tmp.replace(path)
    except OSError as err:
        raise ConfigError(f"cannot write the config file {path}: {err.strerror or err}") from None
