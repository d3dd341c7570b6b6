"""The daemon as a process: one per home, where its socket lives, signals, crashes, config
errors, the ``pyra daemon`` and ``pyra conversations`` commands, and what it keeps on disk.

Every daemon here is a real ``python -m pyra_daemon`` (or one ``pyra daemon start`` spawned)
talking to the fake LLM over HTTP; each is stopped by its own PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from pyra_client import __version__
from pyra_client.errors import ExitCode
from pyra_client.paths import MAX_SOCKET_PATH, Layout, read_endpoint
from pyra_client.protocol import (
    AskParams,
    AskResult,
    ConversationIdParams,
    ConversationShowResult,
    Empty,
    SetupParams,
    SetupResult,
    StatusResult,
)
from tests.conftest import PYRA, TEST_CONFIG, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.slow

DEFAULT_SYSTEM_PROMPT_START = "You are Pyra"


# --- Helpers ---------------------------------------------------------------------------------


def write_config(home: Path, **sections: dict[str, Any]) -> None:
    """TEST_CONFIG with *sections* merged in (``llm={...}, daemon={...}``), mode 0600."""
    data = tomllib.loads(TEST_CONFIG)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = home / "config.toml"
    path.write_text(tomli_w.dumps(data))
    path.chmod(0o600)


def edit_config(home: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = home / "config.toml"
    data = tomllib.loads(path.read_text())
    edit(data)
    path.write_text(tomli_w.dumps(data))


def new_home(short_dir: Path, *parts: str) -> Path:
    home = short_dir.joinpath(*parts, "home")
    home.mkdir(mode=0o700, parents=True)
    write_config(home)
    return home


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """True once *pid* has exited (a zombie not yet reaped by init counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as proc:
            return proc.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def log_text(home: Path) -> str:
    try:
        return Layout(home).log_file.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def run_daemon_once(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyra_daemon`` in the foreground, expecting it to exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "pyra_daemon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def home_tag(home: Path) -> str:
    return hashlib.sha256(os.fsencode(home.resolve())).hexdigest()[:12]


def ask(handle: DaemonHandle, prompt: str, conversation: str | None = None) -> AskResult:
    with handle.connect() as conn:
        return conn.call("ask", AskParams(prompt=prompt, conversation=conversation), AskResult)


def show(handle: DaemonHandle, conversation: str) -> ConversationShowResult:
    with handle.connect() as conn:
        return conn.call(
            "conversations.show", ConversationIdParams(id=conversation), ConversationShowResult
        )


def status(handle: DaemonHandle) -> StatusResult:
    with handle.connect() as conn:
        return conn.call("status", Empty(), StatusResult)


def assert_withdrawn(layout: Layout, socket_path: str) -> None:
    assert not layout.pid_file.exists()
    assert not layout.endpoint_file.exists()
    assert not layout.token_file.exists()
    assert not os.path.exists(socket_path)


@pytest.fixture
def daemons(fake_llm: FakeLLMServer) -> Iterator[Callable[..., DaemonHandle]]:
    """A factory of started, configured daemons (``home``, optional ``env``), all stopped after."""
    started: list[DaemonHandle] = []

    def start(
        home: Path, env: dict[str, str] | None = None, configure: bool = True
    ) -> DaemonHandle:
        handle = DaemonHandle(home=home, env=env or clean_env(home))
        started.append(handle)
        handle.start()
        if configure:
            handle.configure(fake_llm.base_url)
        return handle

    yield start
    for handle in started:
        if handle.process is not None and handle.process.poll() is None:
            handle.stop()


def stream_in_background(
    handle: DaemonHandle, prompt: str, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``pyra ask`` in the background, returned once the answer has started to stream, with
    what it printed so far. Unbuffered: whatever is not read here is left for communicate()."""
    process = subprocess.Popen(
        [PYRA, "ask", *args, prompt],
        env=handle.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        bufsize=0,
    )
    assert process.stdout is not None
    head = b""
    while len(head) < 5:
        chunk = process.stdout.read(5 - len(head))
        assert chunk, process.stderr.read() if process.stderr else b""
        head += chunk
    assert head == b"slow "
    return process, head.decode()


def finish(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """The rest of a background ask's stdout and its stderr, once it has exited."""
    out, err = process.communicate(timeout=30)
    return out.decode(), err.decode()


# --- One daemon per home ---------------------------------------------------------------------


def test_a_second_daemon_on_the_same_home_refuses_to_start(daemon: DaemonHandle) -> None:
    socket_path = read_endpoint(daemon.layout).path
    second = run_daemon_once(daemon.env)
    assert second.returncode != 0
    assert re.search(rf"already running.*\(pid {daemon.pid}\)", second.stderr), second.stderr
    # The first one is untouched: same PID file, same socket, still answering.
    assert daemon.layout.pid_file.read_text().strip() == str(daemon.pid)
    assert os.path.exists(socket_path)
    assert status(daemon).pid == daemon.pid


def test_a_stale_pid_file_is_detected_and_replaced(
    pyra_home: Path, daemons: Callable[..., DaemonHandle]
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = Layout(pyra_home).pid_file
    pid_file.write_text(f"{dead.pid}\n")
    pid_file.chmod(0o600)
    handle = daemons(pyra_home)
    assert pid_file.read_text().strip() == str(handle.pid)
    assert f"removed a stale PID file (pid {dead.pid}" in log_text(pyra_home)
    assert status(handle).pid == handle.pid


# --- Where the socket lives ------------------------------------------------------------------


def test_a_deep_home_falls_back_to_a_short_socket_in_tmpdir(
    short_dir: Path, daemons: Callable[..., DaemonHandle]
) -> None:
    home = new_home(short_dir, "d" * 60, "e" * 60)
    assert len(os.fsencode(home / "run" / "pyra.sock")) > MAX_SOCKET_PATH
    tmpdir = short_dir / "tmp"
    tmpdir.mkdir()
    env = {**clean_env(home), "TMPDIR": str(tmpdir)}
    handle = daemons(home, env)
    expected = tmpdir / f"pyra-{os.getuid()}" / f"{home_tag(home)}.sock"
    endpoint = read_endpoint(handle.layout)
    assert endpoint.path == str(expected)
    assert stat.S_ISSOCK(expected.stat().st_mode)
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700
    # The CLI finds it through endpoint.json, and without it by computing the same path.
    result = handle.cli("status", "--json", "--no-autostart")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoint"] == f"unix:{expected}"
    endpoint_file = handle.layout.endpoint_file
    endpoint_file.rename(endpoint_file.with_suffix(".moved"))
    result = handle.cli("status", "--json", "--no-autostart")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == handle.pid
    assert handle.stop() == 0
    assert not expected.exists()


def test_a_socket_path_over_the_limit_is_a_clear_error(pyra_home: Path, short_dir: Path) -> None:
    too_long = short_dir / ("x" * 120) / "pyra.sock"
    env = {**clean_env(pyra_home), "PYRA_SOCKET": str(too_long)}
    result = run_daemon_once(env)
    assert result.returncode == ExitCode.USAGE, result.stderr
    message = f"socket path is {len(os.fsencode(too_long))} bytes; the limit is {MAX_SOCKET_PATH}"
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not Layout(pyra_home).pid_file.exists()
    # The client refuses the same path with the same words, in one line.
    client = subprocess.run(
        [PYRA, "status", "--no-autostart"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert client.returncode == ExitCode.USAGE
    assert message in client.stderr
    assert client.stderr.count("\n") == 1


def test_an_explicit_socket_path_is_used(
    pyra_home: Path, short_dir: Path, daemons: Callable[..., DaemonHandle]
) -> None:
    path = short_dir / "elsewhere" / "p.sock"
    handle = daemons(pyra_home, {**clean_env(pyra_home), "PYRA_SOCKET": str(path)})
    assert read_endpoint(handle.layout).path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert status(handle).endpoint == f"unix:{path}"


def test_xdg_runtime_dir_is_honoured(
    pyra_home: Path, short_dir: Path, daemons: Callable[..., DaemonHandle]
) -> None:
    runtime = short_dir / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**clean_env(pyra_home), "XDG_RUNTIME_DIR": str(runtime)}
    handle = daemons(pyra_home, env)
    expected = runtime / "pyra" / f"{home_tag(pyra_home)}.sock"
    assert read_endpoint(handle.layout).path == str(expected)
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700
    assert not (pyra_home / "run" / "pyra.sock").exists()
    result = handle.cli("status", "--json", "--no-autostart")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoint"] == f"unix:{expected}"
    assert handle.stop() == 0
    assert not expected.exists()


# --- Signals and crashes ---------------------------------------------------------------------


def test_sigterm_lets_a_running_turn_finish_within_the_grace(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    socket_path = read_endpoint(daemon.layout).path
    answer = "slow " * 20
    fake_llm.enqueue_text(answer, chunk_size=5, delay=0.05)  # ~1 s, the grace is 5 s
    client, head = stream_in_background(daemon, "finish this")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    out, err = finish(client)
    assert client.returncode == 0, err
    assert head + out == answer + "\n"
    assert daemon.process.wait(timeout=30) == 0
    assert_withdrawn(daemon.layout, socket_path)
    log = log_text(daemon.home)
    assert "received SIGTERM" in log
    assert "1 turn(s) running" in log
    assert log.rstrip().endswith("stopped")


def test_sigterm_cancels_a_turn_that_outlasts_the_grace(
    pyra_home: Path, fake_llm: FakeLLMServer, daemons: Callable[..., DaemonHandle]
) -> None:
    write_config(pyra_home, daemon={"shutdown_grace": 1})
    handle = daemons(pyra_home)
    socket_path = read_endpoint(handle.layout).path
    fake_llm.enqueue_text("slow " * 800, chunk_size=5, delay=0.05)  # ~40 s
    client, _ = stream_in_background(handle, "never ends")
    assert handle.process is not None
    began = time.monotonic()
    handle.process.send_signal(signal.SIGTERM)
    assert handle.process.wait(timeout=30) == 0
    assert time.monotonic() - began < 20  # the grace, not the turn (~40 s), bounds the stop
    _, err = finish(client)
    assert client.returncode == ExitCode.UNREACHABLE, err
    assert "shutting down" in err
    assert_withdrawn(handle.layout, socket_path)
    # The next daemon finds the turn recorded as cancelled, not left running.
    again = daemons(pyra_home, configure=False)
    with again.connect() as conn:
        listed = conn.call("conversations.list", {}, dict)
    conversation = listed["conversations"][0]["id"]
    messages = show(again, conversation).messages
    assert {m.status for m in messages} == {"cancelled"}
    assert messages[-1].role == "assistant"
    assert messages[-1].content.startswith("slow")
    assert "interrupted" not in log_text(pyra_home)


def test_sigkill_mid_turn_leaves_it_interrupted_and_out_of_the_history(
    pyra_home: Path, fake_llm: FakeLLMServer, daemons: Callable[..., DaemonHandle]
) -> None:
    handle = daemons(pyra_home)
    fake_llm.enqueue_text("first answer")
    first = ask(handle, "first question")
    fake_llm.enqueue_text("slow " * 400, chunk_size=5, delay=0.05)
    client, _ = stream_in_background(handle, "doomed question", "-c")
    assert handle.process is not None
    handle.process.kill()
    handle.process.wait(timeout=10)
    _, err = finish(client)
    assert client.returncode == ExitCode.UNREACHABLE, err

    again = daemons(pyra_home, configure=False)
    assert "1 turn(s) were interrupted by the last shutdown" in log_text(pyra_home)
    messages = show(again, first.conversation).messages
    assert [(m.content, m.status) for m in messages] == [
        ("first question", "complete"),
        ("first answer", "complete"),
        ("doomed question", "interrupted"),
    ]
    fake_llm.enqueue_text("next answer")
    result = again.cli("ask", "-c", "next question")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "next answer\n"
    sent = [m["content"] for m in fake_llm.last_request().body["messages"][1:]]
    assert sent == ["first question", "first answer", "next question"]


def test_sighup_reloads_the_config_and_keeps_it_when_the_edit_is_invalid(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    assert daemon.process is not None

    def system_prompt() -> str:
        content: str = fake_llm.last_request().body["messages"][0]["content"]
        return content

    ask(daemon, "before")
    assert system_prompt().startswith(DEFAULT_SYSTEM_PROMPT_START)
    assert " DEBUG " in log_text(daemon.home)

    def reload(data: dict[str, Any]) -> None:
        data["llm"]["system_prompt"] = "You are the reloaded assistant."
        data["daemon"]["log_level"] = "INFO"

    edit_config(daemon.home, reload)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in log_text(daemon.home), "the reload")
    reloaded_at = len(log_text(daemon.home))
    ask(daemon, "after")
    assert system_prompt().startswith("You are the reloaded assistant.")
    # DEBUG lines (one per connection closed, at least) stopped at the new level.
    assert " DEBUG " not in log_text(daemon.home)[reloaded_at:]

    config = daemon.home / "config.toml"
    config.write_text(config.read_text().replace("[llm]", '[llm]\nhistory_tokens = "lots"', 1))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in log_text(daemon.home), "the refused reload")
    refusal = next(
        line for line in log_text(daemon.home).splitlines() if "config not reloaded" in line
    )
    assert "keeping the previous one" in refusal
    assert "llm.history_tokens" in refusal
    ask(daemon, "still")
    assert system_prompt().startswith("You are the reloaded assistant.")
    assert status(daemon).model == "fake-model"
    assert daemon.process.poll() is None


def test_an_invalid_config_at_start_exits_78_naming_the_key(pyra_home: Path) -> None:
    write_config(pyra_home, llm={"modle": "typo"}, daemon={"shutdown_grace": -1})
    env = clean_env(pyra_home)
    result = run_daemon_once(env)
    assert result.returncode == ExitCode.CONFIG == 78
    assert "llm.modle" in result.stderr
    assert "daemon.shutdown_grace" in result.stderr
    assert "Traceback" not in result.stderr
    layout = Layout(pyra_home)
    assert not layout.pid_file.exists()
    assert not layout.endpoint_file.exists()
    # `pyra daemon start` reports the daemon's own words rather than a timeout.
    started = subprocess.run(
        [PYRA, "daemon", "start"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode != 0
    assert "exit status 78" in started.stderr
    assert "llm.modle" in started.stderr


def test_a_config_that_is_not_toml_exits_78(pyra_home: Path) -> None:
    (pyra_home / "config.toml").write_text("[llm\nmodel = \n")
    result = run_daemon_once(clean_env(pyra_home))
    assert result.returncode == 78
    assert "not valid TOML" in result.stderr


# --- The `pyra daemon` and `pyra status` commands ---------------------------------------------


def test_daemon_start_status_stop_restart(pyra_home: Path) -> None:
    env = clean_env(pyra_home)
    layout = Layout(pyra_home)

    def pyra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYRA, *args], env=env, capture_output=True, text=True, timeout=90, check=False
        )

    def pid_now() -> int:
        return int(layout.pid_file.read_text().strip())

    pids: list[int] = []
    try:
        down = pyra("daemon", "status")
        assert down.returncode == ExitCode.UNREACHABLE
        assert "no Pyra daemon answers" in down.stderr

        started = pyra("daemon", "start")
        assert started.returncode == 0, started.stderr
        pids.append(pid_now())
        endpoint = read_endpoint(layout)
        assert started.stdout.strip() == f"daemon started (pid {pids[0]}) on unix:{endpoint.path}"

        again = pyra("daemon", "start")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"the daemon is already running (pid {pids[0]})"

        shown = pyra("daemon", "status")
        assert shown.returncode == 0, shown.stderr
        assert f"running, pid {pids[0]}" in shown.stdout
        assert f"unix:{endpoint.path}" in shown.stdout
        assert json.loads(pyra("daemon", "status", "--json").stdout)["pid"] == pids[0]

        restarted = pyra("daemon", "restart")
        assert restarted.returncode == 0, restarted.stderr
        pids.append(pid_now())
        assert pids[1] != pids[0]
        assert restarted.stdout.strip() == f"daemon restarted (pid {pids[1]})"
        assert gone(pids[0])

        stopped = pyra("daemon", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "daemon stopped"
        assert gone(pids[1])
        assert_withdrawn(layout, endpoint.path)

        idle = pyra("daemon", "stop")
        assert idle.returncode == 0, idle.stderr
        assert idle.stdout.strip() == "the daemon is not running"
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda pid=pid: gone(pid), f"pid {pid} to exit")


def test_status_json_reports_the_daemon(daemon: DaemonHandle, fake_llm: FakeLLMServer) -> None:
    ask(daemon, "one conversation")
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pid"] == daemon.pid
    assert data["version"] == __version__
    assert data["protocol"] == 1
    assert 0 < data["uptime"] < 600
    assert data["endpoint"] == f"unix:{read_endpoint(daemon.layout).path}"
    assert data["home"] == str(daemon.home)
    assert data["provider"] == "openai-compatible"
    assert data["model"] == "fake-model"
    assert data["conversations"] == 1
    assert 10 * 2**20 < data["rss_bytes"] < 2 * 2**30
    assert data["llm_ready"] is True
    assert data.get("active_turns", 0) == 0  # defaults are omitted on the wire
    human = daemon.cli("status")
    assert human.returncode == 0, human.stderr
    assert f"running, pid {daemon.pid}" in human.stdout
    assert "openai-compatible / fake-model" in human.stdout


# --- What is kept on disk --------------------------------------------------------------------


def _modes(home: Path) -> dict[str, str]:
    """Every path under *home* whose mode is not 0600 (files, sockets) or 0700 (folders)."""
    wrong: dict[str, str] = {}
    for root, dirs, files in os.walk(home):
        for name in [*dirs, *files]:
            path = Path(root) / name
            info = path.lstat()
            wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
            if stat.S_IMODE(info.st_mode) != wanted:
                wrong[str(path.relative_to(home))] = oct(stat.S_IMODE(info.st_mode))
    return wrong


def test_everything_under_the_home_is_private_after_a_session(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    result = daemon.cli("ask", "hello")
    assert result.returncode == 0, result.stderr
    conversation = daemon.cli("conversations", "list", "--json")
    conv_id = json.loads(conversation.stdout)[0]["id"]
    assert daemon.cli("conversations", "export", conv_id).returncode == 0
    socket_path = Path(read_endpoint(daemon.layout).path)
    assert socket_path.is_relative_to(daemon.home)
    assert stat.S_ISSOCK(socket_path.lstat().st_mode)
    home_mode = stat.S_IMODE(daemon.home.stat().st_mode)
    assert home_mode == 0o700
    names = {str(p.relative_to(daemon.home)) for p in daemon.home.rglob("*")}
    assert {"pyra.db", "pyra.pid", "config.toml", "run/endpoint.json", "logs/pyrad.log"} <= names
    assert _modes(daemon.home) == {}
    assert daemon.stop() == 0
    assert _modes(daemon.home) == {}


# --- Conversations from the command line ---------------------------------------------------


def test_conversations_list_show_export_delete(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("Paris is the capital.")
    first = daemon.cli("ask", "--json", "What is the capital of France?")
    first_id = json.loads(first.stdout.splitlines()[-1])["conversation"]
    fake_llm.enqueue_text("Four.")
    second = daemon.cli("ask", "--json", "Two plus two?")
    second_id = json.loads(second.stdout.splitlines()[-1])["conversation"]

    listed = daemon.cli("conversations", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(second_id)  # most recent first
    assert lines[0].endswith("1 turn(s)  Two plus two?")
    assert lines[1].startswith(first_id)
    as_json = json.loads(daemon.cli("conversations", "list", "--json").stdout)
    assert [c["id"] for c in as_json] == [second_id, first_id]

    shown = daemon.cli("conversations", "show", first_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{first_id} — What is the capital of France?\n")
    assert "1 turn(s)" in shown.stdout
    assert "\nyou:\nWhat is the capital of France?\n" in shown.stdout
    assert "\npyra:\nParis is the capital.\n" in shown.stdout

    markdown = daemon.cli("conversations", "export", first_id, "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("# What is the capital of France?\n")
    assert f"`{first_id}`" in markdown.stdout
    assert "## You\n\nWhat is the capital of France?\n" in markdown.stdout
    assert "## Pyra\n\nParis is the capital.\n" in markdown.stdout

    exported = daemon.cli("conversations", "export", first_id, "--format", "json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["conversation"]["id"] == first_id
    assert [(m["role"], m["content"]) for m in document["messages"]] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital."),
    ]

    deleted = daemon.cli("conversations", "delete", first_id, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted {first_id}"
    remaining = json.loads(daemon.cli("conversations", "list", "--json").stdout)
    assert [c["id"] for c in remaining] == [second_id]
    missing = daemon.cli("conversations", "show", first_id)
    assert missing.returncode == ExitCode.NOT_FOUND
    assert f"no conversation '{first_id}'" in missing.stderr
    again = daemon.cli("conversations", "delete", first_id, "--yes")
    assert again.returncode == ExitCode.NOT_FOUND


# --- History budget, usage and cost ---------------------------------------------------------


def test_history_is_trimmed_to_the_token_budget_oldest_turns_first(
    pyra_home: Path, fake_llm: FakeLLMServer, daemons: Callable[..., DaemonHandle]
) -> None:
    write_config(pyra_home, llm={"history_tokens": 256})
    handle = daemons(pyra_home)
    filler = " lorem ipsum dolor sit amet" * 6
    history: list[str] = []
    conversation = None
    for i in range(6):
        question, answer = f"question {i}:{filler}", f"answer {i}:{filler}"
        fake_llm.enqueue_text(answer)
        result = ask(handle, question, conversation)
        conversation = result.conversation
        sent = [m["content"] for m in fake_llm.last_request().body["messages"][1:]]
        assert sent[-1] == question
        kept = sent[:-1]
        # Whole turns, newest kept: what was sent is a suffix of the complete history.
        assert len(kept) % 2 == 0
        assert kept == history[len(history) - len(kept) :]
        if history:
            assert kept[-2:] == history[-2:], "the newest turn must stay"
        history += [question, answer]
    assert "question 0" not in json.dumps(fake_llm.last_request().body["messages"])
    assert len(kept) < len(history) - 2  # something was dropped
    # Nothing is lost: the full conversation is still on record.
    assert conversation is not None
    assert len(show(handle, conversation).messages) == 12


def test_usage_and_cost_are_recorded_per_turn_and_shown(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    # A model litellm has a price for; the fake answers whatever the name.
    with daemon.connect() as conn:
        conn.call(
            "setup",
            SetupParams(
                provider="openai-compatible",
                model="gpt-4o-mini",
                base_url=fake_llm.base_url,
                api_key_env="FAKE_KEY",
            ),
            SetupResult,
        )
    fake_llm.enqueue_text("first", usage=(100_000, 10_000))
    one = json.loads(daemon.cli("ask", "--json", "one").stdout.splitlines()[-1])
    fake_llm.enqueue_text("second", usage=(200_000, 20_000))
    two = json.loads(daemon.cli("ask", "--json", "-c", "two").stdout.splitlines()[-1])
    assert one["conversation"] == two["conversation"]
    assert one["usage"]["prompt_tokens"] == 100_000
    assert two["usage"]["completion_tokens"] == 20_000
    cost_one, cost_two = one["usage"]["cost"], two["usage"]["cost"]
    assert cost_one > 0
    assert cost_two == pytest.approx(2 * cost_one)

    total = cost_one + cost_two
    shown = daemon.cli("conversations", "show", one["conversation"])
    assert shown.returncode == 0, shown.stderr
    assert f"2 turn(s), 300000+30000 tokens, ${total:.4f}" in shown.stdout
    summary = json.loads(daemon.cli("conversations", "show", one["conversation"], "--json").stdout)
    conversation = summary["conversation"]
    assert conversation["prompt_tokens"] == 300_000
    assert conversation["completion_tokens"] == 30_000
    assert conversation["cost"] == pytest.approx(total)
    usage_line = daemon.cli("ask", "--usage", "-c", "three").stderr
    assert re.search(
        r"\d+ prompt \+ \d+ completion tokens · \$\d+\.\d{6} · \S*gpt-4o-mini", usage_line
    )
