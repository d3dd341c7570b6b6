"""The public plugin API: what a plugin (bundled or third-party) may import from the daemon.

A plugin is a :class:`Plugin` object exposed by an entry point in the ``pyra.plugins`` group
(or by ``plugin.py`` in ``$PYRA_HOME/plugins/<name>/``). It provides any of: tools, slash
commands, system-prompt additions, config fields and background tasks. Credentials reach it
only through the :class:`PluginContext`'s vault reader/writer, limited to
``plugin:<name>:<key>``.

A tool's JSON Schema is derived from the function's type hints and docstring by :func:`tool`
(simonw/llm style), or given explicitly. Whether a call runs, waits for the person, or is
refused is not decided here: the daemon's executor applies the approval policies.

Nothing in this module performs I/O; keep it dependency-free so plugins import it cheaply.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import logging

    from pyra_daemon.pathguard import PathGuard

__all__ = [
    "Plugin",
    "PluginContext",
    "SlashCommand",
    "Tool",
    "ToolError",
    "context_parameter",
    "schema_from_signature",
    "tool",
]

ToolHandler = Callable[..., Awaitable[str] | str]


class ToolError(Exception):
    """Raise from a tool to report a failure the model should read (not a crash)."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    ``handler`` is called with keyword arguments already validated against ``parameters``
    and returns text (sync or async). ``read_only`` tools never write, delete, spend or reach
    out; every other tool needs approval unless a policy allows it.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler
    requires_approval: bool = True
    read_only: bool = False
    #: Seconds before the call is cancelled and reported to the model as timed out.
    timeout: float = 30.0
    #: Set by the loader: the plugin that provides the tool.
    plugin: str = ""
    #: The handler's parameter annotated :class:`PluginContext`, if any: the loader passes the
    #: plugin's context under this name. It is not part of ``parameters``.
    context_param: str | None = None


@dataclass(frozen=True)
class SlashCommand:
    """A ``/name`` command typed in a chat frontend; returns the text to show.

    ``handler`` is called with the text after the command name (``/weather Paris`` gives
    ``"Paris"``); a parameter annotated :class:`PluginContext` receives the plugin's context.
    """

    name: str
    description: str
    handler: Callable[..., Awaitable[str] | str]


class PluginContext(Protocol):
    """What the daemon hands a plugin's ``setup``, background tasks and tools.

    A tool receives it by declaring a parameter annotated ``PluginContext`` (any name; it is
    left out of the tool's JSON Schema).
    """

    name: str
    #: Refuses paths into Pyra's private files; use it for every file a plugin touches.
    path_guard: PathGuard
    #: The plugin's logger (``pyra.plugin.<name>``), configured by the daemon.
    log: logging.Logger

    async def read_secret(self, key: str) -> str | None:
        """The plugin's secret ``plugin:<name>:<key>``, or None when unset."""
        ...

    async def write_secret(self, key: str, value: str) -> None:
        """Store the plugin's secret ``plugin:<name>:<key>``."""
        ...

    def config(self) -> Mapping[str, Any]:
        """The plugin's section of the config file (``[plugins.<name>]``)."""
        ...


@dataclass
class Plugin:
    """What a plugin module exposes as ``plugin``."""

    name: str
    description: str = ""
    version: str = "0"
    tools: Sequence[Tool] = ()
    commands: Sequence[SlashCommand] = ()
    #: Added to the system prompt while the plugin is enabled.
    system_prompt: str = ""
    #: Default values of the plugin's config fields (documented in ``description``).
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Long-running coroutines (a bot's polling loop), supervised with crash back-off.
    tasks: Sequence[Callable[[PluginContext], Awaitable[None]]] = ()
    #: Called once when the plugin is enabled (validate config, warm caches).
    setup: Callable[[PluginContext], Awaitable[None]] | None = None
    #: Called when the plugin is disabled or the daemon stops (after its tasks are stopped).
    teardown: Callable[[PluginContext], Awaitable[None]] | None = None
    #: The vault keys the plugin reads, ``{key: what it is}``; ``pyra plugin setup`` lists them
    #: with the command that stores each (``pyra vault set plugin:<name>:<key>``).
    secrets: Mapping[str, str] = field(default_factory=dict)


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}


def _schema_for(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, Sequence) and args:
        return {"type": "array", "items": _schema_for(args[0])}
    if origin in (dict, Mapping):
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _schema_for(options[0])
        return {"anyOf": [_schema_for(a) for a in options]}
    raise TypeError(f"unsupported parameter type for a tool: {annotation!r}")


_PARAM_DOC = re.compile(r"^\s*:param\s+(\w+):\s*(.+)$|^\s*(\w+)\s*(?:\([^)]*\))?:\s+(.+)$")


def _param_docs(doc: str) -> tuple[str, dict[str, str]]:
    """The summary and per-parameter descriptions of a docstring (Sphinx or Google style)."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary: list[str] = []
    params: dict[str, str] = {}
    in_args = False
    last: str | None = None  # the parameter whose description may continue
    last_indent = 0
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args, last = True, None
            continue
        indent = len(line) - len(line.lstrip())
        if last is not None and stripped and indent > last_indent:
            params[last] += " " + stripped  # a description wrapped onto the next line
            continue
        match = _PARAM_DOC.match(line)
        if match and (in_args or match.group(1)):
            last = match.group(1) or match.group(3)
            last_indent = indent
            params[last] = (match.group(2) or match.group(4)).strip()
        elif not stripped:
            last = None
        elif not in_args and not params:
            summary.append(line)
    return " ".join(s.strip() for s in summary if s.strip()), params


def context_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of *fn*'s parameter annotated :class:`PluginContext`, if it has one."""
    try:
        hints = typing.get_type_hints(fn)
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or a callable object without annotations
        return None
    for name in parameters:
        if hints.get(name) is PluginContext:
            return name
    return None


def schema_from_signature(fn: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """A description and a JSON Schema for *fn*'s keyword parameters.

    A parameter annotated :class:`PluginContext` is left out: the daemon supplies it.
    """
    description, docs = _param_docs(fn.__doc__ or "")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hints.get(name) is PluginContext:
            continue
        schema = _schema_for(hints.get(name, str))
        if name in docs:
            schema["description"] = docs[name]
        if param.default is inspect.Parameter.empty:
            required.append(name)
        else:
            schema["default"] = param.default
        properties[name] = schema
    return description, {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


@typing.overload
def tool(fn: ToolHandler, /) -> Tool: ...


@typing.overload
def tool(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    requires_approval: bool = True,
    read_only: bool = False,
    timeout: float = 30.0,
) -> Callable[[ToolHandler], Tool]: ...


def tool(
    fn: ToolHandler | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    requires_approval: bool = True,
    read_only: bool = False,
    timeout: float = 30.0,
) -> Tool | Callable[[ToolHandler], Tool]:
    """Make a :class:`Tool` from a function: ``@tool`` or ``@tool(read_only=True, ...)``."""

    def build(handler: ToolHandler) -> Tool:
        derived_description, derived_schema = schema_from_signature(handler)
        return Tool(
            name=name or handler.__name__,
            description=description or derived_description,
            parameters=parameters or derived_schema,
            handler=handler,
            requires_approval=requires_approval and not read_only,
            read_only=read_only,
            timeout=timeout,
            context_param=context_parameter(handler),
        )

    return build(fn) if fn is not None else build
