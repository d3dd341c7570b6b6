"""The bundled ``system`` tool plugin: commands, files and URLs, every risky call gated.

Registered through the ``pyra.plugins`` entry point like any third-party plugin, and held to
the same rule: from the daemon it imports only the public plugin API and the path guard
(an import-linter contract checks this).

- ``run_command`` runs a program (an argv list; ``shell=true`` for one string of ``/bin/sh``
  code) with a timeout, an output cap, no stdin, in its own process group (killed whole on
  timeout or cancellation), and an environment without Pyra's variables, systemd's sockets or
  anything that looks like a credential. Always needs approval.
- ``read_file`` and ``list_dir`` are read-only (no approval) and go through the path guard,
  with size and entry caps.
- ``write_file`` needs approval, goes through the path guard and replaces the file atomically.
- ``fetch_url`` needs approval (it reaches out); http and https only, with size and time caps.
  httpx is imported on first use.

Settings (``[plugins.system]``): ``max_output_bytes`` (per stream of a command),
``max_read_bytes``, ``max_write_bytes``, ``max_fetch_bytes``, ``max_timeout`` (seconds, for
commands and fetches) and ``pass_env`` (variable names a command may see although they look
like credentials).

Deliberately not here: sandboxing commands (approval is the control), confining file access to
some folders (the guard only keeps Pyra's private files out of reach), or rendering HTML.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread

from pyra_client.errors import PyraError
from pyra_client.providers import PROVIDERS
from pyra_daemon.plugin_api import Plugin, PluginContext, ToolError, tool

__all__ = ["child_env", "plugin"]

DEFAULTS: dict[str, Any] = {
    "max_output_bytes": 64 * 1024,
    "max_read_bytes": 1024 * 1024,
    "max_write_bytes": 10 * 1024 * 1024,
    "max_fetch_bytes": 2 * 1024 * 1024,
    "max_timeout": 600,
    "pass_env": [],
}
_MAX_ENTRIES = 1000
_USER_AGENT = "Pyra (fetch_url tool)"
_TEXTUAL = re.compile(
    r"^(text/|application/(json|xml|javascript|[\w.+-]*\+(json|xml)))", re.IGNORECASE
)

_STRIP_PREFIXES = ("PYRA_", "WATCHDOG_", "LISTEN_")
_STRIP_NAMES = frozenset(
    {"NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "LITELLM_MASTER_KEY"}
    | {p.api_key_env for p in PROVIDERS.values() if p.api_key_env}
)
_CREDENTIAL = re.compile(
    r"(API_?KEY|ACCESS_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL)", re.IGNORECASE
)


def child_env(environ: Mapping[str, str], pass_env: frozenset[str] = frozenset()) -> dict[str, str]:
    """The environment a command runs with: *environ* without Pyra's and systemd's variables
    and without anything credential-shaped, except the names in *pass_env*."""
    env: dict[str, str] = {}
    for name, value in environ.items():
        if name not in pass_env and (
            name.startswith(_STRIP_PREFIXES) or name in _STRIP_NAMES or _CREDENTIAL.search(name)
        ):
            continue
        env[name] = value
    return env


def _setting(ctx: PluginContext, key: str) -> Any:
    return ctx.config().get(key, DEFAULTS[key])


def _path(raw: str) -> Path:
    """``~`` expanded; a relative path is taken from the person's home folder."""
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else Path.home() / path


def _clip(data: bytes, limit: int, total: int | None = None) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    total = len(data) if total is None else total
    if total > limit:
        text += f"\n[… {total - limit} more bytes not shown]"
    return text


# --- run_command ---------------------------------------------------------------------------


