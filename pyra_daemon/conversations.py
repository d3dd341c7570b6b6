"""Conversations, turns and messages in SQLite.

A conversation is a sequence of turns; a turn is one prompt and everything the model and its
tools said in answer. A turn starts ``running`` with the user's message recorded, gains
assistant and tool messages as it goes, and ends ``complete``, ``cancelled`` or ``failed`` in
one transaction. Only complete turns feed the model's history, so a crash or cancel mid-turn
never leaves a half-written exchange in the context; turns still ``running`` at start-up
(the daemon died) become ``interrupted``.

This store does not talk to models or trim history; :mod:`pyra_daemon.engine` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from pyra_client.errors import NotFound
from pyra_client.protocol import (
    ConversationShowResult,
    ConversationSummary,
    MessageView,
    TurnUsage,
)
from pyra_daemon.db import Database, Row
from pyra_daemon.llm import ChatMessage, ToolCallRequest

__all__ = ["ConversationStore", "HistoryTurn"]

_SUMMARY_SQL = """
    SELECT c.id, c.title, c.created_at, c.updated_at,
           COUNT(t.id) AS turns,
           COALESCE(SUM(t.prompt_tokens), 0) AS prompt_tokens,
           COALESCE(SUM(t.completion_tokens), 0) AS completion_tokens,
           SUM(t.cost) AS cost
    FROM conversations c LEFT JOIN turns t ON t.conversation_id = c.id
