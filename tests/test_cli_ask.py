"""``pyra ask`` end to end: the real CLI process, a real daemon, litellm over HTTP to the fake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pyra_client.errors import ExitCode
from pyra_client.protocol import ConversationListParams, ConversationListResult
from tests.conftest import FAKE_KEY, PYRA, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer


def test_ask_streams_the_answer_to_a_pipe(daemon: DaemonHandle, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue_text("Hello from the fake model.", chunk_size=4)
    result = daemon.cli("ask", "say hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello from the fake model.\n"
    body = fake_llm.last_request().body
    assert body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": "say hello"}
    assert fake_llm.last_request().headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_each_ask_starts_a_new_conversation_and_continue_reuses_the_last(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("first answer")
    assert daemon.cli("ask", "first").returncode == 0
    fake_llm.enqueue_text("second answer")
    assert daemon.cli("ask", "unrelated").returncode == 0
    assert [m["content"] for m in fake_llm.last_request().body["messages"][1:]] == ["unrelated"]

    fake_llm.enqueue_text("third answer")
    assert daemon.cli("ask", "-c", "follow up").returncode == 0
    history = [m["content"] for m in fake_llm.last_request().body["messages"][1:]]
    assert history == ["unrelated", "second answer", "follow up"]

    with daemon.connect() as conn:
        listed = conn.call("conversations.list", ConversationListParams(), ConversationListResult)
    assert len(listed.conversations) == 2
    first = listed.conversations[-1].id
    fake_llm.enqueue_text("back to the first")
    assert daemon.cli("ask", "--conversation", first, "more").returncode == 0
    history = [m["content"] for m in fake_llm.last_request().body["messages"][1:]]
    assert history == ["first", "first answer", "more"]


def test_prompt_from_stdin_and_combined_with_arguments(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    assert daemon.cli("ask", input="only stdin").returncode == 0
    assert fake_llm.last_request().body["messages"][-1]["content"] == "only stdin"
    assert daemon.cli("ask", "-", input="dash stdin").returncode == 0
    assert fake_llm.last_request().body["messages"][-1]["content"] == "dash stdin"
    assert daemon.cli("ask", "review this", input="diff --git a b").returncode == 0
    assert (
        fake_llm.last_request().body["messages"][-1]["content"] == "review this\n\ndiff --git a b"
    )


def test_no_prompt_is_a_usage_error(daemon: DaemonHandle) -> None:
    result = daemon.cli("ask")
    assert result.returncode == ExitCode.USAGE
    assert "no prompt" in result.stderr
    assert result.stderr.count("\n") == 1


def test_json_prints_ndjson_events_and_the_result(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("one two three", usage=(11, 3))
    result = daemon.cli("ask", "--json", "count")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["text", "text", "text", "result"]
    assert "".join(e["text"] for e in events[:-1]) == "one two three"
    final = events[-1]
    assert final["text"] == "one two three"
    assert final["usage"]["prompt_tokens"] == 11
    assert final["usage"]["completion_tokens"] == 3
    assert final["conversation"].startswith("cli:")


def test_no_stream_and_usage(daemon: DaemonHandle, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue_text("complete answer", usage=(20, 2))
    result = daemon.cli("ask", "--no-stream", "--usage", "q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "complete answer\n"
    assert "20 prompt + 2 completion tokens" in result.stderr
    assert fake_llm.last_request().body["stream"] is True  # the daemon still streams upstream


@pytest.mark.parametrize(
    ("status", "exit_code", "words"),
    [
        (401, ExitCode.PROVIDER_AUTH, "rejected the API key"),
        (429, ExitCode.PROVIDER_RATE_LIMIT, "rate limiting"),
        (500, ExitCode.PROVIDER, "unavailable"),
    ],
)
def test_provider_errors_give_one_line_and_distinct_exit_codes(
    daemon: DaemonHandle, fake_llm: FakeLLMServer, status: int, exit_code: int, words: str
) -> None:
    fake_llm.enqueue_error(status)
    result = daemon.cli("ask", "hi")
    assert result.returncode == exit_code, result.stderr
    assert words in result.stderr
    assert result.stderr.count("\n") == 1
    assert FAKE_KEY not in result.stderr
    # The daemon keeps serving.
    fake_llm.enqueue_text("fine again")
    assert daemon.cli("ask", "again").stdout == "fine again\n"


def test_a_stream_cut_midway_fails_the_turn_and_keeps_history_consistent(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_cut("partial words that never finish", after_chunks=2)
    result = daemon.cli("ask", "tell me")
    assert result.returncode == ExitCode.PROVIDER, result.stderr
    fake_llm.enqueue_text("recovered")
    assert daemon.cli("ask", "-c", "again").returncode == 0
    # The failed turn is not part of the context sent next.
    contents = [m["content"] for m in fake_llm.last_request().body["messages"][1:]]
    assert contents == ["again"]


def test_unreachable_daemon_without_autostart(pyra_home: object, short_dir: object) -> None:
    env = clean_env(pyra_home)  # type: ignore[arg-type]
    result = subprocess.run(
        [PYRA, "ask", "--no-autostart", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == ExitCode.UNREACHABLE
    assert "no Pyra daemon answers" in result.stderr


def test_ask_starts_the_daemon_when_none_runs(pyra_home: object, fake_llm: FakeLLMServer) -> None:
    home = pyra_home
    env = clean_env(home)  # type: ignore[arg-type]
    handle = DaemonHandle(home=home, env=env)  # type: ignore[arg-type]
    setup = handle.cli(
        "setup",
        "--provider",
        "openai-compatible",
        "--model",
        "fake-model",
        "--base-url",
        fake_llm.base_url,
        "--api-key-env",
        "FAKE_KEY",
    )
    try:
        assert setup.returncode == 0, setup.stderr
        assert "starting the daemon" in setup.stderr
        fake_llm.enqueue_text("autostarted")
        result = handle.cli("ask", "hi")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "autostarted\n"
    finally:
        stop = handle.cli("daemon", "stop")
        assert stop.returncode == 0, stop.stderr


def test_ctrl_c_cancels_the_turn_in_the_daemon(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("slow " * 200, chunk_size=5, delay=0.05)
    process = subprocess.Popen(
        [PYRA, "ask", "long story"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    assert process.stdout.read(5) == "slow "  # streaming has begun
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == ExitCode.INTERRUPTED, err
    assert "cancelled" in err
    # The daemon recorded the turn as cancelled and is free for the next one.
    deadline = time.monotonic() + 10
    from pyra_client.protocol import ConversationIdParams, ConversationShowResult

    with daemon.connect() as conn:
        listed = conn.call("conversations.list", ConversationListParams(), ConversationListResult)
        conv = listed.conversations[0].id
        while time.monotonic() < deadline:
            shown = conn.call(
                "conversations.show", ConversationIdParams(id=conv), ConversationShowResult
            )
            if shown.messages[-1].status == "cancelled":
                break
            time.sleep(0.05)
    assert shown.messages[-1].status == "cancelled"
    assert shown.messages[-1].content.startswith("slow ")
    fake_llm.enqueue_text("next")
    assert daemon.cli("ask", "next").stdout == "next\n"
    assert os.path.exists(daemon.layout.pid_file)
