"""Starting the daemon on demand: ``pyra ask`` with no daemon running, ``pyra daemon start``.

The daemon is spawned detached (its own session, no terminal, stdin closed) with the caller's
environment, so it sees the same ``$PYRA_HOME`` and provider variables; this module then waits
until the daemon answers on its endpoint. It never imports the daemon (the client/daemon
boundary is enforced by import-linter): it runs ``python -m pyra_daemon``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from pyra_client.connection import Connection
from pyra_client.errors import DaemonUnreachable
from pyra_client.paths import Layout, ensure_private_dir

if TYPE_CHECKING:
    import subprocess

__all__ = ["connect_or_start", "spawn_daemon", "wait_until_ready"]


def spawn_daemon(layout: Layout) -> subprocess.Popen[bytes]:
    import subprocess  # only to start a daemon: not on the hot path of a running one

    ensure_private_dir(layout.home)
    ensure_private_dir(layout.logs_dir)
    # Early failures (an invalid config) are printed before logging is set up: keep them.
    errfile = os.open(layout.logs_dir / "start.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "pyra_daemon"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYRA_HOME": str(layout.home)},
        )
    finally:
        os.close(errfile)


def _start_error(layout: Layout, status: int | None) -> str:
    try:
        text = (layout.logs_dir / "start.err").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else f"see {layout.log_file}"
    return f"the daemon did not start (exit status {status}): {detail}"


def wait_until_ready(
    layout: Layout, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0
) -> Connection:
    """Poll the endpoint until the daemon accepts (or *process* died for good)."""
    deadline = time.monotonic() + timeout
    exited_at: float | None = None
    while True:
        try:
            return Connection.open(layout, timeout=1.0)
        except DaemonUnreachable:
            pass
        now = time.monotonic()
        if process is not None and exited_at is None and process.poll() is not None:
            # Another client may have started the daemon first (ours then exits 1): give
            # that one a moment before reporting our failure.
            exited_at = now
        if now > deadline or (exited_at is not None and now - exited_at > 1.0):
            status = process.returncode if process is not None else None
            raise DaemonUnreachable(_start_error(layout, status))
        time.sleep(0.01)


def connect_or_start(layout: Layout, *, autostart: bool, client: str = "cli") -> Connection:
    """A connection to the daemon, starting one first when none runs and *autostart*."""
    try:
        return Connection.open(layout, client=client)
    except DaemonUnreachable:
        if not autostart:
            raise
    print("pyra: starting the daemon…", file=sys.stderr)
    return wait_until_ready(layout, spawn_daemon(layout))
