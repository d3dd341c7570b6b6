"""``pyra chat`` on a real pseudo-terminal against a real daemon and the fake LLM.

Each test types into the REPL as a person would (``tests.terminal.Terminal``: a pty with
readline, Ctrl-C as ``\\x03``, Ctrl-D as ``\\x04``) and checks the screen and what the fake
model was sent: streaming, conversation continuity, multi-line input, the built-in and plugin
slash commands, Ctrl-C cancelling a turn but not the REPL, inline approvals and the history.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYRA, TEST_CONFIG, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer
from tests.terminal import Terminal
from tests.test_plugins import write_plugin

pytestmark = pytest.mark.timeout(90)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")

GREETER = """
    from pyra_daemon.plugin_api import Plugin, PluginContext, SlashCommand

    def greet(args: str, ctx: PluginContext) -> str:
        return f"hello {args} from {ctx.name} (level {ctx.config()['level']})"

    def fail(args: str) -> str:
        raise RuntimeError("no luck")

    plugin = Plugin(
        name="greeter",
        commands=[SlashCommand("greet", "Greet someone", greet),
                  SlashCommand("fail", "Always fails", fail)],
        config_defaults={"level": 3},
    )
"""


def plain(text: str) -> str:
    return _ANSI.sub("", text)


@pytest.fixture(scope="module")
def chat_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def chat_daemon(chat_llm: FakeLLMServer) -> Iterator[DaemonHandle]:
    """One daemon for the module: litellm loads once, not once per test."""
    root = Path(tempfile.mkdtemp(prefix="pyra"))
    home = root / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(TEST_CONFIG)
    (home / "config.toml").chmod(0o600)
    write_plugin(home / "plugins", "greeter", GREETER)
    handle = DaemonHandle(home=home, env=clean_env(home))
    handle.start()
    handle.configure(chat_llm.base_url)
    try:
        yield handle
    finally:
        handle.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fake_llm(chat_llm: FakeLLMServer) -> Iterator[FakeLLMServer]:
    """The module's fake model, emptied for each test."""
    chat_llm.reset()
    yield chat_llm
    assert not chat_llm.errors, chat_llm.errors


class Chat:
    """``pyra chat`` on a pty, with helpers that read the screen without escape codes."""

    def __init__(self, daemon: DaemonHandle, *args: str) -> None:
        env = {**daemon.env, "TERM": "xterm", "COLUMNS": "100", "LINES": "40"}
        self.term = Terminal([PYRA, "chat", *args], env)
        self.seen = 0
        self.expect("you> ")

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Wait for *text* after the previous match (in the output without escape codes)."""
        deadline = time.monotonic() + timeout
        while True:
            # Positions before the end are stable: only complete escape codes are removed.
            screen = plain(self.term.output)
            found = screen.find(text, self.seen)
            if found >= 0:
                shown, self.seen = screen[self.seen : found + len(text)], found + len(text)
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} did not appear; the screen shows:\n{screen[self.seen :]}\n"
                    f"(whole output: {self.term.output!r})"
                )
            self.term._read(0.05)

    def send(self, line: str) -> None:
        self.term.send(line)

    def key(self, data: bytes) -> None:
        os.write(self.term.fd, data)

    def quit(self) -> int:
        self.key(b"\x04")
        return self.term.wait(20)


def test_chat_streams_answers_and_continues_the_conversation(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("Hello **there**, friend.", chunk_size=4)
    fake_llm.enqueue_text("Still here.")
    chat = Chat(chat_daemon)
    chat.send("hi")
    assert "Hello there, friend." in chat.expect("you> ")
    chat.send("again?")
    assert "Still here." in chat.expect("you> ")
    second = fake_llm.last_request().body["messages"]
    assert [m["role"] for m in second][-3:] == ["user", "assistant", "user"]
    assert second[-3]["content"] == "hi"
    assert second[-1]["content"] == "again?"
    chat.send("/history")
    history = chat.expect("you> ")
    assert "you:\nhi" in history
    assert "pyra:\nHello **there**, friend." in history
    assert chat.quit() == 0


def test_multi_line_input_with_backslash_and_paste_block(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    chat = Chat(chat_daemon, "--plain")
    chat.send("first line\\")
    chat.expect("...> ")
    chat.send("second line")
    chat.expect("you> ")
    assert fake_llm.last_request().body["messages"][-1]["content"] == "first line\nsecond line"
    chat.send('"""')
    chat.send("def f():")
    chat.send("    return 1\\")
    chat.send('"""')
    chat.expect("you> ")
    assert fake_llm.last_request().body["messages"][-1]["content"] == "def f():\n    return 1\\"
    chat.send("//slash is text")
    chat.expect("you> ")
    assert fake_llm.last_request().body["messages"][-1]["content"] == "/slash is text"
    assert chat.quit() == 0


