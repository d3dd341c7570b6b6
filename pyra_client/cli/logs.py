"""``pyra logs [-f] [-n N] [--journal]``: the daemon's log, from its rotating file or journald.

The daemon writes ``$PYRA_HOME/logs/pyrad.log`` and rotates it at 5 MiB into ``pyrad.log.1``
to ``.5`` (``logging.handlers.RotatingFileHandler``: rename, then a new file). :func:`tail`
reads the last lines, reaching into the rotated files when the current one is short;
:func:`follow` keeps printing what is appended, and moves on to the new file when the daemon
rotates (or a person truncates) it, without losing the last lines of the old one.

Secrets are redacted by the daemon before a line is written, so nothing here filters.
``--journal`` shows the systemd service's lines through ``journalctl`` instead (the same
messages, plus whatever the daemon printed before its logging was set up).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import typer

__all__ = ["follow", "logs", "tail"]

#: Rotated files the daemon keeps (RotatingFileHandler's backupCount in pyra_daemon.logs).
BACKUPS = 5
_BLOCK = 64 * 1024


def _last_lines(handle: BinaryIO, count: int) -> list[bytes]:
    """The last *count* lines of *handle*, read backwards in blocks; leaves it at the end."""
    end = handle.seek(0, os.SEEK_END)
    if count <= 0:
        return []
    position = end
    data = b""
    # One more newline than lines wanted: the file's final newline ends the last line.
    while position > 0 and data.count(b"\n") <= count:
        step = min(_BLOCK, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    handle.seek(end)
    lines = data.splitlines(keepends=True)
    if position > 0:
        lines = lines[1:]  # the first one may be cut
    return lines[-count:]


def tail(path: Path, count: int, backups: int = BACKUPS, *, first: int = 0) -> list[bytes]:
    """The last *count* lines of the log at *path*, continued from its rotated copies.

    *first* = 1 starts at ``path.1`` (the caller has read the current file itself).
    """
    lines: list[bytes] = []
    for index in range(first, backups + 1):
        if len(lines) >= count:
            break
        try:
            with _copy(path, index).open("rb") as handle:
                lines = _last_lines(handle, count - len(lines)) + lines
        except FileNotFoundError:
            if index:
                break  # the current file may be missing mid-rotation; a gap in copies ends it
    return lines


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def _copy(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _same_file(handle: BinaryIO, path: Path) -> bool:
    try:
        now = path.stat()
    except FileNotFoundError:
        return True  # mid-rotation: keep reading the old one until the new one appears
    return _identity(now) == _identity(os.fstat(handle.fileno()))


def _newer_copies(path: Path, handle: BinaryIO, backups: int) -> list[BinaryIO]:
    """The rotated files written after *handle*'s, oldest first, opened at once.

    Several rotations between two polls leave *handle*'s file at ``.k`` and whole files at
    ``.k-1`` to ``.1``; they are read before the current file, so no line is skipped.
    """
    mine = _identity(os.fstat(handle.fileno()))
    for index in range(1, backups + 1):
        try:
            if _identity(_copy(path, index).stat()) == mine:
                break
        except FileNotFoundError:
            return []
    else:
        return []  # already deleted: whatever came between is gone
    opened = [_open(_copy(path, newer)) for newer in range(index - 1, 0, -1)]
    return [copy for copy in opened if copy is not None]


def follow(
    path: Path,
    lines: int,
    write: Callable[[bytes], None],
    *,
    interval: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Write the last *lines* lines, then every line appended, until *stop* returns true.

    Polls every *interval* seconds (portable, and a log is not latency-critical). A partial
    line is held back until its newline arrives, so a line is never split in two.
    """
    pending = b""

    def drain(source: BinaryIO) -> None:
        nonlocal pending
        data = pending + source.read()
        complete, newline, rest = data.rpartition(b"\n")
        if newline:
            write(complete + newline)
        pending = rest

    handle = _open(path)
    backlog: list[bytes] = []
    if handle is not None:
        # The backlog comes from the handle that is then followed: no line falls in between.
        backlog = _last_lines(handle, lines)
        if backlog and not backlog[-1].endswith(b"\n"):
            partial = backlog.pop()  # being written: followed whole below
            handle.seek(-len(partial), os.SEEK_END)
    if len(backlog) < lines:
        backlog = tail(path, lines - len(backlog), first=1) + backlog
    if backlog:
        write(b"".join(backlog))
    while True:
        if handle is None:
            handle = _open(path)
        if handle is not None:
            drain(handle)
            if not _same_file(handle, path):
                drain(handle)  # the last lines written before the rename
                for copy in _newer_copies(path, handle, BACKUPS):
                    with copy:
                        drain(copy)
                handle.close()
                handle = None
                if pending:
                    write(pending + b"\n")
                    pending = b""
                continue
            if os.fstat(handle.fileno()).st_size < handle.tell():
                handle.seek(0)  # truncated in place
                pending = b""
                continue
        if stop():
            break
        time.sleep(interval)
    if handle is not None:
        handle.close()


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def logs(
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many past lines to show."),
    journal: bool = typer.Option(
        False, "--journal", help="Read the systemd service's journal instead of the log file."
    ),
) -> None:
    """Show the daemon's log file ($PYRA_HOME/logs/pyrad.log); -f follows it across rotations."""
    from pyra_client.paths import Layout

    if journal:
        raise typer.Exit(_journal(follow_, lines))
    path = Layout.default().log_file
    if not follow_:
        if not path.exists():
            from pyra_client.errors import NotFound

            raise NotFound(f"no log yet: {path} does not exist (the daemon creates it at start)")
        _write(b"".join(tail(path, lines)))
        return
    try:
        follow(path, lines, _write)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _journal(follow_: bool, lines: int) -> int:
    from pyra_client import service
    from pyra_client.errors import UsageError

    if service.manager_for(sys.platform) != "systemd":
        raise UsageError("--journal reads journald, which only the Linux service logs to")
    if not service.unit_path().exists():
        raise UsageError(
            "the systemd service is not installed, so journald has no Pyra lines; "
            "`pyra logs` without --journal reads the daemon's log file"
        )
    return service.show_logs(follow_, lines)
