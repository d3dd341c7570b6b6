"""``pyra status``: what the daemon is doing, from its own mouth."""

from __future__ import annotations

import typer

from pyra_client.cli.common import call, print_json
from pyra_client.protocol import Empty, StatusResult

__all__ = ["show_status", "status"]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def show_status(*, json_output: bool, autostart: bool) -> None:
    result = call("status", Empty(), StatusResult, autostart=autostart)
    if json_output:
        print_json(result)
        return
    model = (
        f"{result.provider} / {result.model}"
        if result.provider
        else "not configured (run `pyra setup`)"
    )
    rows = [
        ("daemon", f"running, pid {result.pid}, up {_duration(result.uptime)}"),
        ("version", f"{result.version} (protocol {result.protocol})"),
        ("endpoint", result.endpoint),
        ("home", result.home),
        ("model", model),
        ("conversations", str(result.conversations)),
        ("turns running", str(result.active_turns)),
        ("memory", f"{result.rss_bytes / 1048576:.1f} MiB RSS"),
        ("llm", "loaded" if result.llm_ready else "loading"),
    ]
    rows += [
        (
            f"task {t.name}",
            f"{t.state}, {t.restarts} restart(s)"
            + (f", last error: {t.last_error}" if t.last_error else ""),
        )
        for t in result.tasks
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name.ljust(width)}  {value}")


def status(
    json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_autostart: bool = typer.Option(False, "--no-autostart", help="Do not start the daemon."),
) -> None:
    """Show the daemon's pid, uptime, version, endpoint, model, conversations and memory."""
    show_status(json_output=json, autostart=not no_autostart)