def test_builtin_and_plugin_slash_commands(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    chat = Chat(chat_daemon)
    chat.send("/help")
    shown = chat.expect("you> ")
    for command in ("/new", "/history", "/tools", "/help", "/quit"):
        assert command in shown
    assert "/greet" in shown
    assert "Greet someone (greeter)" in shown
    chat.send("/greet Ada")
    assert "hello Ada from greeter (level 3)" in chat.expect("you> ")
    chat.send("/fail")
    assert "pyra: /fail failed: RuntimeError: no luck" in chat.expect("you> ")
    chat.send("/nope")
    assert "no command /nope" in chat.expect("you> ")
    chat.send("/tools")
    tools = chat.expect("you> ")
    assert "run_command" in tools
    assert "read_file" in tools
    assert "[read-only, system]" in tools
    chat.send("one")
    chat.expect("you> ")
    chat.send("/new")
    assert "(new conversation)" in chat.expect("you> ")
    chat.send("two")
    chat.expect("you> ")
    messages = fake_llm.last_request().body["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["two"]
    chat.send("/quit")
    assert chat.term.wait(20) == 0


def test_ctrl_c_cancels_the_turn_but_not_the_repl(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("this answer is far too slow", delay=30)
    fake_llm.enqueue_text("quick answer")
    chat = Chat(chat_daemon)
    chat.send("slow please")
    fake_llm.wait_for_requests(1, timeout=60)  # the first turn waits for litellm to load
    started = time.monotonic()
    chat.key(b"\x03")
    chat.expect("(cancelled)")
    assert time.monotonic() - started < 5
    chat.expect("you> ")
    # Ctrl-C at the prompt clears the line. Pressed once readline idles again: CPython's
    # readline notices a SIGINT that lands while it handles a key only at the next key press
    # (a person never types that fast).
    chat.key(b"half-typed line")
    chat.expect("half-typed line")
    time.sleep(0.3)
    chat.key(b"\x03")
    chat.expect("you> ")
    chat.send("and now?")
    assert "quick answer" in chat.expect("you> ")
    assert chat.quit() == 0
    with chat_daemon.connect() as conn:
        from pyra_client.protocol import ConversationListParams, ConversationListResult

        listed = conn.call("conversations.list", ConversationListParams(), ConversationListResult)
    assert listed.conversations  # the daemon is fine and kept the conversation


def test_inline_approval_of_a_tool_call(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer, short_dir: Path
) -> None:
    target = short_dir / "approved.txt"
    fake_llm.enqueue_tool_calls(
        [("write_file", {"path": str(target), "content": "written after approval\n"})]
    )
    fake_llm.enqueue_text("Done, the file is written.")
    chat = Chat(chat_daemon)
    chat.send("please write the file")
    prompt = chat.expect("[d]eny")
    assert "Approval needed: write_file" in prompt
    assert str(target) in prompt
    assert "written after approval" in prompt
    chat.send("a")
    assert "Done, the file is written." in chat.expect("you> ")
    assert target.read_text() == "written after approval\n"
    assert chat.quit() == 0


def test_history_file_is_private_and_kept_between_sessions(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    chat = Chat(chat_daemon, "--plain")
    chat.send("remember this line")
    chat.expect("you> ")
    assert chat.quit() == 0
    history = chat_daemon.home / "chat_history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert "remember this line" in history.read_text()
    # --continue picks the last conversation up; arrow up recalls the last session's line.
    again = Chat(chat_daemon, "--plain", "--continue")
    again.key(b"\x1b[A")
    again.key(b"\n")
    again.expect("you> ")
    users = [m["content"] for m in fake_llm.last_request().body["messages"] if m["role"] == "user"]
    assert users == ["remember this line", "remember this line"]
    assert again.quit() == 0


def test_chat_without_a_terminal_reads_lines_and_prints_plain_text(
    chat_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("piped **answer**")
    result = chat_daemon.cli("chat", input="hello\n/greet Bob\n")
    assert result.returncode == 0, result.stderr
    assert "piped **answer**" in result.stdout
    assert "hello Bob from greeter" in result.stdout
    assert "\x1b[" not in result.stdout