class _Capture:
    """Keeps the first *limit* bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    async def drain(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                chunk = await stream.receive()
                self.total += len(chunk)
                room = self.limit - len(self.data)
                if room > 0:
                    self.data += chunk[:room]

    def text(self) -> str:
        return _clip(bytes(self.data), self.limit, self.total)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _report(status: int | None, out: _Capture, err: _Capture) -> str:
    parts = [f"exit status: {status}"]
    if out.total:
        parts.append("--- stdout ---\n" + out.text())
    if err.total:
        parts.append("--- stderr ---\n" + err.text())
    if not out.total and not err.total:
        parts.append("(no output)")
    return "\n".join(parts)


@tool(requires_approval=True, timeout=DEFAULTS["max_timeout"] + 30)
async def run_command(
    ctx: PluginContext,
    command: list[str],
    shell: bool = False,
    cwd: str | None = None,
    timeout_seconds: float = 60,
) -> str:
    """Run a program on the person's machine and return its exit status, stdout and stderr.

    Args:
        command: The program and its arguments, e.g. ["ls", "-la", "/tmp"]. With shell=true,
            exactly one string of /bin/sh code, e.g. ["ls | wc -l"].
        shell: Run the single string in command with /bin/sh -c (pipes, globs, redirections).
        cwd: The working folder (default: the person's home folder).
        timeout_seconds: Seconds before the command and everything it started is killed.
    """
    if not command or not all(isinstance(part, str) and part for part in command):
        raise ToolError("command must be a non-empty list of non-empty strings")
    if shell:
        if len(command) != 1:
            raise ToolError('with shell=true, give the shell code as one string: ["a | b"]')
        argv = ["/bin/sh", "-c", command[0]]
    else:
        argv = list(command)
    limit_seconds = float(_setting(ctx, "max_timeout"))
    timeout = min(max(float(timeout_seconds), 0.1), limit_seconds)
    workdir = Path.home() if cwd is None else _path(cwd)
    try:
        workdir = ctx.path_guard.check(workdir)
    except PyraError as exc:
        raise ToolError(str(exc)) from exc
    if not workdir.is_dir():
        raise ToolError(f"the working folder {workdir} does not exist")
    env = child_env(os.environ, frozenset(_setting(ctx, "pass_env")))
    cap = int(_setting(ctx, "max_output_bytes"))
    out, err = _Capture(cap), _Capture(cap)
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolError(f"no such program: {argv[0]}") from exc
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as tg:
                tg.start_soon(out.drain, process.stdout)
                tg.start_soon(err.drain, process.stderr)
            await process.wait()
    finally:
        # Also on cancellation: nothing the command started outlives the call.
        _kill_group(process.pid)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
    if deadline.cancelled_caught:
        raise ToolError(
            f"timed out after {timeout:g} s; the command was killed\n"
            + _report(process.returncode, out, err)
        )
    return _report(process.returncode, out, err)


# --- files ---------------------------------------------------------------------------------


@tool(read_only=True)
async def read_file(ctx: PluginContext, path: str, max_bytes: int = 100_000) -> str:
    """Read a text file.

    Args:
        path: The file, absolute or relative to the person's home folder (~ works).
        max_bytes: Read at most this many bytes from the start of the file.
    """
    limit = max(1, min(int(max_bytes), int(_setting(ctx, "max_read_bytes"))))
    target = _path(path)
    try:
        data, size = await anyio.to_thread.run_sync(ctx.path_guard.read_bytes, target, limit)
    except (OSError, PyraError) as exc:
        raise ToolError(_os_message(exc, target)) from exc
    if b"\0" in data[:8192]:
        return f"{target} is a binary file of {size} bytes; not shown"
    return _clip(data, limit, size)


@tool(read_only=True)
async def list_dir(ctx: PluginContext, path: str, show_hidden: bool = False) -> str:
    """List a folder: one entry per line, folders end with /, symlinks show their target.

    Args:
        path: The folder, absolute or relative to the person's home folder (~ works).
        show_hidden: Include names starting with a dot.
    """
    target = _path(path)
    try:
        entries = await anyio.to_thread.run_sync(ctx.path_guard.list_dir, target)
    except (OSError, PyraError) as exc:
        raise ToolError(_os_message(exc, target)) from exc
    shown = [e for e in entries if show_hidden or not e.name.startswith(".")]
    lines = []
    for entry in shown[:_MAX_ENTRIES]:
        if entry.kind == "dir":
            lines.append(f"{entry.name}/")
        elif entry.kind == "symlink":
            lines.append(f"{entry.name} -> {entry.target}")
        elif entry.kind == "file":
            lines.append(f"{entry.name}  ({entry.size} bytes)")
        else:
            lines.append(f"{entry.name}  (special file)")
    if len(shown) > _MAX_ENTRIES:
        lines.append(f"[… {len(shown) - _MAX_ENTRIES} more entries not shown]")
    header = f"{target}: {len(shown)} entr{'y' if len(shown) == 1 else 'ies'}"
    return "\n".join([header, *lines])


@tool(requires_approval=True)
async def write_file(ctx: PluginContext, path: str, content: str, make_dirs: bool = False) -> str:
    """Create or replace a text file with the given content (written atomically).

    Args:
        path: The file, absolute or relative to the person's home folder (~ works).
        content: The complete new content of the file (UTF-8).
        make_dirs: Create missing parent folders.
    """
    data = content.encode("utf-8")
    limit = int(_setting(ctx, "max_write_bytes"))
    if len(data) > limit:
        raise ToolError(f"the content is {len(data)} bytes; the limit is {limit}")
    target = _path(path)
    try:
        written = await anyio.to_thread.run_sync(
            lambda: ctx.path_guard.write_bytes(target, data, make_parents=make_dirs)
        )
    except (OSError, PyraError) as exc:
        raise ToolError(_os_message(exc, target)) from exc
    return f"wrote {len(data)} bytes to {written}"


def _os_message(exc: OSError | PyraError, path: Path) -> str:
    if isinstance(exc, PyraError):
        return str(exc)
    return f"{path}: {exc.strerror or exc}"


# --- fetch_url -----------------------------------------------------------------------------


@tool(requires_approval=True, timeout=DEFAULTS["max_timeout"] + 30)
async def fetch_url(
    ctx: PluginContext, url: str, max_bytes: int = 200_000, timeout_seconds: float = 20
) -> str:
    """Fetch a web page or file over HTTP(S) and return its status, type and text.

    Args:
        url: An http:// or https:// URL.
        max_bytes: Read at most this many bytes of the body.
        timeout_seconds: Seconds for the whole fetch, redirects included.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError("only http:// and https:// URLs with a host can be fetched")
    limit = max(1, min(int(max_bytes), int(_setting(ctx, "max_fetch_bytes"))))
    seconds = min(max(float(timeout_seconds), 0.1), float(_setting(ctx, "max_timeout")))
    import httpx

    body = bytearray()
    total = 0
    try:
        with anyio.fail_after(seconds):
            async with (
                httpx.AsyncClient(
                    follow_redirects=True,
                    max_redirects=5,
                    timeout=seconds,
                    headers={"User-Agent": _USER_AGENT},
                ) as client,
                client.stream("GET", url) as response,
            ):
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    body += chunk[: max(limit - len(body), 0)]
                    if total > limit:
                        break
    except TimeoutError as exc:
        raise ToolError(f"fetching {url} took longer than {seconds:g} s") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc
    content_type = response.headers.get("content-type", "")
    head = "\n".join(
        [
            f"HTTP {response.status_code} {response.reason_phrase}",
            f"URL: {response.url}",
            f"Content-Type: {content_type or 'unknown'}",
        ]
    )
    if content_type and not _TEXTUAL.match(content_type):
        more = "+" if total > limit else ""
        return f"{head}\n\n(binary content, {total}{more} bytes; not shown)"
    text = bytes(body).decode(response.encoding or "utf-8", errors="replace")
    if total > limit:
        text += f"\n[… truncated at {limit} bytes]"
    return f"{head}\n\n{text}"


plugin = Plugin(
    name="system",
    description="Run commands, read and write files, fetch URLs (risky calls need approval).",
    version="1.0",
    tools=(run_command, read_file, list_dir, write_file, fetch_url),
    config_defaults=DEFAULTS,
)
