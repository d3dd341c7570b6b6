"""The provider key never leaks: a whole scripted session, then a search of everything.

One real daemon, the real CLI and litellm over HTTP to a fake that requires the key. The key
is a distinctive canary that none of the key-shaped patterns in the redactors match, so only
the value-based redaction (the vault registering every value it hands out) can hide it. The
session: ``pyra setup --api-key-stdin --check``, plain and streamed asks, a tool call, a
continued conversation, a 401 and a 500 whose messages quote the key (as careless providers
do), a stream cut mid-way, and the read-only commands. Then the canary is searched, as raw
bytes, in every file under ``$PYRA_HOME`` (database, WAL, logs, config, vault files), the
daemon's stderr, every CLI output, every request the fake received apart from its
Authorization header, and ``/proc/<daemon pid>/environ`` and ``cmdline``: zero hits.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyra_client.errors import ExitCode
from tests.conftest import DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer

#: Distinctive, and shaped like no known key (no "sk-", "Bearer" or "key=" prefix).
KEY = "PyraLeakCanary" + secrets.token_hex(16)


@pytest.fixture
def keyed_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(require_key=KEY) as server:
        yield server
        assert not server.errors, server.errors


def files_under(root: Path) -> dict[Path, bytes]:
    found: dict[Path, bytes] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            found[path] = path.read_bytes()
    return found


def hits(blobs: dict[str, bytes]) -> list[str]:
    canary = KEY.encode()
    return [name for name, data in blobs.items() if canary in data]


def test_a_full_session_leaves_the_key_nowhere(pyra_home: Path, keyed_llm: FakeLLMServer) -> None:
    env = clean_env(pyra_home)
    del env["FAKE_KEY"]
    daemon = DaemonHandle(home=pyra_home, env=env)
    daemon.start()
    outputs: list[subprocess.CompletedProcess[str]] = []

    def cli(*args: str, code: int = 0, stdin: str | None = None) -> str:
        result = daemon.cli(*args, input=stdin)
        outputs.append(result)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result.stdout

    try:
        cli(
            "setup",
            "--provider",
            "openai-compatible",
            "--model",
            "fake-model",
            "--base-url",
            keyed_llm.base_url,
            "--api-key-stdin",
            "--check",
            stdin=KEY + "\n",
        )
        keyed_llm.enqueue_text("The first answer.", chunk_size=3)
        assert cli("ask", "hello there") == "The first answer.\n"
        keyed_llm.enqueue_tool_calls([("get_weather", {"city": "Paris"})])
        keyed_llm.enqueue_text("No such tool, so no weather.")
        cli("ask", "--json", "weather in Paris?")
        keyed_llm.enqueue_text("Continued.")
        cli("ask", "-c", "and tomorrow?")

        keyed_llm.enqueue_error(
            401, f"Incorrect API key provided: {KEY}. You can find your API key somewhere."
        )
        cli("ask", "fails: auth", code=ExitCode.PROVIDER_AUTH)
        keyed_llm.enqueue_error(500, f"upstream exploded while using {KEY} (request 42)")
        cli("ask", "fails: server", code=ExitCode.PROVIDER)
        keyed_llm.enqueue_cut("a partial answer that never ends", after_chunks=2)
        cli("ask", "fails: cut", code=ExitCode.PROVIDER)
        keyed_llm.enqueue_text("Recovered.")
        assert cli("ask", "-c", "again") == "Recovered.\n"

        conversations = json.loads(cli("conversations", "list", "--json"))
        for conversation in conversations:
            cli("conversations", "export", conversation["id"])
        cli("vault", "list")
        status = json.loads(cli("vault", "status", "--json"))
        cli("config", "show")
        cli("status")

        # The key did its job: every chat request carried it, in the header only.
        chats = [r for r in keyed_llm.requests if r.path == "/v1/chat/completions"]
        assert len(chats) >= 9
        assert {r.headers["authorization"] for r in chats} == {f"Bearer {KEY}"}

        # The daemon cannot be dumped or traced: the vault reports PR_SET_DUMPABLE from the
        # inside (as root, /proc cannot tell), and the core size limit shows from outside.
        assert status["hardened"] is True
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        (core,) = [line for line in limits.splitlines() if line.startswith("Max core file size")]
        assert core.split()[4:6] == ["0", "0"]

        process = {
            "environ": Path(f"/proc/{daemon.pid}/environ").read_bytes(),
            "cmdline": Path(f"/proc/{daemon.pid}/cmdline").read_bytes(),
        }
        running = files_under(pyra_home)
    finally:
        daemon.stop()
    stopped = files_under(pyra_home)

    names = {path.name for path in stopped}
    assert {"config.toml", "pyra.db", "secrets.age", "identity.txt"} <= names
    assert any(path.suffix == ".log" or path.name.endswith(".log") for path in stopped)
    assert "pyra.db-wal" in {path.name for path in running}

    blobs: dict[str, bytes] = {}
    blobs.update({f"running:{path}": data for path, data in running.items()})
    blobs.update({f"stopped:{path}": data for path, data in stopped.items()})
    blobs["daemon stderr"] = daemon.stderr_path.read_bytes()
    blobs.update({f"/proc/pid/{name}": data for name, data in process.items()})
    for number, result in enumerate(outputs):
        blobs[f"cli {number} {result.args[1:3]}"] = (result.stdout + result.stderr).encode()
    for number, request in enumerate(keyed_llm.requests):
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        blobs[f"request {number} {request.path}"] = request.raw + json.dumps(headers).encode()
    assert hits(blobs) == []

    # The search itself works: the canary in one place is found there.
    assert hits({"planted": b"x" + KEY.encode() + b"y"}) == ["planted"]
