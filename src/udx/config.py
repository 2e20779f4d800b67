"""Configuration: defaults < TOML file < UDX_<SECTION>_<KEY> environment < command line.

Read with tomllib, written with tomli-w (`udx config init`). Unknown keys are an
error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from udx.domain.errors import ConfigError

SOURCES = ("db", "static", "dns")
ISOLATION_LEVELS = ("serializable", "repeatable_read", "read_committed")


@dataclass
class DatabaseSettings:
    url: str = ""  # empty: the embedded SQLite file in the user's data directory
    isolation: str = "serializable"  # PostgreSQL only


@dataclass
class CoordinatorSettings:
    concurrency: int = 8
    # The orphan sweep detaches an attachment nothing accounts for once it has
    # been seen orphaned this long (passes remember it in orphan_attachment).
    orphan_grace_secs: float = 600.0


@dataclass
class PantrySettings:
    source: str = "db"
    addresses: list[str] = field(default_factory=list)
    dns_zone: str = "control-plane.oxide.internal"
    dns_servers: list[str] = field(default_factory=list)
    request_timeout_secs: float = 10.0
    retry_budget_secs: float = 60.0


@dataclass
class SagaSettings:
    lease_secs: float = 30.0


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


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("udx")) / "config.toml"


def _coerce(section: str, key: str, value: Any, default: Any, origin: str) -> Any:
    where = f"{origin}: [{section}] {key}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if isinstance(default, int):
        try:
            if isinstance(value, (float, bool)):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a whole number, not {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, not {value!r}") from None
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
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key), origin))


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
    if not 1 <= s.coordinator.concurrency <= 256:
        raise ConfigError(
            f"[coordinator] concurrency must be 1..256, not {s.coordinator.concurrency}"
        )
    if not s.coordinator.orphan_grace_secs >= 0:
        raise ConfigError("[coordinator] orphan_grace_secs must be zero or more")
    for key in ("request_timeout_secs", "retry_budget_secs"):
        if not getattr(s.pantry, key) > 0:
            raise ConfigError(f"[pantry] {key} must be positive")
    if not s.saga.lease_secs > 0:
        raise ConfigError("[saga] lease_secs must be positive")
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
    if path.exists() or explicit:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        _apply(settings, data, str(path))
        settings.config_path = path
    env_data: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        for f in fields(getattr(settings, section)):
            key = f"UDX_{section.upper()}_{f.name.upper()}"
            if key in env:
                env_data.setdefault(section, {})[f.name] = env[key]
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
