"""Where Pyra keeps things: the Pyra home and the daemon's endpoint.

Both sides use this module, so the CLI finds the socket the daemon bound without asking
anyone. It computes paths and creates private directories; it does not open the database, the
vault or any other state file (those belong to the daemon).

The endpoint a running daemon actually listens on is written by the daemon to
``run/endpoint.json``; clients prefer that file and fall back to the default Unix socket path.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyra_client.errors import PyraError, UsageError

__all__ = [
    "MAX_SOCKET_PATH",
    "Endpoint",
    "Layout",
    "default_socket_path",
    "ensure_private_dir",
    "pyra_home",
    "read_endpoint",
]

#: ``sun_path`` holds 108 bytes on Linux and 104 on macOS, NUL included.
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


def pyra_home() -> Path:
    """``$PYRA_HOME`` or ``~/.pyra``, absolute (symlinks are kept as the person wrote them)."""
    raw = os.environ.get("PYRA_HOME") or "~/.pyra"
    return Path(os.path.abspath(os.path.expanduser(raw)))


@dataclass(frozen=True)
class Layout:
    """The files and folders under one Pyra home."""

    home: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(pyra_home())

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def db_file(self) -> Path:
        return self.home / "pyra.db"

    @property
    def memory_dir(self) -> Path:
        return self.home / "memory"

    @property
    def vault_dir(self) -> Path:
        return self.home / "vault"

    @property
    def plugins_dir(self) -> Path:
        return self.home / "plugins"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "pyrad.log"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def pid_file(self) -> Path:
        return self.home / "pyra.pid"

    @property
    def endpoint_file(self) -> Path:
        return self.run_dir / "endpoint.json"

    @property
    def token_file(self) -> Path:
        return self.run_dir / "token"


@dataclass(frozen=True)
class Endpoint:
    """How to reach a daemon: a Unix socket path, or loopback TCP with a token file."""

    transport: Literal["unix", "tcp"]
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    token_file: str = ""

    def describe(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def _home_tag(home: Path) -> str:
    import hashlib  # only when endpoint.json is missing: keeps `pyra ask` start-up small

    return hashlib.sha256(os.fsencode(home.resolve())).hexdigest()[:12]


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (and parents) as 0700 and refuse one owned by another user."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PyraError(f"{path} belongs to another user (uid {info.st_uid}); refusing to use it")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


def default_socket_path(layout: Layout, configured: str | None = None) -> Path:
    """The Unix socket path for *layout*.

    Order: an explicit *configured* path (or ``$PYRA_SOCKET``), which must fit; then
    ``$XDG_RUNTIME_DIR/pyra/<tag>.sock``; then ``<home>/run/pyra.sock``; and when that is over
    the ``sun_path`` limit, ``$TMPDIR/pyra-<uid>/<tag>.sock``. The tag is a hash of the home,
    so two homes never share a socket.
    """
    explicit = configured or os.environ.get("PYRA_SOCKET")
    if explicit:
        path = Path(os.path.abspath(os.path.expanduser(explicit)))
        if not _fits(path):
            raise UsageError(
                f"socket path is {len(os.fsencode(path))} bytes; the limit is {MAX_SOCKET_PATH}: "
                f"{path}"
            )
        return path
    tag = _home_tag(layout.home)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        candidate = Path(runtime) / "pyra" / f"{tag}.sock"
        if _fits(candidate):
            return candidate
    candidate = layout.run_dir / "pyra.sock"
    if _fits(candidate):
        return candidate
    import tempfile  # a rare fallback; tempfile alone costs several ms to import

    return Path(tempfile.gettempdir()) / f"pyra-{os.getuid()}" / f"{tag}.sock"


def read_endpoint(layout: Layout) -> Endpoint:
    """The endpoint the daemon of *layout* announced, else the default Unix socket."""
    try:
        data = json.loads(layout.endpoint_file.read_text(encoding="utf-8"))
        return Endpoint(**data)
    except (OSError, ValueError, TypeError):
        return Endpoint(transport="unix", path=str(default_socket_path(layout)))
