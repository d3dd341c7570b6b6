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
import re
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
    "GatePlatformConfig",
    "GatekeeperConfig",
    "LLMConfig",
    "PluginsConfig",
    "ToolPolicy",
    "ToolsConfig",
    "get_key",
    "load_config",
    "parse_config",
    "save_config",
    "set_key",
    "write_config_text",
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

    @pydantic.field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        # The message never repeats the value: a key pasted here by mistake is a secret.
        if value is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) is None:
            raise ValueError(
                "must name an environment variable (like OPENAI_API_KEY), not hold a key; "
                "store keys with `pyra vault set provider:<id>`"
            )
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
    #: Supervisor testing mode: no back-off between restarts of a crashed background task
    #: (also set by ``PYRA_SUPERVISOR_TESTING=1``). For tests, never for real use.
    supervisor_testing: bool = False


class PluginsConfig(_Section):
    """``[plugins]``: which plugins run; each plugin's own settings are ``[plugins.<name>]``."""

    # A plugin's table (``[plugins.weather]``) arrives as an extra field holding a dict.
    model_config = pydantic.ConfigDict(extra="allow", validate_assignment=True)

    #: Installed plugins that stay off (install = active otherwise).
    disabled: list[str] = []
    #: Seconds a plugin may take to import and to run its ``setup``.
    load_timeout: float = pydantic.Field(default=10.0, gt=0, le=300)

    @pydantic.model_validator(mode="after")
    def _tables_only(self) -> PluginsConfig:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
                    f"unknown key plugins.{key}; a plugin's settings go in a [plugins.{key}] table"
                )
        return self

    def section(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table (empty when absent)."""
        value = (self.model_extra or {}).get(name)
        return dict(value) if isinstance(value, dict) else {}


ToolPolicy = Literal["ask", "allow", "deny"]


class ToolsConfig(_Section):
    """``[tools]``: how tool calls are gated (see ``pyra_daemon.tools``).

    ``[tools.policy]`` maps a tool name to ``ask`` (ask the person every time, even with an
    always-rule), ``allow`` (run without asking; still asked in a tainted conversation unless
    the tool is read-only) or ``deny``. Unlisted tools: read-only ones run, always-rules apply,
    everything else is asked.
    """

    policy: dict[str, ToolPolicy] = {}
    #: Tools whose results bring outside content (web pages, command output) into a
    #: conversation and so taint it, like any result the injection scanner flags.
    taint_sources: list[str] = ["fetch_url", "run_command"]
    #: Seconds an approval request waits for an answer before it is denied.
    approval_timeout: float = pydantic.Field(default=120.0, gt=0, le=86_400)
    #: Bytes of a tool result passed to the model; the rest is cut and the cut is said.
    max_result_bytes: int = pydantic.Field(default=32 * 1024, ge=1024, le=1024 * 1024)


class GatePlatformConfig(_Section):
    """``[gatekeeper.<platform>]``: who may talk to that bot (see ``pyra_daemon.gatekeeper``)."""

    #: Stable numeric platform user ids (never usernames: those change hands).
    allow: list[str] = []
    #: Where approval requests of other frontends (a cron job's ``pyra ask``) are sent.
    approver_chat: str | None = None
    #: Ignore groups and channels (only one-to-one chats).
    private_only: bool = True
    #: The one fixed reply to a sender not on the list; ``""`` stays silent.
    refusal: str = "Sorry, this is a private assistant."
    #: Ask allowed senders for the shared passphrase before they may talk.
    challenge: bool = True
    #: Seconds of silence after which the passphrase is asked again (0: never).
    idle_challenge_after: float = pydantic.Field(default=86_400.0, ge=0)
    #: Wrong passphrases in a row before the sender is locked out.
    max_failures: int = pydantic.Field(default=5, ge=1, le=100)
    #: Seconds a lockout lasts (0: until lifted with ``pyra setup telegram --unlock ID``).
    lockout: float = pydantic.Field(default=3600.0, ge=0)
    #: Messages per sender and hour (0: no limit).
    rate_limit: int = pydantic.Field(default=20, ge=0)

    @pydantic.field_validator("allow", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        # TOML has them as numbers (``allow = [12345]``); compared as text everywhere.
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) else item for item in value]
        return value

    @pydantic.field_validator("approver_chat", mode="before")
    @classmethod
    def _chat_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class GatekeeperConfig(_Section):
    """``[gatekeeper]``: one table per messaging platform."""

    telegram: GatePlatformConfig = GatePlatformConfig()
    matrix: GatePlatformConfig = GatePlatformConfig()
    signal: GatePlatformConfig = GatePlatformConfig()


class Config(_Section):
    llm: LLMConfig = LLMConfig()
    daemon: DaemonConfig = DaemonConfig()
    plugins: PluginsConfig = PluginsConfig()
    tools: ToolsConfig = ToolsConfig()
    gatekeeper: GatekeeperConfig = GatekeeperConfig()


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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not valid UTF-8", path=str(path)) from exc
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    """Validate the TOML *text* of a config file (*path* names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
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
    write_config_text(text, path)


def write_config_text(text: str, path: Path) -> None:
    """Replace *path* with *text* so that a crash leaves the old or the new file (mode 0600)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # exactly 0600, whatever the file was before
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _keys_of(node: object) -> list[str]:
    if isinstance(node, pydantic.BaseModel):
        return [*type(node).model_fields, *(node.model_extra or {})]
    return list(node) if isinstance(node, dict) else []


def _child(node: object, part: str) -> object:
    if isinstance(node, pydantic.BaseModel):
        if part in type(node).model_fields:
            return getattr(node, part)
        extra = node.model_extra or {}
        if part in extra:
            return extra[part]
    elif isinstance(node, dict) and part in node:
        return node[part]
    raise KeyError(part)


def _unknown(dotted: str, parent: str, node: object) -> ConfigError:
    known = ", ".join(sorted(_keys_of(node))) or "none"
    where = f"in [{parent}]" if parent else "sections"
    return ConfigError(f"unknown config key {dotted!r} (known {where}: {known})", key=dotted)


def get_key(config: Config, dotted: str) -> Any:
    """The JSON value of ``section.key`` (or of a whole section); unknown keys are named."""
    node: object = config
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        try:
            node = _child(node, part)
        except KeyError:
            raise _unknown(dotted, ".".join(parts[:depth]), node) from None
    return node.model_dump(mode="json") if isinstance(node, pydantic.BaseModel) else node


def set_key(config: Config, dotted: str, value: Any) -> Config:
    """A copy of *config* with ``section.key`` set to *value*, validated.

    The key must exist, except in a section that takes extra keys (``[plugins]`` holds one
    table per plugin) or inside a free-form table; a section cannot be replaced by a value.
    """
    parts = dotted.split(".")
    node: object = config
    for depth, part in enumerate(parts[:-1]):
        try:
            node = _child(node, part)
        except KeyError:
            raise _unknown(dotted, ".".join(parts[:depth]), node) from None
    last = parts[-1]
    if (
        isinstance(node, pydantic.BaseModel)
        and last not in type(node).model_fields
        and type(node).model_config.get("extra") != "allow"
    ):
        raise _unknown(dotted, ".".join(parts[:-1]), node)
    if not isinstance(node, pydantic.BaseModel | dict):
        raise ConfigError(f"{'.'.join(parts[:-1])} is a value, not a section", key=dotted)
    current = getattr(node, last, None)
    if isinstance(current, pydantic.BaseModel):
        keys = ", ".join(_keys_of(current))
        raise ConfigError(f"{dotted} is a section; set one of its keys: {keys}", key=dotted)
    root: Any = config.model_dump(mode="json")
    target = root
    for part in parts[:-1]:
        target = target[part]
    target[last] = value
    try:
        return Config.model_validate(root)
    except pydantic.ValidationError as exc:
        errors = [_describe(error) for error in exc.errors()]
        raise ConfigError("; ".join(errors), key=dotted, errors=errors) from exc
