"""``pyra daemon run|start|stop|restart|status``: the daemon's life cycle.

``run`` replaces this process with the daemon in the foreground (same PID, so systemd's
``Type=notify`` and signals reach the daemon itself); ``start`` spawns it detached and waits
until it answers; ``stop`` asks it to shut down over IPC and waits for the process to exit,
falling back to SIGTERM via the PID file.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time

import typer

from pyra_client.autostart import spawn_daemon, wait_until_ready
from pyra_client.connection import Connection
from pyra_client.errors import DaemonUnreachable, PyraError
from pyra_client.paths import Layout
from pyra_client.protocol import Empty, OkResult, StatusResult

__all__ = ["app", "running_pid", "stop_daemon"]

app = typer.Typer(
    name="daemon", help="Run, start, stop and inspect the daemon.", no_args_is_help=True
)


def running_pid(layout: Layout) -> int | None:
    """The PID of the daemon holding this home's PID file lock, or None (stale or absent)."""
    try:
        fd = os.open(layout.pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: stale
    finally:
        os.close(fd)


@app.command()
def run() -> None:
    """Run the daemon in the foreground (logs to stderr and the log file)."""
    os.execv(sys.executable, [sys.executable, "-m", "pyra_daemon"])  # noqa: S606


@app.command()
def start() -> None:
    """Start the daemon in the background and wait until it answers."""
    layout = Layout.default()
    pid = running_pid(layout)
    if pid is not None:
        typer.echo(f"the daemon is already running (pid {pid})")
        return
    with wait_until_ready(layout, spawn_daemon(layout)) as conn:
        status = conn.call("status", Empty(), StatusResult)
    typer.echo(f"daemon started (pid {status.pid}) on {status.endpoint}")


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def stop_daemon(layout: Layout, timeout: float) -> bool:
    """Stop the daemon of *layout* (IPC ``shutdown``, else SIGTERM); False if none ran."""
    pid = running_pid(layout)
    try:
        with Connection.open(layout, timeout=2.0) as conn:
            conn.call("shutdown", Empty(), OkResult)
    except DaemonUnreachable:
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
    if pid is not None and not _wait_exit(pid, timeout):
        raise PyraError(f"the daemon (pid {pid}) did not stop within {timeout:g} s")
    return True


@app.command()
def stop(
    timeout: float = typer.Option(30.0, help="Seconds to wait for running turns to finish."),
) -> None:
    """Stop the daemon gracefully (running turns finish or are cancelled)."""
    if stop_daemon(Layout.default(), timeout):
        typer.echo("daemon stopped")
    else:
        typer.echo("the daemon is not running")


@app.command()
def restart(
    timeout: float = typer.Option(30.0, help="Seconds to wait for the old daemon."),
) -> None:
    """Stop the daemon (if running) and start it again."""
    layout = Layout.default()
    stop_daemon(layout, timeout)
    with wait_until_ready(layout, spawn_daemon(layout)) as conn:
        status = conn.call("status", Empty(), StatusResult)
    typer.echo(f"daemon restarted (pid {status.pid})")


@app.command("status")
def daemon_status(json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Whether the daemon runs, and its pid, endpoint and uptime."""
    from pyra_client.cli.status import show_status

    show_status(json_output=json, autostart=False)
