"""The daemon's configuration: one human-editable TOML file, validated with pydantic.

:func:`load_config` reads ``$PYRA_HOME/config.toml`` (a missing file means all defaults) and
raises :class:`~pyra_client.errors.ConfigError` naming every bad key; the daemon exits with
status 78 on it, so a service manager does not restart-loop. :func:`save_config` writes the
file atomically with mode 0600.

Secrets never live here: provider keys are in the vault (or, until set there, in the
environment variable named by ``llm.api_key_env``).
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
import tomli_w

from pyra_client.errors import ConfigError
from pyra_client.providers import PROVIDERS

__all__ = [
    "Config",
    "DaemonConfig",
    "LLMConfig",
    "load_config",
    "save_config",
    "set_key",
]

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are Pyra, a personal assistant running on the user's own machine. Be concise and "
    "direct. Use tools when they help; never invent tool results."
)


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(_Section):
    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    #: Environment variable holding the key, used when the vault has no ``provider:<id>``.
    api_key_env: str | None = None
    timeout: float = pydantic.Field(default=120.0, gt=0, le=3600)
    #: Retries of rate-limited or failed calls, inside litellm.
    retries: int = pydantic.Field(default=2, ge=0, le=10)
    #: History sent with each turn is trimmed (oldest turns first) to this many tokens.
    history_tokens: int = pydantic.Field(default=24_000, ge=256)
    max_tool_rounds: int = pydantic.Field(default=10, ge=1, le=100)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float | None = pydantic.Field(default=None, ge=0, le=2)

    @pydantic.field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        if value is not None and value not in PROVIDERS:
            known = ", ".join(sorted(PROVIDERS))
            raise ValueError(f"unknown provider {value!r}; known: {known}")
        return value

    @pydantic.field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class DaemonConfig(_Section):
    transport: Literal["unix", "tcp"] = "unix"
    #: Explicit Unix socket path (default: see ``pyra_client.paths.default_socket_path``).
    socket: str | None = None
    #: Loopback TCP port for ``transport = "tcp"``; 0 picks a free one.
    tcp_port: int = pydantic.Field(default=0, ge=0, le=65535)
    #: Seconds a SIGTERM waits for running turns before cancelling them.
    shutdown_grace: float = pydantic.Field(default=10.0, ge=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Import litellm in the background right after start (first answer ~1.5 s sooner).
    warm_up: bool = True


class Config(_Section):
    llm: LLMConfig = LLMConfig()
    daemon: DaemonConfig = DaemonConfig()


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}"


def load_config(path: Path) -> Config:
    """Read and validate *path*; a missing file gives the defaults."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", path=str(path)) from exc
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [_describe(error) for error in exc.errors()]
        raise ConfigError(
            f"invalid config {path}: " + "; ".join(errors), path=str(path), errors=errors
        ) from exc


def save_config(config: Config, path: Path) -> None:
    """Write *config* to *path* atomically, mode 0600, omitting unset values."""
    data = config.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    text = (
        "# Pyra configuration. Edit freely; `pyra doctor` checks it. Secrets belong in the\n"
        "# vault (`pyra vault set`), never in this file.\n" + tomli_w.dumps(data)
    )
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def set_key(config: Config, dotted: str, value: Any) -> Config:
    """A copy of *config* with ``section.key`` set to *value* (validated)."""
    section_name, _, key = dotted.partition(".")
    data = config.model_dump(mode="json")
    if section_name not in data or key not in data[section_name]:
        raise ConfigError(f"unknown config key {dotted!r}", key=dotted)
    data[section_name][key] = value
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [_describe(error) for error in exc.errors()]
        raise ConfigError("; ".join(errors), key=dotted, errors=errors) from exc
