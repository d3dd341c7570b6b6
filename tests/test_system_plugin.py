"""The bundled ``system`` plugin with real processes, real files and a real HTTP server.

Tools are called the way the daemon calls them, with a plugin context whose path guard
protects a private Pyra home built in a temporary folder; ``fetch_url`` talks to a server on
127.0.0.1 started by a fixture.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyra_plugin_system import child_env, plugin

from pyra_client.paths import Layout
from pyra_daemon.pathguard import PathGuard
from pyra_daemon.plugin_api import Tool, ToolError

pytestmark = pytest.mark.timeout(30)

TOOLS: dict[str, Tool] = {t.name: t for t in plugin.tools}


@dataclass
class Context:
    """A PluginContext as the daemon builds it, with settings given by the test."""

    path_guard: PathGuard
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "system"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pyra.plugin.system"))

    async def read_secret(self, key: str) -> str | None:
        return None

    async def write_secret(self, key: str, value: str) -> None:
        raise AssertionError("the system plugin stores no secrets")

    def config(self) -> Mapping[str, Any]:
        return {**plugin.config_defaults, **self.settings}


@pytest.fixture
def home(short_dir: Path) -> Layout:
    layout = Layout(short_dir / "pyrahome")
    layout.vault_dir.mkdir(parents=True, mode=0o700)
    (layout.vault_dir / "secrets.age").write_text("encrypted secrets")
    return layout


@pytest.fixture
def ctx(home: Layout) -> Context:
    return Context(path_guard=PathGuard.for_layout(home))


@pytest.fixture
def work(short_dir: Path) -> Path:
    folder = short_dir / "work"
    folder.mkdir()
    return folder


async def call(name: str, ctx: Context, **arguments: Any) -> str:
    tool = TOOLS[name]
    assert tool.context_param == "ctx"
    result = await tool.handler(ctx=ctx, **arguments)
    assert isinstance(result, str)
    return result


def test_tools_declare_their_gates() -> None:
    assert set(TOOLS) == {"run_command", "read_file", "list_dir", "write_file", "fetch_url"}
    for name in ("run_command", "write_file", "fetch_url"):
        assert TOOLS[name].requires_approval
        assert not TOOLS[name].read_only
    for name in ("read_file", "list_dir"):
        assert TOOLS[name].read_only
        assert not TOOLS[name].requires_approval
    schema = TOOLS["run_command"].parameters
    assert schema["properties"]["command"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": schema["properties"]["command"]["description"],
    }
    assert "ctx" not in schema["properties"]
    assert schema["required"] == ["command"]
    assert TOOLS["run_command"].timeout > plugin.config_defaults["max_timeout"]


# --- run_command -----------------------------------------------------------------------------


async def test_run_command_runs_an_argv_without_a_shell(ctx: Context, work: Path) -> None:
    out = await call("run_command", ctx, command=["echo", "hello", "$HOME", "; ls"])
    assert out == "exit status: 0\n--- stdout ---\nhello $HOME ; ls\n"


async def test_run_command_reports_exit_status_and_stderr(ctx: Context) -> None:
    out = await call("run_command", ctx, command=["sh", "-c", "echo oops >&2; exit 3"])
    assert out == "exit status: 3\n--- stderr ---\noops\n"
    assert await call("run_command", ctx, command=["true"]) == "exit status: 0\n(no output)"


async def test_run_command_with_shell_runs_one_string(ctx: Context) -> None:
    out = await call("run_command", ctx, command=["echo a b c | wc -w"], shell=True)
    assert out.split("\n")[2].strip() == "3"
    with pytest.raises(ToolError, match="one string"):
        await call("run_command", ctx, command=["echo", "a"], shell=True)
    with pytest.raises(ToolError, match="non-empty"):
        await call("run_command", ctx, command=[])


async def test_run_command_uses_the_working_folder_and_the_guard(
    ctx: Context, work: Path, home: Layout
) -> None:
    out = await call("run_command", ctx, command=["pwd"], cwd=str(work))
    assert out == f"exit status: 0\n--- stdout ---\n{ctx.path_guard.check(work)}\n"
    with pytest.raises(ToolError, match="private files"):
        await call("run_command", ctx, command=["ls"], cwd=str(home.vault_dir))
    with pytest.raises(ToolError, match="does not exist"):
        await call("run_command", ctx, command=["ls"], cwd=str(work / "missing"))
    with pytest.raises(ToolError, match="no such program: no-such-program-xyz"):
        await call("run_command", ctx, command=["no-such-program-xyz"])


def _gone(pid: int) -> bool:
    """True once *pid* no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def test_run_command_timeout_kills_the_whole_process_group(ctx: Context, work: Path) -> None:
    pidfile = work / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; echo started; wait"
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await call("run_command", ctx, command=[script], shell=True, timeout_seconds=0.5)
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s; the command was killed" in str(caught.value)
    assert "started" in str(caught.value)  # the output so far is kept
    assert _wait_gone(int(pidfile.read_text()))