"""


@dataclass(frozen=True)
class HistoryTurn:
    """The messages of one complete turn, oldest first (trimming drops whole turns)."""

    turn_id: int
    messages: list[ChatMessage]


def _summary(row: Row) -> ConversationSummary:
    return ConversationSummary(
        id=row["id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        turns=row["turns"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost=row["cost"],
    )


def _title(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= 72 else line[:71] + "…"


class ConversationStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def exists(self, conversation_id: str) -> bool:
        return (
            await self._db.fetchval("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,))
            is not None
        )

    async def latest(self, kind: str) -> str | None:
        value = await self._db.fetchval(
            "SELECT id FROM conversations WHERE kind = ? ORDER BY updated_at DESC LIMIT 1",
            (kind,),
        )
        return None if value is None else str(value)

    async def count(self) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM conversations"))

    async def recover(self) -> int:
        """Mark turns left ``running`` by a dead daemon as ``interrupted``; returns how many."""
        async with (
            self._db.transaction() as conn,
            conn.execute(
                "UPDATE turns SET status = 'interrupted', finished_at = ?, "
                "error = 'the daemon stopped during this turn' WHERE status = 'running'",
                (self._clock(),),
            ) as cursor,
        ):
            return cursor.rowcount

    async def begin_turn(self, conversation_id: str, kind: str, prompt: str, model: str) -> int:
        """Record the user's message in a new running turn (creating the conversation)."""
        now = self._clock()
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO conversations (id, kind, title, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (conversation_id, kind, _title(prompt), now, now),
            )
            async with conn.execute(
                "INSERT INTO turns (conversation_id, status, model, started_at) "
                "VALUES (?, 'running', ?, ?)",
                (conversation_id, model, now),
            ) as cursor:
                turn_id = int(cursor.lastrowid or 0)
            await conn.execute(
                "INSERT INTO messages (conversation_id, turn_id, role, content, created_at) "
                "VALUES (?, ?, 'user', ?, ?)",
                (conversation_id, turn_id, prompt, now),
            )
        return turn_id

    async def add_messages(
        self, conversation_id: str, turn_id: int, messages: Sequence[ChatMessage]
    ) -> None:
        """Append assistant/tool messages to a running turn (tool rounds)."""
        now = self._clock()
        async with self._db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO messages (conversation_id, turn_id, role, content, tool_calls, "
                "tool_call_id, tool_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        conversation_id,
                        turn_id,
                        m.role,
                        m.content or "",
                        msgspec.json.encode(m.tool_calls).decode() if m.tool_calls else None,
                        m.tool_call_id,
                        m.name,
                        now,
                    )
                    for m in messages
                ],
            )

    async def finish_turn(
        self,
        conversation_id: str,
        turn_id: int,
        *,
        status: str,
        text: str,
        usage: TurnUsage,
        error: str | None = None,
    ) -> None:
        """End a turn in one transaction: its final assistant text, usage and status."""
        now = self._clock()
        async with self._db.transaction() as conn:
            if text or status == "complete":
                await conn.execute(
                    "INSERT INTO messages (conversation_id, turn_id, role, content, created_at) "
                    "VALUES (?, ?, 'assistant', ?, ?)",
                    (conversation_id, turn_id, text, now),
                )
            await conn.execute(
                "UPDATE turns SET status = ?, prompt_tokens = ?, completion_tokens = ?, "
                "cost = ?, error = ?, finished_at = ? WHERE id = ?",
                (
                    status,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cost,
                    error,
                    now,
                    turn_id,
                ),
            )
            await conn.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            )

    async def history(self, conversation_id: str) -> list[HistoryTurn]:
        rows = await self._db.fetchall(
            "SELECT m.turn_id, m.role, m.content, m.tool_calls, m.tool_call_id, m.tool_name "
            "FROM messages m JOIN turns t ON t.id = m.turn_id "
            "WHERE m.conversation_id = ? AND t.status = 'complete' ORDER BY m.id",
            (conversation_id,),
        )
        turns: list[HistoryTurn] = []
        for row in rows:
            if not turns or turns[-1].turn_id != row["turn_id"]:
                turns.append(HistoryTurn(row["turn_id"], []))
            calls = (
                msgspec.json.decode(row["tool_calls"], type=list[ToolCallRequest])
                if row["tool_calls"]
                else None
            )
            turns[-1].messages.append(
                ChatMessage(
                    role=row["role"],
                    content=row["content"],
                    tool_calls=calls,
                    tool_call_id=row["tool_call_id"],
                    name=row["tool_name"],
                )
            )
        return turns

    async def list(self, *, limit: int = 50, kind: str | None = None) -> list[ConversationSummary]:
        where, params = ("WHERE c.kind = ?", [kind]) if kind else ("", [])
        rows = await self._db.fetchall(
            f"{_SUMMARY_SQL} {where} GROUP BY c.id ORDER BY c.updated_at DESC LIMIT ?",
            [*params, max(1, min(limit, 1000))],
        )
        return [_summary(row) for row in rows]

    async def summary(self, conversation_id: str) -> ConversationSummary:
        row = await self._db.fetchone(
            f"{_SUMMARY_SQL} WHERE c.id = ? GROUP BY c.id",
            (conversation_id,),
        )
        if row is None:
            raise NotFound(f"no conversation {conversation_id!r}", id=conversation_id)
        return _summary(row)

    async def show(self, conversation_id: str) -> ConversationShowResult:
        summary = await self.summary(conversation_id)
        rows = await self._db.fetchall(
            "SELECT m.role, m.content, m.created_at, m.turn_id, m.tool_name, m.tool_calls, "
            "t.status FROM messages m JOIN turns t ON t.id = m.turn_id "
            "WHERE m.conversation_id = ? ORDER BY m.id",
            (conversation_id,),
        )
        messages = [
            MessageView(
                role=row["role"],
                content=row["content"] or _describe_calls(row["tool_calls"]),
                created_at=row["created_at"],
                turn=row["turn_id"],
                status=row["status"],
                tool_name=row["tool_name"],
            )
            for row in rows
        ]
        return ConversationShowResult(conversation=summary, messages=messages)

    async def delete(self, conversation_id: str) -> None:
        async with (
            self._db.transaction() as conn,
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)) as cursor,
        ):
            if cursor.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id!r}", id=conversation_id)

    async def export(self, conversation_id: str, fmt: str) -> str:
        shown = await self.show(conversation_id)
        if fmt == "json":
            return msgspec.json.format(msgspec.json.encode(shown).decode(), indent=2) + "\n"
        summary = shown.conversation
        lines = [f"# {summary.title or summary.id}", "", f"Conversation `{summary.id}`", ""]
        for message in shown.messages:
            marker = "" if message.status == "complete" else f" *({message.status})*"
            who = {"user": "You", "assistant": "Pyra", "tool": f"Tool `{message.tool_name}`"}
            lines += [f"## {who.get(message.role, message.role)}{marker}", "", message.content, ""]
        return "\n".join(lines)


def _describe_calls(raw: str | None) -> str:
    if not raw:
        return ""
    calls = json.loads(raw)
    return "\n".join(f"→ {c['name']}({c['arguments']})" for c in calls)
