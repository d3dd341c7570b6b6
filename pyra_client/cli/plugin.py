"""``pyra plugin list|info|enable|disable|install|setup``: plugins, as the daemon runs them.

Every command asks the daemon (``plugins.*`` methods); nothing here imports a plugin. Changes
apply live: ``enable`` starts a plugin and ``disable`` stops it without a restart, and both are
written to ``[plugins] disabled`` in the config file.
"""

from __future__ import annotations

import os

import typer

from pyra_client.cli.common import call, print_json
from pyra_client.protocol import (
    Empty,
    PluginInfoResult,
    PluginInstallParams,
    PluginListResult,
    PluginNameParams,
    PluginSetupResult,
    PluginView,
)

__all__ = ["app"]

app = typer.Typer(
    name="plugin",
    help="List, inspect, enable, disable, install and set up plugins.",
    no_args_is_help=True,
)

_NO_AUTOSTART = typer.Option(False, "--no-autostart", help="Do not start the daemon.")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _state(view: PluginView) -> str:
    if view.state == "error":
        return f"error: {view.error}"
    return view.state


def _fail_if_error(view: PluginView) -> None:
    """Exit non-zero when the plugin did not come up, with the reason on stderr."""
    if view.state == "error":
        typer.echo(f"pyra: plugin {view.name} failed: {view.error}", err=True)
        typer.echo(f"  details: pyra plugin info {view.name}", err=True)
        raise typer.Exit(1)


@app.command("list")
def list_(json: bool = _JSON, no_autostart: bool = _NO_AUTOSTART) -> None:
    """List every plugin found: name, version, source, state and tools."""
    result = call("plugins.list", Empty(), PluginListResult, autostart=not no_autostart)
    if json:
        print_json(result.plugins)
        return
    if not result.plugins:
        typer.echo("no plugins found")
        return
    width = max(len(p.name) for p in result.plugins)
    for view in result.plugins:
        tools = ", ".join(t.name for t in view.tools) or "-"
        typer.echo(
            f"{view.name.ljust(width)}  {view.version or '?':<8} {view.source:<11} {_state(view)}"
        )
        if view.state == "active":
            typer.echo(f"{'':{width}}  tools: {tools}")
            if view.commands:
                commands = " ".join(f"/{c}" for c in view.commands)
                typer.echo(f"{'':{width}}  commands: {commands}")


@app.command()
def info(
    name: str = typer.Argument(..., help="The plugin's name."),
    json: bool = _JSON,
    no_autostart: bool = _NO_AUTOSTART,
) -> None:
    """Show a plugin's details: tools, commands, tasks, settings, secrets, last error."""
    result = call(
        "plugins.info", PluginNameParams(name=name), PluginInfoResult, autostart=not no_autostart
    )
    if json:
        print_json(result)
        return
    view = result.plugin
    rows = [
        ("plugin", f"{view.name} {view.version}".strip()),
        ("description", view.description or "-"),
        ("source", f"{view.source} ({view.location})"),
        ("enabled", "yes" if view.enabled else "no"),
        ("state", _state(view)),
    ]
    for tool in view.tools:
        gate = "read-only" if tool.read_only else ("asks first" if tool.requires_approval else "")
        rows.append(("tool", f"{tool.name} ({gate}): {tool.description}" if gate else tool.name))
    rows += [("command", f"/{command}") for command in view.commands]
    rows += [("task", task) for task in view.tasks]
    for key, value in sorted(result.config.items()):
        rows.append(("setting", f"{key} = {value!r}"))
    for secret in result.secrets:
        known = {True: "set", False: "NOT SET", None: "unknown (vault locked)"}[secret.is_set]
        rows.append(("secret", f"{secret.secret}: {known}  {secret.description}".rstrip()))
    if result.system_prompt:
        rows.append(("prompt", result.system_prompt))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label.ljust(width)}  {value}")
    if result.traceback:
        typer.echo("\nlast failure:\n" + result.traceback.rstrip())


@app.command()
def enable(
    name: str = typer.Argument(..., help="The plugin's name."),
    no_autostart: bool = _NO_AUTOSTART,
) -> None:
    """Enable a plugin and start it now (no restart needed)."""
    view = call(
        "plugins.enable", PluginNameParams(name=name), PluginView, autostart=not no_autostart
    )
    _fail_if_error(view)
    typer.echo(f"{view.name} enabled: {_state(view)}")


@app.command()
def disable(
    name: str = typer.Argument(..., help="The plugin's name."),
    no_autostart: bool = _NO_AUTOSTART,
) -> None:
    """Disable a plugin: its tools, commands and tasks stop now and after restarts."""
    view = call(
        "plugins.disable", PluginNameParams(name=name), PluginView, autostart=not no_autostart
    )
    typer.echo(f"{view.name} disabled")


@app.command()
def install(
    path: str = typer.Argument(..., help="A folder with manifest.json and the plugin's code."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an installed copy."),
    no_autostart: bool = _NO_AUTOSTART,
) -> None:
    """Copy a directory plugin into $PYRA_HOME/plugins and start it.

    Installing a plugin means trusting its code: it runs inside the daemon with your rights.
    """
    view = call(
        "plugins.install",
        PluginInstallParams(path=os.path.abspath(os.path.expanduser(path)), replace=replace),
        PluginView,
        autostart=not no_autostart,
    )
    _fail_if_error(view)
    typer.echo(f"{view.name} {view.version} installed: {_state(view)}")
    typer.echo(f"next: pyra plugin setup {view.name}")


@app.command()
def setup(
    name: str = typer.Argument(..., help="The plugin's name."),
    json: bool = _JSON,
    no_autostart: bool = _NO_AUTOSTART,
) -> None:
    """Run a plugin's setup again and say which secrets it still needs.

    Secrets are stored with `pyra vault set plugin:NAME:KEY` (the value is read from a prompt,
    never from the command line); run setup again afterwards.
    """
    result = call(
        "plugins.setup", PluginNameParams(name=name), PluginSetupResult, autostart=not no_autostart
    )
    if json:
        print_json(result)
        return
    for secret in result.secrets:
        known = {True: "set", False: "not set", None: "unknown (vault locked)"}[secret.is_set]
        typer.echo(f"{secret.secret}: {known}  {secret.description}".rstrip())
    for message in result.messages:
        typer.echo(message)
    _fail_if_error(result.plugin)