async def test_cancelling_the_call_kills_the_command(ctx: Context, work: Path) -> None:
    pidfile = work / "child.pid"
    with anyio.move_on_after(0.5):
        await call("run_command", ctx, command=[f"echo $$ > {pidfile}; exec sleep 30"], shell=True)
    assert _wait_gone(int(pidfile.read_text()))


async def test_run_command_caps_each_stream(ctx: Context) -> None:
    ctx.settings["max_output_bytes"] = 1000
    out = await call(
        "run_command", ctx, command=["head -c 200000 /dev/zero | tr '\\0' x"], shell=True
    )
    assert out.split("\n")[2] == "x" * 1000
    assert out.endswith("[… 199000 more bytes not shown]")


async def test_run_command_environment_has_no_secrets(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRA_HOME", "/secret/home")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_leak")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2")
    monkeypatch.setenv("HARMLESS", "visible")
    out = await call("run_command", ctx, command=["env"])
    for leaked in ("PYRA_HOME", "NOTIFY_SOCKET", "sk-leak", "ghp_leak", "hunter2"):
        assert leaked not in out
    assert "HARMLESS=visible" in out
    assert "PATH=" in out
    ctx.settings["pass_env"] = ["GITHUB_TOKEN"]
    out = await call("run_command", ctx, command=["env"])
    assert "GITHUB_TOKEN=ghp_leak" in out
    assert "sk-leak" not in out


def test_child_env_rules() -> None:
    environ = {
        "PATH": "/bin",
        "PYRA_SOCKET": "x",
        "WATCHDOG_USEC": "1",
        "ANTHROPIC_API_KEY": "k",
        "AWS_SECRET_ACCESS_KEY": "k",
        "LANG": "C",
    }
    assert child_env(environ) == {"PATH": "/bin", "LANG": "C"}


async def test_run_command_gives_the_child_no_stdin(ctx: Context) -> None:
    out = await call("run_command", ctx, command=["cat"], timeout_seconds=5)
    assert out == "exit status: 0\n(no output)"


# --- files -----------------------------------------------------------------------------------


async def test_read_file_reads_caps_and_refuses(ctx: Context, work: Path, home: Layout) -> None:
    (work / "notes.md").write_text("# Notes\nline two\n")
    assert await call("read_file", ctx, path=str(work / "notes.md")) == "# Notes\nline two\n"
    (work / "big.txt").write_text("y" * 5000)
    out = await call("read_file", ctx, path=str(work / "big.txt"), max_bytes=100)
    assert out == "y" * 100 + "\n[… 4900 more bytes not shown]"
    (work / "blob.bin").write_bytes(b"\x7fELF\0\0\x01")
    assert "binary file of 7 bytes" in await call("read_file", ctx, path=str(work / "blob.bin"))
    with pytest.raises(ToolError, match="private files"):
        await call("read_file", ctx, path=str(home.vault_dir / "secrets.age"))
    (work / "innocent").symlink_to(home.vault_dir / "secrets.age")
    with pytest.raises(ToolError, match="private files"):
        await call("read_file", ctx, path=str(work / "innocent"))
    with pytest.raises(ToolError, match="No such file"):
        await call("read_file", ctx, path=str(work / "missing.txt"))
    with pytest.raises(ToolError, match="is a folder"):
        await call("read_file", ctx, path=str(work))


async def test_relative_paths_start_at_the_home_folder(
    ctx: Context, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(work))
    (work / "todo.txt").write_text("buy milk\n")
    assert await call("read_file", ctx, path="todo.txt") == "buy milk\n"
    assert await call("read_file", ctx, path="~/todo.txt") == "buy milk\n"


