"""The path guard: no file access by memory, plugins or tools may reach Pyra's private files.

A :class:`PathGuard` knows the protected places of one Pyra home (the vault folder, the run
folder with the socket, endpoint and token files, the PID file and the SQLite database with its
``-wal``/``-shm``/``-journal`` siblings) and refuses, with
:class:`~pyra_client.errors.AccessDenied`, any read, listing or write that resolves into them.

How it resists tricks:

- Paths are resolved with every symlink followed and ``..`` applied *after* the symlink before
  it (``os.path.realpath``), then checked for containment.
- Files and folders are opened with ``O_NOFOLLOW`` on the resolved path, and the descriptor is
  checked again after opening (``/proc/self/fd`` on Linux, ``F_GETPATH`` on macOS, else the
  inode at the resolved path), so swapping a component for a symlink between the check and the
  open does not help.
- A file whose inode is one of the protected files is refused wherever it appears, so a hard
  link to ``secrets.age`` or the database reads as denied too.
- Writes refuse a final component that is a symlink, create a temporary file with ``O_EXCL``
  inside a folder opened by descriptor and rename it into place relative to that descriptor.

What it deliberately does not do: confine callers to an allow-list of folders (a tool that may
read ``~/notes`` may read ``/etc/hosts``; approvals decide what a tool may do), decide policy
for relative paths (callers make paths absolute), or protect against another process running as
the same user (it guards what Pyra's own code is asked to touch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyra_client.errors import AccessDenied
from pyra_client.paths import Layout

__all__ = ["DirEntry", "PathGuard"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`PathGuard.list_dir` (symlinks are described, never followed)."""

    name: str
    kind: str
    """``file``, ``dir``, ``symlink`` or ``other``."""
    size: int
    target: str | None = None
    """Where a symlink points, as written in the link."""


def _fd_path(fd: int) -> str | None:
    """The path the kernel holds for an open descriptor, where the platform tells."""
    proc = f"/proc/self/fd/{fd}"
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            return os.readlink(proc)
    getpath = getattr(fcntl, "F_GETPATH", None)
    if getpath is not None:
        with contextlib.suppress(OSError):
            raw = fcntl.fcntl(fd, getpath, b"\0" * 1024)
            return os.fsdecode(raw.split(b"\0", 1)[0])
    return None


