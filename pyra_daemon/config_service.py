"""The ``config.*`` methods: show, get and set keys, and replace the file after an edit.

The daemon owns ``config.toml``: frontends read it and change it through these methods, which
validate with the pydantic models of :mod:`pyra_daemon.config` (errors name the key), write
the file atomically with mode 0600 and apply the result to the running daemon at once. An
invalid change is refused and the running config and the file stay as they were.

``config.file`` and ``config.write`` serve ``pyra config edit``: the client edits a private
copy and hands the text back, so the file on disk is never left invalid (an invalid file
would stop the next start with status 78). The text is written as given, comments included;
``config.set`` rewrites the file from the model and so drops comments.

Deliberately not here: secrets (they are never in the config), and anything a frontend could
use to read files other than ``config.toml``.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any, Protocol

import anyio
import tomli_w

from pyra_client.errors import ConfigError
from pyra_client.paths import Layout
from pyra_client.protocol import (
    ConfigFileResult,
    ConfigGetResult,
    ConfigKeyParams,
    ConfigSetParams,
    ConfigSetResult,
    ConfigShowResult,
    ConfigWriteParams,
    ConfigWriteResult,
    Empty,
)
from pyra_daemon.config import (
    Config,
    get_key,
    load_config,
    parse_config,
    save_config,
    set_key,
    write_config_text,
)
from pyra_daemon.server import Call, Method, MethodTable

__all__ = ["ConfigHost", "ConfigService"]

log = logging.getLogger(__name__)

#: Keys read only when the daemon binds its socket.
_RESTART_KEYS = frozenset({"daemon.transport", "daemon.socket", "daemon.tcp_port"})


class ConfigHost(Protocol):
    """What the service needs of the daemon: where the file is, and the live config."""

    layout: Layout
    config: Config


def _parse_value(text: str) -> Any:
    """A value typed on a command line as TOML (``30``, ``true``, ``["a"]``), else the text."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _needs_restart(old: Config, new: Config) -> bool:
    return any(get_key(old, key) != get_key(new, key) for key in _RESTART_KEYS)


class ConfigService:
    """Serves ``config.*`` over the host's live config; see the module docstring."""

    def __init__(self, host: ConfigHost) -> None:
        self._host = host
        self._lock = anyio.Lock()

    @property
    def path(self) -> Path:
        return self._host.layout.config_file

    def methods(self) -> MethodTable:
        return {
            "config.show": Method(Empty, self.m_show),
            "config.get": Method(ConfigKeyParams, self.m_get),
            "config.set": Method(ConfigSetParams, self.m_set),
            "config.file": Method(Empty, self.m_file),
            "config.write": Method(ConfigWriteParams, self.m_write),
            "config.reload": Method(Empty, self.m_reload),
        }

    def apply(self, config: Config) -> None:
        """Make *config* the running one (the engine and the LLM read it per call)."""
        self._host.config = config
        logging.getLogger().setLevel(config.daemon.log_level)

    async def update(self, changes: dict[str, Any]) -> Config:
        """Set several ``section.key`` values at once, validate, save and apply them."""
        async with self._lock:
            config = self._host.config
            for key, value in changes.items():
                config = set_key(config, key, value)
            save_config(config, self.path)
            self.apply(config)
            return config

    async def m_show(self, call: Call, params: Empty) -> ConfigShowResult:
        values = self._host.config.model_dump(mode="json")
        # TOML has no null: unset optional keys are shown as comments.
        text = tomli_w.dumps(_without_nulls(values))
        unset = [
            f"# {section}.{key} is not set"
            for section, table in values.items()
            if isinstance(table, dict)
            for key, value in table.items()
            if value is None
        ]
        if unset:
            text += "\n" + "\n".join(unset) + "\n"
        return ConfigShowResult(path=str(self.path), toml=text, values=values)

    async def m_get(self, call: Call, params: ConfigKeyParams) -> ConfigGetResult:
        return ConfigGetResult(key=params.key, value=get_key(self._host.config, params.key))

    async def m_set(self, call: Call, params: ConfigSetParams) -> ConfigSetResult:
        old = self._host.config
        try:
            config = await self.update({params.key: params.value})
        except ConfigError as first:
            # "30" is a valid float as text; ["a", "b"] or true need TOML parsing first.
            parsed = _parse_value(params.value)
            if parsed == params.value:
                raise
            try:
                config = await self.update({params.key: parsed})
            except ConfigError:
                raise first from None
        log.info("config: %s changed by %s", params.key, call.session.id)
        return ConfigSetResult(
            key=params.key,
            value=get_key(config, params.key),
            path=str(self.path),
            restart_needed=_needs_restart(old, config),
        )

    async def m_file(self, call: Call, params: Empty) -> ConfigFileResult:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.path}: {exc}", path=str(self.path)) from exc
        return ConfigFileResult(path=str(self.path), text=text)

    async def m_write(self, call: Call, params: ConfigWriteParams) -> ConfigWriteResult:
        async with self._lock:
            current = (await self.m_file(call, Empty())).text
            if params.expected is not None and current != params.expected:
                raise ConfigError(
                    f"{self.path} changed while it was being edited; nothing was written",
                    path=str(self.path),
                    conflict=True,
                )
            config = parse_config(params.text, self.path)
            old = self._host.config
            changed = params.text != current
            if changed:
                write_config_text(params.text, self.path)
            self.apply(config)
        log.info("config: file replaced by %s", call.session.id)
        return ConfigWriteResult(
            path=str(self.path), changed=changed, restart_needed=_needs_restart(old, config)
        )

    async def m_reload(self, call: Call, params: Empty) -> ConfigWriteResult:
        async with self._lock:
            config = load_config(self.path)
            old = self._host.config
            self.apply(config)
        log.info("config reloaded by %s", call.session.id)
        return ConfigWriteResult(
            path=str(self.path), changed=config != old, restart_needed=_needs_restart(old, config)
        )


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