async def test_list_dir_shows_entries_without_following_links(
    ctx: Context, work: Path, home: Layout
) -> None:
    (work / "a.txt").write_text("abc")
    (work / "sub").mkdir()
    (work / ".hidden").write_text("")
    (work / "vault-link").symlink_to(home.vault_dir)
    out = await call("list_dir", ctx, path=str(work))
    assert out.splitlines() == [
        f"{work}: 3 entries",
        "a.txt  (3 bytes)",
        "sub/",
        f"vault-link -> {home.vault_dir}",
    ]
    assert ".hidden" in await call("list_dir", ctx, path=str(work), show_hidden=True)
    with pytest.raises(ToolError, match="private files"):
        await call("list_dir", ctx, path=str(work / "vault-link"))


async def test_write_file_writes_atomically_and_refuses(
    ctx: Context, work: Path, home: Layout
) -> None:
    target = work / "out.txt"
    out = await call("write_file", ctx, path=str(target), content="héllo\n")
    assert out == f"wrote 7 bytes to {target.resolve()}"
    assert target.read_text() == "héllo\n"
    await call("write_file", ctx, path=str(target), content="replaced")
    assert target.read_text() == "replaced"
    with pytest.raises(ToolError, match="No such file"):
        await call("write_file", ctx, path=str(work / "new" / "x.txt"), content="x")
    await call("write_file", ctx, path=str(work / "new" / "x.txt"), content="x", make_dirs=True)
    assert (work / "new" / "x.txt").read_text() == "x"
    with pytest.raises(ToolError, match="private files"):
        await call("write_file", ctx, path=str(home.vault_dir / "secrets.age"), content="x")
    assert (home.vault_dir / "secrets.age").read_text() == "encrypted secrets"
    (work / "link.txt").symlink_to(target)
    with pytest.raises(ToolError, match="symlink"):
        await call("write_file", ctx, path=str(work / "link.txt"), content="x")
    assert target.read_text() == "replaced"
    ctx.settings["max_write_bytes"] = 10
    with pytest.raises(ToolError, match="the limit is 10"):
        await call("write_file", ctx, path=str(target), content="x" * 11)


# --- fetch_url -------------------------------------------------------------------------------


class WebServer:
    """A small site on 127.0.0.1 for fetch_url."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                routes = {
                    "/page": (200, "text/html; charset=utf-8", b"<h1>Hello</h1>"),
                    "/data": (200, "application/json", b'{"ok": true}'),
                    "/big": (200, "text/plain", b"z" * 50_000),
                    "/image": (200, "image/png", b"\x89PNG" + b"\0" * 100),
                    "/missing": (404, "text/plain", b"not here"),
                }
                if self.path == "/slow":
                    time.sleep(3)
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/page")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, kind, body = routes.get(self.path, (200, "text/plain", b"slow"))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    yield server
    server.close()


async def test_fetch_url_returns_status_type_and_text(ctx: Context, web: WebServer) -> None:
    out = await call("fetch_url", ctx, url=web.url("/page"))
    assert out == (
        f"HTTP 200 OK\nURL: {web.url('/page')}\nContent-Type: text/html; charset=utf-8\n\n"
        "<h1>Hello</h1>"
    )
    assert (await call("fetch_url", ctx, url=web.url("/data"))).endswith('{"ok": true}')
    moved = await call("fetch_url", ctx, url=web.url("/moved"))
    assert f"URL: {web.url('/page')}" in moved
    missing = await call("fetch_url", ctx, url=web.url("/missing"))
    assert missing.startswith("HTTP 404 Not Found")


async def test_fetch_url_caps_size_and_skips_binary(ctx: Context, web: WebServer) -> None:
    out = await call("fetch_url", ctx, url=web.url("/big"), max_bytes=1000)
    assert out.endswith("z" * 1000 + "\n[… truncated at 1000 bytes]")
    image = await call("fetch_url", ctx, url=web.url("/image"))
    assert "(binary content, 104 bytes; not shown)" in image


async def test_fetch_url_time_limit_and_schemes(ctx: Context, web: WebServer) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"longer than 0\.5 s"):
        await call("fetch_url", ctx, url=web.url("/slow"), timeout_seconds=0.5)
    assert time.monotonic() - started < 2.5
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "http://", "javascript:alert(1)"):
        with pytest.raises(ToolError, match="only http"):
            await call("fetch_url", ctx, url=url)
    with pytest.raises(ToolError, match="failed"):
        await call("fetch_url", ctx, url="http://127.0.0.1:9/closed")