class PathGuard:
    """Refuses reads, listings and writes that resolve into protected paths.

    ``protected`` paths may be folders (everything below is protected too) or files; they need
    not exist. Use :meth:`for_layout` for a Pyra home.
    """

    def __init__(self, protected: Iterable[str | os.PathLike[str]]) -> None:
        self._protected = tuple(Path(os.path.abspath(p)) for p in protected)
        if not self._protected:
            raise ValueError("a PathGuard needs at least one protected path")

    @classmethod
    def for_layout(cls, layout: Layout) -> PathGuard:
        db = layout.db_file
        return cls(
            [
                layout.vault_dir,
                layout.run_dir,
                layout.pid_file,
                db,
                db.with_name(db.name + "-wal"),
                db.with_name(db.name + "-shm"),
                db.with_name(db.name + "-journal"),
            ]
        )

    def __repr__(self) -> str:
        return f"PathGuard({[str(p) for p in self._protected]!r})"

    @property
    def protected(self) -> tuple[Path, ...]:
        return self._protected

    # --- checks ------------------------------------------------------------------------------

    def _protected_real(self) -> list[Path]:
        # Resolved on every check: the home itself may be reached through a symlink.
        return [Path(os.path.realpath(p)) for p in self._protected]

    def _inside(self, real: Path) -> Path | None:
        for protected in self._protected_real():
            if real == protected or protected in real.parents:
                return protected
        return None

    def _protected_inodes(self) -> set[tuple[int, int]]:
        inodes: set[tuple[int, int]] = set()
        for protected in self._protected:
            try:
                info = os.stat(protected)
            except OSError:
                continue
            inodes.add((info.st_dev, info.st_ino))
            if stat.S_ISDIR(info.st_mode):
                with contextlib.suppress(OSError), os.scandir(protected) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            child = entry.stat(follow_symlinks=False)
                            inodes.add((child.st_dev, child.st_ino))
        return inodes

    def _deny(self, path: str | os.PathLike[str], protected: Path) -> AccessDenied:
        return AccessDenied(
            f"access denied: {os.fspath(path)} is inside Pyra's private files ({protected})",
            path=os.fspath(path),
        )

    def check(self, path: str | os.PathLike[str], *, write: bool = False) -> Path:
        """Return *path* resolved (absolute, no symlinks), or raise ``AccessDenied``.

        With ``write=True`` a final component that is a symlink is refused outright: a write
        replaces the name the caller gave, never what it points to.
        """
        raw = os.fspath(path)
        if "\0" in raw:
            raise AccessDenied("access denied: a path may not contain NUL", path=raw)
        # Not os.path.abspath: it would apply ".." lexically, before the symlink in front of
        # it, which is not what the kernel does when the path is opened.
        absolute = raw if os.path.isabs(raw) else os.path.join(os.getcwd(), raw)
        if write:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if stat.S_ISLNK(os.lstat(absolute).st_mode):
                    raise AccessDenied(
                        f"access denied: refusing to write through the symlink {raw}", path=raw
                    )
        real = Path(os.path.realpath(absolute))
        inside = self._inside(real)
        if inside is not None:
            raise self._deny(raw, inside)
        return real

    def _verify_fd(self, fd: int, path: str | os.PathLike[str], expected: Path) -> os.stat_result:
        """Check an open descriptor again: where it really is, and which inode it is."""
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) in self._protected_inodes():
            raise AccessDenied(
                f"access denied: {os.fspath(path)} is one of Pyra's private files",
                path=os.fspath(path),
            )
        held = _fd_path(fd)
        if held is not None:
            inside = self._inside(Path(held))
            if inside is not None:
                raise self._deny(path, inside)
        else:
            try:
                now = os.stat(expected, follow_symlinks=False)
            except OSError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                raise AccessDenied(
                    f"access denied: {os.fspath(path)} changed while it was being opened",
                    path=os.fspath(path),
                )
        return info

    # --- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_fd(
        self, path: str | os.PathLike[str], flags: int = os.O_RDONLY
    ) -> Iterator[tuple[int, os.stat_result]]:
        """Open *path* for reading after the checks; yields ``(fd, fstat)`` and closes it.

        ``O_NONBLOCK`` keeps a FIFO from hanging the caller; callers check the file type.
        """
        real = self.check(path)
        fd = os.open(real, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
        try:
            info = self._verify_fd(fd, path, real)
            yield fd, info
        finally:
            os.close(fd)

    def read_bytes(self, path: str | os.PathLike[str], limit: int) -> tuple[bytes, int]:
        """Up to *limit* bytes of a regular file and its full size."""
        with self.open_fd(path) as (fd, info):
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder", os.fspath(path))
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
            chunks: list[bytes] = []
            remaining = limit
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks), info.st_size

    def list_dir(self, path: str | os.PathLike[str]) -> list[DirEntry]:
        """The entries of a folder, sorted by name; symlinks are described, not followed."""
        entries: list[DirEntry] = []
        with self.open_fd(path, os.O_RDONLY | _O_DIRECTORY) as (fd, info):
            if not stat.S_ISDIR(info.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", os.fspath(path))
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                target = None
                if stat.S_ISLNK(st.st_mode):
                    kind = "symlink"
                    with contextlib.suppress(OSError):
                        target = os.readlink(name, dir_fd=fd)
                elif stat.S_ISDIR(st.st_mode):
                    kind = "dir"
                elif stat.S_ISREG(st.st_mode):
                    kind = "file"
                else:
                    kind = "other"
                entries.append(DirEntry(name=name, kind=kind, size=st.st_size, target=target))
        entries.sort(key=lambda e: e.name)
        return entries

    # --- writing -----------------------------------------------------------------------------

    def write_bytes(
        self, path: str | os.PathLike[str], data: bytes, *, make_parents: bool = False
    ) -> Path:
        """Replace (or create) the file at *path* with *data*, atomically; returns its path.

        The data goes to a fresh temporary file in the same folder, is fsynced, and renamed
        over the target relative to the folder's descriptor. An existing file keeps its mode;
        a new one gets ``0o666`` less the umask.
        """
        raw = os.fspath(path)
        if os.path.basename(raw) in ("", ".", ".."):
            raise IsADirectoryError(errno.EISDIR, "not a file name", raw)
        real = self.check(raw, write=True)
        # The final component is not a symlink (checked), so this is the resolved folder and
        # the name the caller gave.
        parent, name = real.parent, real.name
        if make_parents:
            parent.mkdir(parents=True, exist_ok=True)
            self.check(parent)
        dfd = os.open(parent, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
        try:
            self._verify_fd(dfd, parent, parent)
            mode = 0o666
            try:
                existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if stat.S_ISLNK(existing.st_mode):
                    raise AccessDenied(
                        f"access denied: refusing to write through the symlink {raw}", path=raw
                    )
                if not stat.S_ISREG(existing.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", raw)
                mode = stat.S_IMODE(existing.st_mode)
            tmp = f".{name}.pyra-tmp-{secrets.token_hex(4)}"
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                mode,
                dir_fd=dfd,
            )
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(data)
                    out.flush()
                if existing is not None:
                    os.fchmod(fd, mode)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.close(fd)
            try:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            with contextlib.suppress(OSError):
                os.fsync(dfd)
        finally:
            os.close(dfd)
        return parent / name

    @contextlib.contextmanager
    def open_write_fd(
        self, path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT, mode: int = 0o600
    ) -> Iterator[int]:
        """Open *path* for writing in place (append, truncate) after the checks; closes it."""
        real = self.check(path, write=True)
        fd = os.open(real, flags | _O_NOFOLLOW | _O_CLOEXEC, mode)
        try:
            info = self._verify_fd(fd, path, real)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
            yield fd
        finally:
            os.close(fd)
