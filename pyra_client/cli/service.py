"""``pyra service install|uninstall|status|logs``: Pyra as a systemd user service or launchd agent.

A thin layer over :mod:`pyra_client.service`, which does the work; that module is imported
inside each command, so the other ``pyra`` commands do not pay for it. Errors propagate as
:class:`~pyra_client.errors.PyraError` to the single handler in :mod:`pyra_client.cli`.
"""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(
    name="service",
    help="Install Pyra as a systemd user service or launchd agent.",
    no_args_is_help=True,
)


@app.command()
def install(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the files and commands; change nothing."
    ),
    no_start: bool = typer.Option(
        False, "--no-start", help="Install and enable it, but do not start it now."
    ),
) -> None:
    """Write the unit (or agent) for this `pyra`, enable it and (re)start it.

    A daemon already running outside the service (started by `pyra ask` or `pyra daemon
    start`) is stopped first: it holds the PID lock the service's daemon needs.
    """
    from pyra_client import service
    from pyra_client.cli.daemon import running_pid, stop_daemon
    from pyra_client.paths import Layout

    layout = Layout.default()
    foreign = None if no_start else _foreign_daemon(running_pid(layout))
    plan = service.plan_install(start=not no_start, foreign_pid=foreign)
    service.execute(
        plan, dry_run=dry_run, echo=typer.echo, stop=lambda _pid: stop_daemon(layout, 30.0)
    )


def _foreign_daemon(pid: int | None) -> int | None:
    """*pid* unless it is the service's own daemon (a re-install restarts that one itself)."""
    if pid is None:
        return None
    from pyra_client import service

    state = service.service_status()
    if state.reachable and state.running and state.pid == pid:
        return None
    return pid


@app.command()
def uninstall(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the files and commands; change nothing."
    ),
) -> None:
    """Stop and disable the service and remove its file; Pyra's home is kept."""
    from pyra_client import service

    service.execute(service.plan_uninstall(), dry_run=dry_run, echo=typer.echo)


@app.command()
def status(
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What the service manager knows: installed, enabled, running, last exit status.

    Exits 0 when the service is running, 3 when it is not.
    """
    from pyra_client import service
    from pyra_client.errors import ExitCode

    state = service.service_status()
    if json:
        typer.echo(state.to_json())
    else:
        rows = [
            ("manager", state.manager),
            ("file", f"{state.unit_file} ({'present' if state.installed else 'absent'})"),
        ]
        if state.reachable:
            rows += [
                ("enabled", {True: "yes", False: "no", None: "unknown"}[state.enabled]),
                ("state", state.state or "unknown"),
            ]
            if state.pid:
                rows.append(("pid", str(state.pid)))
            if state.last_exit_status is not None:
                rows.append(("last exit status", str(state.last_exit_status)))
            if state.restarts:
                rows.append(("restarts", str(state.restarts)))
        if state.detail:
            rows.append(("note", state.detail))
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            typer.echo(f"{name.ljust(width)}  {value}")
    raise typer.Exit(0 if state.running else int(ExitCode.UNREACHABLE))


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many past lines to show."),
) -> None:
    """Show the service's log (journalctl on Linux, the log files on macOS)."""
    from pyra_client import service

    raise typer.Exit(service.show_logs(follow, lines))
