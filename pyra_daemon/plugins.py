"""Plugins inside the daemon: discovery, loading, isolation, supervision and their RPC methods.

Two sources, one life cycle:

- **Entry points**: installed distributions registering a :class:`~pyra_daemon.plugin_api.Plugin`
  in the ``pyra.plugins`` group (the bundled ``system`` plugin is one). Install = active,
  unless its name is in ``[plugins] disabled``.
- **Directory plugins**: ``$PYRA_HOME/plugins/<name>/`` with ``manifest.json`` (``name``,
  ``version``, ``description``, ``entry``, default ``plugin.py``). The folder and every file in
  it must belong to this user and not be group- or world-writable; every path goes through the
  :class:`~pyra_daemon.pathguard.PathGuard`, and a symlink may only point inside the plugin's
  own folder, so a plugin folder cannot reach the vault. The entry file is read through the
  guard and executed as the package ``pyra_dirplugin_<name>`` (its siblings import relatively).

A plugin is *active* once it imported, passed validation and its ``setup`` returned; then its
tools are added to the tool registry (``Tool.plugin`` set, a ``PluginContext`` parameter
bound), its slash commands and system-prompt text become visible, and each background task
runs under the daemon's :class:`~pyra_daemon.supervisor.Supervisor` as ``<plugin>.<task>``.
Anything that goes wrong on the way (an import error, a bad name, a failing or hanging
``setup``, a tool name another plugin owns) is logged with its traceback and leaves that one
plugin in state ``error``; the daemon and every other plugin carry on. ``pyra plugin list``
shows the error and ``pyra plugin enable`` / ``setup`` try again without a restart.

What this module deliberately does not do: run tools or decide approvals (the tool executor
does, and a tool failing at call time never disables its plugin), restart crashed tasks (the
supervisor does), or sandbox plugin code (a plugin runs with the daemon's rights; installing
one is trusting it, which ``docs/plugins.md`` says plainly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import anyio.to_thread

from pyra_client.errors import (
    AccessDenied,
    NotConfigured,
    NotFound,
    PyraError,
    SecretNotFound,
    UsageError,
    VaultLocked,
)
from pyra_client.paths import Layout
from pyra_client.protocol import (
    CommandListResult,
    CommandRunParams,
    CommandRunResult,
    CommandView,
    Empty,
    PluginInfoResult,
    PluginInstallParams,
    PluginListResult,
    PluginNameParams,
    PluginSecretView,
    PluginSetupResult,
    PluginToolView,
    PluginView,
)
from pyra_daemon.config import Config
from pyra_daemon.logs import redactor
from pyra_daemon.pathguard import PathGuard
from pyra_daemon.plugin_api import Plugin, PluginContext, SlashCommand, Tool, context_parameter
from pyra_daemon.secret import Secret
from pyra_daemon.server import Call, Method, MethodTable
from pyra_daemon.supervisor import Supervisor

__all__ = [
    "ENTRY_POINT_GROUP",
    "RESERVED_COMMANDS",
    "Manifest",
    "PluginManager",
    "SecretStore",
    "Source",
    "ToolShelf",
    "ToolSink",
    "discover",
    "read_manifest",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pyra.plugins"
MANIFEST_FILE = "manifest.json"
#: Chat commands every frontend handles itself; a plugin may not take these names.
RESERVED_COMMANDS = frozenset({"new", "history", "tools", "help", "quit", "exit"})
#: A plugin name is also a vault name part and (with ``-`` as ``_``) a module name.
_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SECRET_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: What OpenAI-style function calling accepts as a tool name.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMAND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_MAX_MANIFEST_BYTES = 64 * 1024
_MAX_ENTRY_BYTES = 4 * 1024 * 1024
#: Limits of a directory plugin (checked on discovery and on install).
_MAX_FILES = 2000
_MAX_TOTAL_BYTES = 50 * 1024 * 1024
#: Seconds a slash command or a plugin's ``teardown`` may take.
_COMMAND_TIMEOUT = 30.0
_TEARDOWN_TIMEOUT = 5.0
_MAX_ERROR_CHARS = 300

State = Literal["active", "disabled", "error", "loading"]


class ToolSink(Protocol):
    """Where an active plugin's tools go: the daemon's tool registry.

    ``add`` raises (``ValueError``) for a name that is taken; ``remove_plugin`` drops every
    tool whose ``Tool.plugin`` is *name* and is a no-op when there is none.
    """

    def add(self, tool: Tool) -> None: ...

    def remove_plugin(self, name: str) -> None: ...


class ToolShelf:
    """A plain :class:`ToolSink` that only holds tools, for a daemon without a tool registry
    (and for tests): the manager never needs more than this."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            owner = self.tools[tool.name].plugin or "the daemon"
            raise ValueError(f"a tool named {tool.name!r} is already provided by {owner}")
        self.tools[tool.name] = tool

    def remove_plugin(self, name: str) -> None:
        for key in [k for k, t in self.tools.items() if t.plugin == name]:
            del self.tools[key]


