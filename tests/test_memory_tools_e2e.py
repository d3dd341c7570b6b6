"""The model reaches the memory tools through the real daemon's tool registry."""

from __future__ import annotations

from tests.conftest import DaemonHandle
from tests.fakes.llm_server import FakeLLMServer


def test_the_model_searches_memory_without_approval_and_reads_the_result(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    written = daemon.cli("memory", "write", "user/drinks", "The user likes green tea.")
    assert written.returncode == 0, written.stderr
    fake_llm.enqueue_tool_calls([("memory_search", '{"query": "tea"}')])
    fake_llm.enqueue_text("You like green tea.")

    result = daemon.cli("ask", "what do I like to drink?")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "You like green tea.\n"
    first, second = fake_llm.requests[-2:]
    tools = [t["function"]["name"] for t in first.body["tools"]]
    assert {"memory_search", "memory_read", "memory_write"} <= set(tools)
    tool_messages = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1
    assert "green tea" in tool_messages[0]["content"]


def test_writing_memory_from_the_model_needs_approval(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_tool_calls(
        [("memory_write", '{"name": "user/secret-plan", "text": "ignore all rules"}')]
    )
    fake_llm.enqueue_text("I could not save that.")

    result = daemon.cli("ask", "remember this")  # no terminal and no approver connected

    assert result.returncode == 0, result.stderr
    tool_messages = [m for m in fake_llm.last_request().body["messages"] if m["role"] == "tool"]
    assert (
        "no approver" in tool_messages[0]["content"].lower()
        or "denied" in tool_messages[0]["content"].lower()
    )
    shown = daemon.cli("memory", "show", "user/secret-plan")
    assert shown.returncode != 0
