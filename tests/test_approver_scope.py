"""An approver scoped to its own conversations (a bot with no approver chat) does not count as
"someone who could answer" for other frontends' requests: those are still denied at once."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec

from pyra_client.connection import AsyncConnection
from pyra_client.protocol import (
    Interaction,
    InteractionSubscribeParams,
    InteractionSubscribeResult,
)
from pyra_daemon.broker import NO_APPROVER_REASON
from tests.conftest import DaemonHandle
from tests.fakes.llm_server import FakeLLMServer


async def _ask_from_the_cli(daemon: DaemonHandle, target: Path) -> str:
    result = await anyio.to_thread.run_sync(lambda: daemon.cli("ask", "--no-approve", "write"))
    assert result.returncode == 0, result.stderr
    assert not await anyio.Path(target).exists()
    return result.stdout


async def test_an_own_scoped_approver_leaves_other_frontends_requests_to_the_fast_deny(
    daemon: DaemonHandle, fake_llm: FakeLLMServer, short_dir: Path
) -> None:
    target = short_dir / "scoped.txt"
    fake_llm.enqueue_tool_calls([("write_file", {"path": str(target), "content": "x"})])
    fake_llm.enqueue_text("not allowed")
    async with await AsyncConnection.open(daemon.layout, client="telegram") as bot:
        await bot.request(
            "interactions.subscribe",
            InteractionSubscribeParams(scope="own"),
            InteractionSubscribeResult,
        )
        with anyio.fail_after(60):
            assert await _ask_from_the_cli(daemon, target) == "not allowed\n"
    tool_messages = [m for m in fake_llm.last_request().body["messages"] if m["role"] == "tool"]
    assert NO_APPROVER_REASON in tool_messages[0]["content"]


async def test_an_all_scoped_approver_receives_and_answers_other_frontends_requests(
    daemon: DaemonHandle, fake_llm: FakeLLMServer, short_dir: Path
) -> None:
    target = short_dir / "approved.txt"
    fake_llm.enqueue_tool_calls([("write_file", {"path": str(target), "content": "yes"})])
    fake_llm.enqueue_text("written")
    async with await AsyncConnection.open(daemon.layout, client="telegram") as bot:
        await bot.request(
            "interactions.subscribe",
            InteractionSubscribeParams(scope="all"),
            InteractionSubscribeResult,
        )

        async def approve_first_request() -> None:
            async for method, raw in bot.notifications():
                if method == "interaction.request":
                    request = msgspec.json.decode(raw, type=Interaction)
                    assert request.tool == "write_file"
                    await bot.request(
                        "interactions.answer", {"id": request.id, "decision": "allow"}, dict
                    )
                    return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(approve_first_request)
                result = await anyio.to_thread.run_sync(
                    lambda: daemon.cli("ask", "--no-approve", "write")
                )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "written\n"
    assert await anyio.Path(target).read_text() == "yes"
