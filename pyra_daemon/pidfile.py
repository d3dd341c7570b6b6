"""The daemon's PID file: one running daemon per Pyra home, and stale files detected.

The file is held with an exclusive ``flock`` for the daemon's whole life, so "is a daemon
running?" is answered by the lock, not by guessing from a PID that may have been reused: a
file whose lock can be taken is stale, whatever PID it names.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from pyra_client.errors import PyraError

__all__ = ["AlreadyRunning", "PidFile"]

log = logging.getLogger(__name__)


class AlreadyRunning(PyraError):
    """Raised when another daemon holds the PID file of this Pyra home."""


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"a Pyra daemon is already running for this home (pid {holder}); "
                "use `pyra daemon stop` or `pyra daemon restart`",
                pid=holder,
            ) from None
        previous = os.read(fd, 32).decode(errors="replace").strip()
        if previous:
            log.warning("removed a stale PID file (pid %s did not exit cleanly)", previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