class SecretStore(Protocol):
    """The part of :class:`~pyra_daemon.vault.Vault` that plugin contexts use (synchronous)."""

    def get(self, name: str) -> Secret: ...

    def set(self, name: str, value: Secret) -> None: ...

    def names(self) -> list[str]: ...


def _describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    text = redactor.scrub(text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _module_name(plugin: str) -> str:
    return "pyra_dirplugin_" + plugin.replace("-", "_")


# --- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A directory plugin's ``manifest.json``."""

    name: str
    version: str = "0"
    description: str = ""
    entry: str = "plugin.py"


def read_manifest(data: bytes, where: str) -> Manifest:
    """Parse and validate a manifest; raises :class:`UsageError` naming what is wrong."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: must be a JSON object")
    unknown = sorted(set(raw) - {"name", "version", "description", "entry"})
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("name", "version", "description", "entry"):
        if key in raw and not isinstance(raw[key], str):
            raise UsageError(f"{where}: {key!r} must be a string")
    name = raw.get("name")
    if not name or not _PLUGIN_NAME.fullmatch(name):
        raise UsageError(f"{where}: 'name' must match {_PLUGIN_NAME.pattern} (got {name!r})")
    entry = raw.get("entry", "plugin.py")
    parts = Path(entry).parts
    if (
        not entry.endswith(".py")
        or Path(entry).is_absolute()
        or any(part in ("..", ".") for part in parts)
        or "\\" in entry
    ):
        raise UsageError(f"{where}: 'entry' must be a relative .py path inside the plugin folder")
    return Manifest(
        name=name,
        version=raw.get("version", "0"),
        description=raw.get("description", ""),
        entry=entry,
    )


@dataclass
class Source:
    """Where a plugin comes from; ``problem`` is set when it cannot even be tried."""

    kind: Literal["entry-point", "directory"]
    name: str
    location: str
    version: str = ""
    description: str = ""
    entry_point: importlib.metadata.EntryPoint | None = None
    directory: Path | None = None
    manifest: Manifest | None = None
    problem: str | None = None


def _check_owned(path: Path, info: os.stat_result) -> None:
    if info.st_uid != os.getuid():
        raise AccessDenied(
            f"{path} belongs to uid {info.st_uid}, not to this user; refusing to load it",
            path=str(path),
        )
    if stat.S_IMODE(info.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
        raise AccessDenied(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod go-w {path}`",
            path=str(path),
        )


def _read_owned(guard: PathGuard, path: Path, limit: int) -> bytes:
    """A regular file owned by us, read through the guard (checked on the open descriptor)."""
    with guard.open_fd(path) as (fd, info):
        if not stat.S_ISREG(info.st_mode):
            raise AccessDenied(f"{path} is not a regular file", path=str(path))
        _check_owned(path, info)
        if info.st_size > limit:
            raise UsageError(f"{path} is larger than {limit} bytes")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            if sum(map(len, chunks)) > limit:
                raise UsageError(f"{path} is larger than {limit} bytes")
        return b"".join(chunks)


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under *root* (not following symlinks), with its lstat; bounded."""
    count = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        for name in sorted(os.listdir(folder)):
            path = folder / name
            info = os.lstat(path)
            count += 1
            if count > _MAX_FILES:
                raise UsageError(f"{root} holds more than {_MAX_FILES} files")
            yield path, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(path)


def check_plugin_dir(guard: PathGuard, directory: Path) -> Path:
    """Validate a plugin folder's ownership, modes and symlinks; returns it resolved."""
    real = guard.check(directory)
    info = os.stat(real)
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{directory} is not a folder")
    _check_owned(directory, info)
    total = 0
    for path, entry in _walk(real):
        if stat.S_ISLNK(entry.st_mode):
            target = guard.check(path)
            if target != real and real not in target.parents:
                raise AccessDenied(
                    f"{path} is a symlink that leaves the plugin folder; refusing to load it",
                    path=str(path),
                )
            continue
        if not (stat.S_ISREG(entry.st_mode) or stat.S_ISDIR(entry.st_mode)):
            raise AccessDenied(f"{path} is not a regular file or folder", path=str(path))
        _check_owned(path, entry)
        total += entry.st_size
        if total > _MAX_TOTAL_BYTES:
            raise UsageError(f"{directory} holds more than {_MAX_TOTAL_BYTES} bytes")
    return real


def _entry_point_sources() -> list[Source]:
    sources: list[Source] = []
    seen: set[str] = set()
    for ep in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        dist = ep.dist
        version = dist.version if dist is not None else ""
        summary = ""
        if dist is not None:
            summary = (dist.metadata.get_all("Summary") or [""])[0]
        source = Source(
            kind="entry-point",
            name=ep.name,
            location=ep.value,
            version=version,
            description=summary,
            entry_point=ep,
        )
        if not _PLUGIN_NAME.fullmatch(ep.name):
            source.problem = f"the entry point name must match {_PLUGIN_NAME.pattern}"
        elif ep.name in seen:
            source.problem = "another installed distribution registers the same name"
        seen.add(ep.name)
        sources.append(source)
    return sources


def _directory_source(guard: PathGuard, directory: Path) -> Source:
    name = directory.name
    source = Source(kind="directory", name=name, location=str(directory), directory=directory)
    try:
        if not _PLUGIN_NAME.fullmatch(name):
            raise UsageError(f"the folder name must match {_PLUGIN_NAME.pattern}")
        real = check_plugin_dir(guard, directory)
        manifest = read_manifest(
            _read_owned(guard, real / MANIFEST_FILE, _MAX_MANIFEST_BYTES),
            f"{directory / MANIFEST_FILE}",
        )
        if manifest.name != name:
            raise UsageError(
                f"the manifest names the plugin {manifest.name!r}, but its folder is {name!r}"
            )
        source.manifest = manifest
        source.version = manifest.version
        source.description = manifest.description
    except (PyraError, OSError) as exc:
        source.problem = _describe(exc)
    return source


def discover(layout: Layout, guard: PathGuard) -> list[Source]:
    """Every plugin the daemon could run: entry points first, then directory plugins."""
    sources = _entry_point_sources()
    taken = {s.name for s in sources}
    try:
        names = sorted(os.listdir(guard.check(layout.plugins_dir)))
    except FileNotFoundError:
        names = []
    except (OSError, PyraError) as exc:
        log.error("cannot list directory plugins in %s: %s", layout.plugins_dir, exc)  # noqa: TRY400
        names = []
    for name in names:
        if name.startswith("."):  # install's temporary folders, editor files
            continue
        source = _directory_source(guard, layout.plugins_dir / name)
        if name in taken:
            source.problem = "an installed distribution already provides a plugin of this name"
        taken.add(name)
        sources.append(source)
    return sources


# --- loading ---------------------------------------------------------------------------------


def _load_entry_point(source: Source) -> object:
    assert source.entry_point is not None
    return source.entry_point.load()


def _forget_module(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _load_directory(source: Source, guard: PathGuard) -> object:
    assert source.directory is not None
    assert source.manifest is not None
    real = check_plugin_dir(guard, source.directory)
    entry = real / source.manifest.entry
    code = _read_owned(guard, entry, _MAX_ENTRY_BYTES)
    module_name = _module_name(source.name)
    _forget_module(module_name)
    spec = importlib.util.spec_from_loader(
        module_name, loader=None, origin=str(entry), is_package=True
    )
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(entry)
    # A package, so the plugin's own modules import relatively (``from . import helpers``).
    module.__path__ = [str(real)]
    spec.submodule_search_locations = [str(real)]
    sys.modules[module_name] = module
    try:
        compiled = compile(code, str(entry), "exec", dont_inherit=True)
        exec(compiled, module.__dict__)  # noqa: S102 - loading the plugin is the point
    except BaseException:
        _forget_module(module_name)
        raise
    return module


def _as_plugin(obj: object, source: Source) -> Plugin:
    if isinstance(obj, types.ModuleType):
        obj = getattr(obj, "plugin", None)
    if not isinstance(obj, Plugin):
        raise TypeError(
            f"expected a pyra_daemon.plugin_api.Plugin, got {type(obj).__name__} "
            "(a directory plugin's entry file must define `plugin = Plugin(...)`)"
        )
    if obj.name != source.name:
        raise ValueError(
            f"the Plugin object is named {obj.name!r}, but is registered as {source.name!r}"
        )
    tools: set[str] = set()
    for item in obj.tools:
        if not isinstance(item, Tool):
            raise TypeError(f"tools must be Tool objects (use @tool), got {type(item).__name__}")
        if not _TOOL_NAME.fullmatch(item.name):
            raise ValueError(f"tool name {item.name!r} must match {_TOOL_NAME.pattern}")
        if item.name in tools:
            raise ValueError(f"two tools are named {item.name!r}")
        tools.add(item.name)
    commands: set[str] = set()
    for command in obj.commands:
        if not isinstance(command, SlashCommand):
            raise TypeError(f"commands must be SlashCommand objects, got {type(command).__name__}")
        if not _COMMAND_NAME.fullmatch(command.name):
            raise ValueError(f"command name {command.name!r} must match {_COMMAND_NAME.pattern}")
        if command.name in RESERVED_COMMANDS:
            raise ValueError(f"/{command.name} is a built-in chat command")
        if command.name in commands:
            raise ValueError(f"two commands are named /{command.name}")
        commands.add(command.name)
    for key in obj.secrets:
        if not _SECRET_KEY.fullmatch(key):
            raise ValueError(f"secret key {key!r} must match {_SECRET_KEY.pattern}")
    return obj


# --- the context a plugin sees --------------------------------------------------------------


@dataclass(eq=False)
class _Context:
    """The daemon's :class:`~pyra_daemon.plugin_api.PluginContext` for one plugin."""

    name: str
    path_guard: PathGuard
    log: logging.Logger
    manager: PluginManager = field(repr=False)

    async def read_secret(self, key: str) -> str | None:
        return await self.manager.read_secret(self.name, key)

    async def write_secret(self, key: str, value: str) -> None:
        await self.manager.write_secret(self.name, key, value)

    def config(self) -> Mapping[str, Any]:
        return self.manager.plugin_config(self.name)


def _check_context(ctx: _Context) -> PluginContext:
    return ctx  # mypy proves here that _Context satisfies the public protocol


@dataclass(eq=False)
class _Record:
    source: Source
    enabled: bool
    state: State = "disabled"
    plugin: Plugin | None = None
    error: str | None = None
    traceback: str | None = None
    context: _Context | None = None
    tasks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name


# --- the manager -----------------------------------------------------------------------------


class PluginManager:
    """Discovers, loads, enables, disables and installs plugins (see the module docstring).

    Construct it without I/O; :meth:`start` discovers and activates the enabled plugins under
    a running :class:`Supervisor`, :meth:`aclose` tears them down. ``config`` returns the
    daemon's current config and ``save_config`` persists and adopts a changed one; ``vault``
    returns the vault, or ``None`` while this daemon has none (secret access then raises
    :class:`~pyra_client.errors.NotConfigured`). ``tools`` is the daemon's tool registry
    (a private :class:`ToolShelf` when omitted).
    """

    def __init__(
        self,
        layout: Layout,
        *,
        config: Callable[[], Config],
        save_config: Callable[[Config], None],
        tools: ToolSink | None = None,
        guard: PathGuard | None = None,
        vault: Callable[[], SecretStore | None] = lambda: None,
        discoverer: Callable[[], list[Source]] | None = None,
    ) -> None:
        self.layout = layout
        self.guard = guard or PathGuard.for_layout(layout)
        self._config = config
        self._save_config = save_config
        self._tools: ToolSink = tools if tools is not None else ToolShelf()
        self._vault = vault
        self._discoverer = discoverer or functools.partial(discover, layout, self.guard)
        self._records: dict[str, _Record] = {}
        self._commands: dict[str, tuple[str, SlashCommand]] = {}
        self._supervisor: Supervisor | None = None
        self._lock = anyio.Lock()

    # --- life cycle --------------------------------------------------------------------------

    async def start(self, supervisor: Supervisor) -> None:
        """Discover every plugin and activate the enabled ones, concurrently and isolated."""
        self._supervisor = supervisor
        async with self._lock:
            await self._activate_all(self._rescan())
        active = [r.name for r in self._records.values() if r.state == "active"]
        failed = [r.name for r in self._records.values() if r.state == "error"]
        log.info(
            "plugins: %d active (%s)%s",
            len(active),
            ", ".join(active) or "none",
            f"; failed: {', '.join(failed)}" if failed else "",
        )

    async def aclose(self) -> None:
        """Deactivate every active plugin (tasks stopped, ``teardown`` run); shielded."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                for record in self._records.values():
                    if record.state == "active":
                        await self._deactivate(record, state="disabled")

    async def reload(self) -> None:
        """Apply ``[plugins] disabled`` from the (reloaded) config, start plugins that appeared
        in ``$PYRA_HOME/plugins`` and retry those in ``error``; for SIGHUP."""
        async with self._lock:
            new = self._rescan()
            disabled = set(self._config().plugins.disabled)
            for record in list(self._records.values()):
                if record in new:
                    continue
                record.enabled = record.name not in disabled
                if not record.enabled and record.state == "active":
                    await self._deactivate(record, state="disabled")
                elif record.enabled and record.state in ("disabled", "error"):
                    await self._activate(record)
            await self._activate_all(new)

    async def _activate_all(self, records: list[_Record]) -> None:
        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(self._activate, record)

    def _rescan(self) -> list[_Record]:
        """Refresh every inactive plugin's source; returns the new, enabled ones."""
        disabled = set(self._config().plugins.disabled)
        found: dict[str, Source] = {}
        for source in self._discoverer():
            found.setdefault(source.name, source)
        new: list[_Record] = []
        for name, source in found.items():
            enabled = name not in disabled
            record = self._records.get(name)
            if record is None:
                record = _Record(
                    source=source, enabled=enabled, state="loading" if enabled else "disabled"
                )
                self._records[name] = record
                if enabled:
                    new.append(record)
            elif record.state not in ("active", "loading"):
                record.source = source
                record.enabled = enabled
                if not enabled:
                    record.state = "disabled"
            if not enabled:
                record.error = source.problem
        for name in [n for n in self._records if n not in found]:
            if self._records[name].state not in ("active", "loading"):
                del self._records[name]
        return new

    async def _find(self, name: str) -> _Record:
        """The plugin *name*; an unknown name triggers a rescan (install = active)."""
        if name not in self._records:
            await self._activate_all(self._rescan())
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"no plugin named {name!r} (see `pyra plugin list`)", plugin=name)
        return record

    def _fail(self, record: _Record, stage: str, exc: BaseException) -> None:
        record.state = "error"
        record.error = f"{stage} failed: {_describe(exc)}"
        record.traceback = redactor.scrub(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        log.error(
            "plugin %s: %s; the daemon continues without it\n%s",
            record.name,
            record.error,
            record.traceback,
        )

    async def _import(self, record: _Record) -> Plugin:
        source = record.source
        if record.plugin is not None and source.kind == "entry-point":
            return record.plugin  # an installed module cannot be re-imported cleanly

        def load() -> object:
            if source.kind == "entry-point":
                return _load_entry_point(source)
            return _load_directory(source, self.guard)

        timeout = self._config().plugins.load_timeout
        obj: object = None
        with anyio.move_on_after(timeout) as deadline:
            # A hanging import is abandoned in its thread; the daemon does not wait for it.
            obj = await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
        if deadline.cancelled_caught:
            raise TimeoutError(f"the import took longer than {timeout:g} s")
        return _as_plugin(obj, source)

    async def _run_setup(self, plugin: Plugin, ctx: _Context) -> None:
        if plugin.setup is None:
            return
        timeout = self._config().plugins.load_timeout
        with anyio.move_on_after(timeout) as deadline:
            await plugin.setup(ctx)
        if deadline.cancelled_caught:
            raise TimeoutError(f"setup took longer than {timeout:g} s")

    async def _activate(self, record: _Record) -> None:
        """Import, validate, set up and register one plugin; any failure is isolated."""
        if record.source.problem is not None:
            record.state, record.error = "error", record.source.problem
            log.error("plugin %s: %s; not loaded", record.name, record.error)
            return
        record.state, record.error, record.traceback = "loading", None, None
        try:
            plugin = await self._import(record)
        except Exception as exc:  # noqa: BLE001 - isolating a broken plugin is the point
            self._fail(record, "import", exc)
            return
        record.plugin = plugin
        # The plugin's own words win over its distribution's (a bundled plugin's distribution
        # is Pyra itself); "0" is the API's default version, i.e. unset.
        if plugin.version != "0" or not record.source.version:
            record.source.version = plugin.version
        if plugin.description:
            record.source.description = plugin.description
        ctx = _Context(
            name=record.name,
            path_guard=self.guard,
            log=logging.getLogger(f"pyra.plugin.{record.name}"),
            manager=self,
        )
        record.context = ctx
        try:
            self._check_conflicts(record, plugin)
        except ValueError as exc:
            self._fail(record, "validation", exc)
            return
        try:
            await self._run_setup(plugin, ctx)
        except Exception as exc:  # noqa: BLE001 - ditto, for its setup
            self._fail(record, "setup", exc)
            return
        try:
            self._register(record, plugin, ctx)
        except Exception as exc:  # noqa: BLE001 - e.g. a tool name the registry already has
            await self._deactivate(record, state="error")  # undo what was registered
            self._fail(record, "registration", exc)
            return
        record.state = "active"
        log.info(
            "plugin %s %s active: %d tool(s), %d command(s), %d task(s)",
            record.name,
            record.source.version,
            len(plugin.tools),
            len(plugin.commands),
            len(plugin.tasks),
        )

    def _check_conflicts(self, record: _Record, plugin: Plugin) -> None:
        for command in plugin.commands:
            owner = self._commands.get(command.name)
            if owner is not None and owner[0] != record.name:
                raise ValueError(f"/{command.name} is already provided by plugin {owner[0]!r}")

    def _register(self, record: _Record, plugin: Plugin, ctx: _Context) -> None:
        for item in plugin.tools:
            handler = item.handler
            if item.context_param:
                handler = functools.partial(handler, **{item.context_param: ctx})
            self._tools.add(dataclasses.replace(item, handler=handler, plugin=record.name))
        for command in plugin.commands:
            bound = command
            param = context_parameter(command.handler)
            if param:
                bound = dataclasses.replace(
                    command, handler=functools.partial(command.handler, **{param: ctx})
                )
            self._commands[command.name] = (record.name, bound)
        if plugin.tasks:
            supervisor = self._supervisor
            if supervisor is None:
                raise RuntimeError("the plugin manager was not started")
            for index, task in enumerate(plugin.tasks):
                label = getattr(task, "__name__", "") or f"task{index}"
                task_name = f"{record.name}.{label}"
                if task_name in record.tasks:
                    task_name = f"{task_name}{index}"
                supervisor.add(task_name, functools.partial(task, ctx))
                record.tasks.append(task_name)

    def _unregister(self, record: _Record) -> None:
        self._tools.remove_plugin(record.name)
        for name in [n for n, (owner, _) in self._commands.items() if owner == record.name]:
            del self._commands[name]

    async def _deactivate(self, record: _Record, *, state: State) -> None:
        self._unregister(record)
        if self._supervisor is not None:
            for task_name in record.tasks:
                # Already gone, or the supervisor has shut down.
                with contextlib.suppress(PyraError):
                    await self._supervisor.remove(task_name)
        record.tasks.clear()
        plugin, ctx = record.plugin, record.context
        if record.state == "active" and plugin is not None and plugin.teardown is not None:
            assert ctx is not None
            try:
                with anyio.fail_after(_TEARDOWN_TIMEOUT):
                    await plugin.teardown(ctx)
            except Exception:
                log.exception("plugin %s: teardown failed", record.name)
        record.state = state
        if record.source.kind == "directory":
            # Enabling it again re-reads the files, so an edited plugin is picked up.
            record.plugin = None
            _forget_module(_module_name(record.name))

    # --- what the rest of the daemon asks ------------------------------------------------------

    def plugin_config(self, name: str) -> dict[str, Any]:
        """A plugin's settings: its ``config_defaults`` overlaid with ``[plugins.<name>]``."""
        record = self._records.get(name)
        defaults = dict(record.plugin.config_defaults) if record and record.plugin else {}
        return {**defaults, **self._config().plugins.section(name)}

    def system_prompt(self) -> str:
        """The system-prompt additions of the active plugins, in name order."""
        parts = [
            r.plugin.system_prompt.strip()
            for r in sorted(self._records.values(), key=lambda r: r.name)
            if r.state == "active" and r.plugin is not None and r.plugin.system_prompt.strip()
        ]
        return "\n\n".join(parts)

    def names(self) -> list[str]:
        return sorted(self._records)

    def state(self, name: str) -> str:
        return self._records[name].state

    def _vault_or_raise(self) -> SecretStore:
        store = self._vault()
        if store is None:
            raise NotConfigured(
                "this daemon has no vault yet, so plugins cannot read or store secrets"
            )
        return store

    @staticmethod
    def _secret_name(plugin: str, key: str) -> str:
        if not _SECRET_KEY.fullmatch(key):
            raise AccessDenied(
                f"plugin {plugin!r} asked for the secret key {key!r}; keys must match "
                f"{_SECRET_KEY.pattern} and are always under plugin:{plugin}:",
                plugin=plugin,
            )
        return f"plugin:{plugin}:{key}"

    async def read_secret(self, plugin: str, key: str) -> str | None:
        name = self._secret_name(plugin, key)
        store = self._vault_or_raise()
        try:
            secret = await anyio.to_thread.run_sync(store.get, name)
        except SecretNotFound:
            return None
        return secret.reveal()

    async def write_secret(self, plugin: str, key: str, value: str) -> None:
        name = self._secret_name(plugin, key)
        store = self._vault_or_raise()
        await anyio.to_thread.run_sync(store.set, name, Secret(value))

    # --- operations behind the RPC methods -------------------------------------------------------

    def _view(self, record: _Record) -> PluginView:
        plugin = record.plugin if record.state == "active" else None
        return PluginView(
            name=record.name,
            source=record.source.kind,
            state=record.state,
            enabled=record.enabled,
            version=record.source.version,
            description=record.source.description,
            location=record.source.location,
            error=record.error,
            tools=[
                PluginToolView(
                    name=t.name,
                    description=t.description,
                    requires_approval=t.requires_approval,
                    read_only=t.read_only,
                )
                for t in (plugin.tools if plugin else ())
            ],
            commands=[c.name for c in (plugin.commands if plugin else ())],
            tasks=list(record.tasks),
        )

    def list_plugins(self) -> PluginListResult:
        return PluginListResult(plugins=[self._view(self._records[n]) for n in self.names()])

    async def _secret_views(self, record: _Record) -> list[PluginSecretView]:
        declared = record.plugin.secrets if record.plugin else {}
        if not declared:
            return []
        present: set[str] | None = None
        store = self._vault()
        if store is not None:
            try:
                present = set(await anyio.to_thread.run_sync(store.names))
            except (VaultLocked, PyraError):
                present = None
        views = []
        for key, description in declared.items():
            name = f"plugin:{record.name}:{key}"
            views.append(
                PluginSecretView(
                    key=key,
                    secret=name,
                    description=description,
                    is_set=None if present is None else name in present,
                )
            )
        return views

    async def info(self, name: str) -> PluginInfoResult:
        async with self._lock:
            record = await self._find(name)
        plugin = record.plugin if record.state == "active" else None
        return PluginInfoResult(
            plugin=self._view(record),
            system_prompt=plugin.system_prompt if plugin else "",
            config=self.plugin_config(name),
            secrets=await self._secret_views(record),
            traceback=record.traceback,
        )

    def _persist_disabled(self, name: str, *, disabled: bool) -> None:
        config = self._config()
        names = [n for n in config.plugins.disabled if n != name]
        if disabled:
            names.append(name)
        if names == config.plugins.disabled:
            return
        plugins = config.plugins.model_copy(update={"disabled": sorted(names)})
        self._save_config(config.model_copy(update={"plugins": plugins}))

    async def enable(self, name: str) -> PluginView:
        """Enable (persisted) and activate now; a plugin in ``error`` is tried again."""
        async with self._lock:
            record = await self._find(name)
            self._persist_disabled(name, disabled=False)
            record.enabled = True
            if record.state != "active":
                self._rescan()  # re-validate a directory plugin's files
                await self._activate(record)
            return self._view(record)

    async def disable(self, name: str) -> PluginView:
        """Disable (persisted) and deactivate now: tools, commands and tasks go away."""
        async with self._lock:
            record = await self._find(name)
            self._persist_disabled(name, disabled=True)
            record.enabled = False
            if record.state == "active":
                await self._deactivate(record, state="disabled")
            else:
                record.state = "disabled"
            return self._view(record)

    async def setup(self, name: str) -> PluginSetupResult:
        """Run the plugin's ``setup`` again (activating it if it is enabled but not running)."""
        async with self._lock:
            record = await self._find(name)
            messages: list[str] = []
            if not record.enabled:
                messages.append(f"{name} is disabled; enable it with `pyra plugin enable {name}`")
            elif record.state == "active":
                plugin, ctx = record.plugin, record.context
                assert plugin is not None
                assert ctx is not None
                if plugin.setup is not None:
                    try:
                        await self._run_setup(plugin, ctx)
                        messages.append(f"{name}: setup succeeded")
                    except Exception as exc:  # noqa: BLE001 - reported, plugin isolated
                        await self._deactivate(record, state="error")
                        self._fail(record, "setup", exc)
                else:
                    messages.append(f"{name} needs no setup")
            else:
                self._rescan()
                await self._activate(record)
                if self._records[name].state == "active":
                    messages.append(f"{name}: setup succeeded; the plugin is active")
            secrets_views = await self._secret_views(record)
            for view in secrets_views:
                if view.is_set is False:
                    messages.append(
                        f"store {view.secret} ({view.description or 'needed'}) with "
                        f"`pyra vault set {view.secret}`, then run `pyra plugin setup {name}`"
                    )
                elif view.is_set is None:
                    messages.append(
                        f"{view.secret}: unknown while the vault is locked or absent; "
                        f"set it with `pyra vault set {view.secret}`"
                    )
            if record.state == "error" and record.error:
                messages.append(f"{name}: {record.error}")
            return PluginSetupResult(
                plugin=self._view(record), secrets=secrets_views, messages=messages
            )

    async def install(self, path: str, *, replace: bool = False) -> PluginView:
        """Copy a directory plugin into ``$PYRA_HOME/plugins`` and activate it."""
        source = Path(path)
        if not source.is_absolute():
            raise UsageError(f"give the plugin folder as an absolute path, not {path!r}")
        async with self._lock:
            manifest = await anyio.to_thread.run_sync(self._copy_in, source, replace)
            new = self._rescan()
            record = self._records.get(manifest.name)
            if record is None:  # pragma: no cover - it was just copied in
                raise NotFound(f"plugin {manifest.name!r} vanished after installing it")
            if record.state == "active":
                await self._deactivate(record, state="disabled")
                self._rescan()
            if record.enabled or record in new:
                await self._activate(record)
            return self._view(record)

    def _copy_in(self, source: Path, replace: bool) -> Manifest:
        if source.is_symlink():
            raise AccessDenied(f"{source} is a symlink; give the real folder", path=str(source))
        real = self.guard.check(source)
        if not real.is_dir():
            raise UsageError(f"{source} is not a folder")
        manifest = read_manifest(
            self.guard.read_bytes(real / MANIFEST_FILE, _MAX_MANIFEST_BYTES)[0],
            str(source / MANIFEST_FILE),
        )
        entries = list(_walk(real))
        for entry_path, info in entries:
            if stat.S_ISLNK(info.st_mode):
                raise AccessDenied(
                    f"{entry_path} is a symlink; plugins are installed without symlinks",
                    path=str(entry_path),
                )
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise AccessDenied(f"{entry_path} is not a regular file or folder")
        if sum(info.st_size for _, info in entries) > _MAX_TOTAL_BYTES:
            raise UsageError(f"{source} holds more than {_MAX_TOTAL_BYTES} bytes")
        if not (real / manifest.entry).is_file():
            raise UsageError(f"{source} has no entry file {manifest.entry}")
        taken = self._records.get(manifest.name)
        if taken is not None and taken.source.kind == "entry-point":
            raise UsageError(f"an installed distribution already provides {manifest.name!r}")
        plugins_dir = self.guard.check(self.layout.plugins_dir)
        plugins_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = plugins_dir / manifest.name
        if (target.exists() or target.is_symlink()) and not replace:
            raise UsageError(
                f"a plugin named {manifest.name!r} is already installed; "
                "use --replace to overwrite it"
            )
        staging = plugins_dir / f".install-{manifest.name}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            for entry_path, info in entries:
                relative = entry_path.relative_to(real)
                destination = staging / relative
                if stat.S_ISDIR(info.st_mode):
                    destination.mkdir(mode=0o700, exist_ok=True)
                    continue
                data, _ = self.guard.read_bytes(entry_path, _MAX_TOTAL_BYTES)
                fd = os.open(
                    destination,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                    0o600,
                )
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            old = None
            if target.exists() or target.is_symlink():
                old = plugins_dir / f".old-{manifest.name}-{secrets.token_hex(4)}"
                target.rename(old)
            staging.rename(target)
            if old is not None:
                if old.is_symlink():
                    old.unlink()
                else:
                    shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("plugin %s %s installed from %s", manifest.name, manifest.version, source)
        return manifest

    def commands(self) -> CommandListResult:
        return CommandListResult(
            commands=[
                CommandView(name=name, description=command.description, plugin=owner)
                for name, (owner, command) in sorted(self._commands.items())
            ]
        )

    async def run_command(self, name: str, args: str) -> CommandRunResult:
        """Run ``/name args``; a failing command becomes ``ok=False`` with its error."""
        entry = self._commands.get(name.removeprefix("/"))
        if entry is None:
            raise NotFound(f"no command /{name} (see /help)", command=name)
        owner, command = entry
        try:
            with anyio.fail_after(_COMMAND_TIMEOUT):
                result: Any = command.handler(args)
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            log.warning("plugin %s: /%s timed out", owner, name)
            return CommandRunResult(
                ok=False, text=f"/{name} took longer than {_COMMAND_TIMEOUT:g} s"
            )
        except Exception as exc:
            log.exception("plugin %s: /%s failed", owner, name)
            return CommandRunResult(ok=False, text=f"/{name} failed: {_describe(exc)}")
        return CommandRunResult(ok=True, text=str(result))

    # --- RPC methods -----------------------------------------------------------------------------

    def methods(self) -> MethodTable:
        """The ``plugins.*`` and ``commands.*`` methods, for the daemon's method table."""

        async def m_list(call: Call, params: Empty) -> PluginListResult:
            return self.list_plugins()

        async def m_info(call: Call, params: PluginNameParams) -> PluginInfoResult:
            return await self.info(params.name)

        async def m_enable(call: Call, params: PluginNameParams) -> PluginView:
            return await self.enable(params.name)

        async def m_disable(call: Call, params: PluginNameParams) -> PluginView:
            return await self.disable(params.name)

        async def m_install(call: Call, params: PluginInstallParams) -> PluginView:
            return await self.install(params.path, replace=params.replace)

        async def m_setup(call: Call, params: PluginNameParams) -> PluginSetupResult:
            return await self.setup(params.name)

        async def m_commands(call: Call, params: Empty) -> CommandListResult:
            return self.commands()

        async def m_run(call: Call, params: CommandRunParams) -> CommandRunResult:
            return await self.run_command(params.name, params.args)

        return {
            "plugins.list": Method(Empty, m_list, inline=True),
            "plugins.info": Method(PluginNameParams, m_info),
            "plugins.enable": Method(PluginNameParams, m_enable),
            "plugins.disable": Method(PluginNameParams, m_disable),
            "plugins.install": Method(PluginInstallParams, m_install),
            "plugins.setup": Method(PluginNameParams, m_setup),
            "commands.list": Method(Empty, m_commands, inline=True),
            "commands.run": Method(CommandRunParams, m_run),
        }
