"""The typer application: mounts one sub-app per command group.

``pyra ask`` never comes through here (see :mod:`pyra_client.cli.ask`); it is listed in the
help through a stub command that hands its arguments to the fast path.
"""

from __future__ import annotations

import typer

from pyra_client import __version__
from pyra_client.cli import (
    approvals,
    chat,
    config,
    conversations,
    daemon,
    doctor,
    logs,
    memory,
    plugin,
    service,
    setup_telegram,
    status,
    vault,
)

__all__ = ["app", "run"]

app = typer.Typer(
    name="pyra",
    help='Pyra: your self-hosted assistant. `pyra ask "..."` to start.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(daemon.app)
app.add_typer(conversations.app)
app.add_typer(service.app)
# --- vault / config command groups ---
app.add_typer(vault.app)
app.add_typer(config.app)
# --- approvals / plugin / chat command groups ---
app.add_typer(approvals.app)
app.add_typer(plugin.app)
app.command("chat")(chat.chat)
# --- memory command group ---
app.add_typer(memory.app)
# --- doctor / logs commands ---
app.command("doctor")(doctor.doctor)
app.command("logs")(logs.logs)
# `pyra setup` (provider) with its `telegram` and `passphrase` subcommands.
setup_telegram.mount(app)
app.command("status")(status.status)


@app.command(
    "ask",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def ask(ctx: typer.Context) -> None:
    """Ask one question; the answer streams to stdout (`pyra ask -h` for options)."""
    from pyra_client.cli.ask import main

    raise typer.Exit(main(list(ctx.args)))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pyra {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Pyra: your self-hosted assistant."""


def run(args: list[str]) -> int:
    try:
        app(args=args, prog_name="pyra", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
