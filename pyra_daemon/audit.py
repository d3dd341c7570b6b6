"""What the approval gate remembers, in SQLite: rules, the audit trail, taint, the security log.

:class:`AuditStore` is the persistent side of the tool-use loop (tables of migration
``m002_tools``):

* ``approval_rules``: the person's "allow always" rules; the store implements
  :class:`~pyra_daemon.approval.RuleStore`, so :class:`~pyra_daemon.approval.RulePolicy` and
  :class:`~pyra_daemon.approval.AskHost` use it directly.
* ``approval_events``: every interaction request and its decision (:meth:`record_interaction`
  is the broker's ``audit`` callable).
* ``tool_calls``: one row per tool call: tool, arguments, decision, who decided and from which
  frontend, duration and a preview of the result (:meth:`record_call`).
* ``tainted_conversations``: conversations that hold untrusted content (:meth:`taint`).
* ``security_log``: injection-scanner hits and other security events (:meth:`security_event`).

Writes go through :meth:`~pyra_daemon.db.Database.transaction`, so with the database's
``synchronous=FULL`` every acknowledged record survives a crash or a power cut. One exception,
for latency: while :meth:`AuditStore.run` runs (the daemon starts it), interaction records are
queued and written by it in batches, milliseconds later, and drained at shutdown; a crash may
lose the last few of those, never a ``tool_calls`` row (written before the model sees the
result), which records each call's decision too. Two reads on
every tool call's path are cached, since this store is the only writer of their tables: the
rules (reloaded after each change) and the conversations known *not* to be tainted (a bounded
set; a tainted answer is always read from the table, so deleting a conversation clears it).

What this module deliberately does not do: decide anything (policies and the executor do), scan
text (:mod:`pyra_daemon.injection`), or rotate its tables (they grow by a few rows per tool call;
pruning is a later, explicit command).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pyra_client.errors import NotFound
from pyra_daemon.approval import Rule, rule_matches
from pyra_daemon.broker import AuditRecord
from pyra_daemon.db import Database, Row
from pyra_daemon.injection import VERSION, Finding

__all__ = ["AuditStore", "SecurityEvent", "ToolCallRecord"]

log = logging.getLogger(__name__)

_PREVIEW_CHARS = 500
#: Conversations remembered as not tainted (the rest are looked up).
_CLEAN_CACHE = 4096
#: Interaction records waiting for the background writer; when full, callers write directly.
_QUEUE_SIZE = 10_000


class ToolCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One finished tool call, as the audit keeps it.

    ``decision`` is ``allow``/``always``/``deny`` or ``error`` (the call never reached the gate:
    unknown tool, invalid arguments); ``decided_by`` is an approver id (``cli:conn-3``) or
    ``system``; ``frontend`` is the approver's kind (``cli``, ``telegram``) when a person
    decided.
    """

    call_id: str
    conversation: str | None
    request: str | None
    origin: str | None
    tool: str
    plugin: str = ""
    arguments: str
    decision: str
    decided_by: str | None
    frontend: str | None
    reason: str = ""
    flags: list[str] = msgspec.field(default_factory=list)
    ok: bool
    duration_ms: float
    result_preview: str = ""
    started_at: float


class SecurityEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A row of the security log."""

    id: int
    at: float
    kind: str
    source: str
    conversation: str | None
    tool: str | None
    detail: str
    findings: list[Finding]


def _drain(receive: MemoryObjectReceiveStream[AuditRecord]) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    while True:
        try:
            records.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return records


def _rule(row: Row) -> Rule:
    return Rule(
        id=row["id"], tool=row["tool"], pattern=row["pattern"], created_at=row["created_at"]
    )


class AuditStore:
    """Rules, audit trail, taint and security log over one :class:`Database` (see module doc)."""

    def __init__(self, db: Database, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall
        self._rules: builtins.list[Rule] | None = None
        self._queue: MemoryObjectSendStream[AuditRecord] | None = None
        self._clean: OrderedDict[str, None] = OrderedDict()

    # --- RuleStore -------------------------------------------------------------------------

    async def list(self) -> builtins.list[Rule]:
        if self._rules is None:
            rows = await self._db.fetchall(
                "SELECT id, tool, pattern, created_at FROM approval_rules ORDER BY id"
            )
            self._rules = [_rule(row) for row in rows]
        return builtins.list(self._rules)

    async def add(self, tool: str, pattern: str | None = None) -> Rule:
        async with self._db.transaction() as conn:
            async with conn.execute(
                "SELECT id, tool, pattern, created_at FROM approval_rules "
                "WHERE tool = ? AND IFNULL(pattern, '') = IFNULL(?, '')",
                (tool, pattern),
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                return _rule(row)
            now = self._wall()
            async with conn.execute(
                "INSERT INTO approval_rules (tool, pattern, created_at) VALUES (?, ?, ?)",
                (tool, pattern, now),
            ) as cursor:
                rule_id = int(cursor.lastrowid or 0)
        self._rules = None
        log.info("approval rule %d added: %s %r", rule_id, tool, pattern)
        return Rule(id=rule_id, tool=tool, pattern=pattern, created_at=now)

    async def remove(self, rule_id: int) -> None:
        async with (
            self._db.transaction() as conn,
            conn.execute("DELETE FROM approval_rules WHERE id = ?", (rule_id,)) as cursor,
        ):
            if cursor.rowcount == 0:
                raise NotFound(f"no approval rule {rule_id}", rule_id=rule_id)
        self._rules = None
        log.info("approval rule %d revoked", rule_id)

    async def match(self, tool: str, arguments: str) -> Rule | None:
        for rule in await self.list():
            if rule_matches(rule, tool, arguments):
                return rule
        return None

    # --- audit -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write interaction records in the background, batched, until cancelled.

        While this runs, :meth:`record_interaction` only queues, keeping two fsyncs off the
        path between a request and the person's answer reaching the tool. Cancelling drains the
        queue (shielded) before returning; a batch being written is never cut short.
        """
        send, receive = anyio.create_memory_object_stream[AuditRecord](_QUEUE_SIZE)
        self._queue = send
        task_status.started()
        try:
            while True:
                batch = [await receive.receive()]
                batch.extend(_drain(receive))
                # Shielded: a batch is never cut short; a failing one is logged and dropped,
                # not allowed to take the writer (and the daemon) down.
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._write_interactions(batch)
        finally:
            self._queue = None
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                rest = _drain(receive)
                if rest:
                    await self._write_interactions(rest)
            send.close()
            receive.close()

    async def record_interaction(self, record: AuditRecord) -> None:
        """The broker's ``audit`` callable: one row per request raised and per decision.

        Queued for :meth:`run` when it is running (and has room), written at once otherwise.
        """
        if self._queue is not None:
            try:
                self._queue.send_nowait(record)
            except anyio.WouldBlock:
                pass
            else:
                return
        await self._write_interactions([record])

    async def _write_interactions(self, records: Sequence[AuditRecord]) -> None:
        try:
            async with self._db.transaction() as conn:
                await conn.executemany(
                    "INSERT INTO approval_events (request_id, event, kind, tool, arguments, "
                    "conversation_id, origin, flags, decision, decided_by, reason, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.request_id,
                            r.event,
                            r.kind,
                            r.tool,
                            r.arguments,
                            r.conversation,
                            r.origin,
                            json.dumps(r.flags),
                            r.decision,
                            r.by,
                            r.reason,
                            r.at,
                        )
                        for r in records
                    ],
                )
        except Exception:
            log.exception("could not write %d approval audit record(s)", len(records))
            raise

    async def record_call(self, record: ToolCallRecord) -> None:
        await self._db.execute(
            "INSERT INTO tool_calls (call_id, conversation_id, request, origin, tool, plugin, "
            "arguments, decision, decided_by, frontend, reason, flags, ok, duration_ms, "
            "result_preview, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.call_id,
                record.conversation,
                record.request,
                record.origin,
                record.tool,
                record.plugin,
                record.arguments,
                record.decision,
                record.decided_by,
                record.frontend,
                record.reason,
                json.dumps(record.flags),
                int(record.ok),
                record.duration_ms,
                record.result_preview[:_PREVIEW_CHARS],
                record.started_at,
            ),
        )

    async def calls(
        self, *, conversation: str | None = None, limit: int = 100
    ) -> builtins.list[ToolCallRecord]:
        """The most recent tool calls, oldest first (optionally of one conversation)."""
        where, params = ("WHERE conversation_id = ?", [conversation]) if conversation else ("", [])
        rows = await self._db.fetchall(
            f"SELECT * FROM (SELECT * FROM tool_calls {where} ORDER BY id DESC LIMIT ?) "  # noqa: S608 - fixed fragments
            "ORDER BY id",
            [*params, max(1, limit)],
        )
        return [
            ToolCallRecord(
                call_id=row["call_id"],
                conversation=row["conversation_id"],
                request=row["request"],
                origin=row["origin"],
                tool=row["tool"],
                plugin=row["plugin"],
                arguments=row["arguments"],
                decision=row["decision"],
                decided_by=row["decided_by"],
                frontend=row["frontend"],
                reason=row["reason"],
                flags=json.loads(row["flags"]),
                ok=bool(row["ok"]),
                duration_ms=row["duration_ms"],
                result_preview=row["result_preview"],
                started_at=row["started_at"],
            )
            for row in rows
        ]

    async def interactions(self, request_id: str) -> builtins.list[AuditRecord]:
        """The audit rows of one interaction request, in order."""
        rows = await self._db.fetchall(
            "SELECT * FROM approval_events WHERE request_id = ? ORDER BY id", (request_id,)
        )
        return [
            AuditRecord(
                request_id=row["request_id"],
                event=row["event"],
                kind=row["kind"],
                tool=row["tool"],
                arguments=row["arguments"],
                conversation=row["conversation_id"],
                origin=row["origin"],
                flags=json.loads(row["flags"]),
                decision=row["decision"],
                by=row["decided_by"],
                reason=row["reason"],
                at=row["at"],
            )
            for row in rows
        ]

    # --- taint -----------------------------------------------------------------------------

    async def is_tainted(self, conversation: str) -> bool:
        if conversation in self._clean:
            self._clean.move_to_end(conversation)
            return False
        tainted = (
            await self._db.fetchval(
                "SELECT 1 FROM tainted_conversations WHERE conversation_id = ?", (conversation,)
            )
            is not None
        )
        if not tainted:
            self._clean[conversation] = None
            while len(self._clean) > _CLEAN_CACHE:
                self._clean.popitem(last=False)
        return tainted

    async def taint(self, conversation: str, reason: str) -> bool:
        """Mark ``conversation`` tainted (first reason kept); True if it was not before.

        A conversation that does not exist (yet) is not recorded: taint belongs to content
        that entered a conversation, and a deleted conversation takes its taint with it.
        """
        self._clean.pop(conversation, None)
        async with (
            self._db.transaction() as conn,
            conn.execute(
                "INSERT OR IGNORE INTO tainted_conversations (conversation_id, reason, at) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM conversations WHERE id = ?)",
                (conversation, reason, self._wall(), conversation),
            ) as cursor,
        ):
            added = cursor.rowcount > 0
        if added:
            log.warning("conversation %s is now tainted: %s", conversation, reason)
        return added

    # --- security log ----------------------------------------------------------------------

    async def security_event(
        self,
        *,
        kind: str,
        source: str,
        findings: Sequence[Finding] = (),
        conversation: str | None = None,
        tool: str | None = None,
        detail: str = "",
    ) -> None:
        """Record a security event: ``kind`` such as ``injection``, ``source`` the text's
        origin (``tool-arguments``, ``tool-result``, ``memory``, ``message``)."""
        log.warning(
            "security: %s in %s%s%s: %s",
            kind,
            source,
            f" of {tool}" if tool else "",
            f" ({conversation})" if conversation else "",
            ", ".join(f.rule for f in findings) or detail,
        )
        payload = [msgspec.structs.asdict(f) for f in findings]
        await self._db.execute(
            "INSERT INTO security_log (at, kind, source, conversation_id, tool, detail, findings) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self._wall(),
                kind,
                source,
                conversation,
                tool,
                detail or f"scanner {VERSION}",
                json.dumps(payload, ensure_ascii=False),
            ),
        )

    async def security_events(self, limit: int = 100) -> builtins.list[SecurityEvent]:
        """The most recent security events, oldest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM (SELECT * FROM security_log ORDER BY id DESC LIMIT ?) ORDER BY id",
            (max(1, limit),),
        )
        return [
            SecurityEvent(
                id=row["id"],
                at=row["at"],
                kind=row["kind"],
                source=row["source"],
                conversation=row["conversation_id"],
                tool=row["tool"],
                detail=row["detail"],
                findings=msgspec.convert(json.loads(row["findings"]), builtins.list[Finding]),
            )
            for row in rows
        ]
