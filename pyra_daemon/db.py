"""The daemon's SQLite database: the only module that imports aiosqlite.

:class:`Database` opens the file in WAL mode (0600), applies numbered migrations recorded in
``schema_migrations`` (simonw/llm style: a list of functions, each run once, in order, inside a
transaction), and offers a few thin helpers. Stores (conversations, memory, audit) build their
queries on top of it; this module knows no table but the migrations table.

It does not retry, pool or cache: one connection, used from the daemon's event loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

__all__ = ["MIGRATIONS", "Database", "Migration", "Row", "migration"]

log = logging.getLogger(__name__)

Row = sqlite3.Row
#: A migration returns the SQL script it applies. Scripts run inside one transaction with the
#: version record, so a failing migration leaves the database as it was.
Migration = Callable[[], str]
#: Applied in order; a migration's number is its position + 1. Never edit or reorder one that
#: has shipped: add a new one.
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_conversations() -> str:
    return """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX conversations_kind_updated ON conversations(kind, updated_at);
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            status TEXT NOT NULL CHECK (status IN
                ('running', 'complete', 'cancelled', 'failed', 'interrupted')),
            model TEXT NOT NULL DEFAULT '',
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL,
            error TEXT,
            started_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX turns_conversation ON turns(conversation_id, id);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
            content TEXT NOT NULL DEFAULT '',
            tool_calls TEXT,
            tool_call_id TEXT,
            tool_name TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_conversation ON messages(conversation_id, id);
    """


# Reserved, in this order (a migration's number is its position):
# --- m002: tool calls, approval rules and audit (tools issue) ---


@migration
def m002_tools() -> str:
    # tool_calls: one row per call the model made, written when it ends (audit).
    # approval_events: every interaction request and its decision, as the broker reports them.
    # approval_rules: the person's "allow always" rules; pattern NULL means any arguments.
    # tainted_conversations: conversations holding untrusted content (see pyra_daemon.tools).
    # security_log: injection-scanner hits and other security events, whatever their source.
    return """
        CREATE TABLE tool_calls (
            id INTEGER PRIMARY KEY,
            call_id TEXT NOT NULL,
            conversation_id TEXT,
            request TEXT,
            origin TEXT,
            tool TEXT NOT NULL,
            plugin TEXT NOT NULL DEFAULT '',
            arguments TEXT NOT NULL,
            decision TEXT NOT NULL,
            decided_by TEXT,
            frontend TEXT,
            reason TEXT NOT NULL DEFAULT '',
            flags TEXT NOT NULL DEFAULT '[]',
            ok INTEGER NOT NULL,
            duration_ms REAL NOT NULL,
            result_preview TEXT NOT NULL DEFAULT '',
            started_at REAL NOT NULL
        );
        CREATE INDEX tool_calls_conversation ON tool_calls(conversation_id, id);
        CREATE INDEX tool_calls_tool ON tool_calls(tool, id);
        CREATE TABLE approval_events (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            event TEXT NOT NULL CHECK (event IN ('requested', 'decided')),
            kind TEXT NOT NULL,
            tool TEXT,
            arguments TEXT NOT NULL DEFAULT '',
            conversation_id TEXT,
            origin TEXT,
            flags TEXT NOT NULL DEFAULT '[]',
            decision TEXT,
            decided_by TEXT,
            reason TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL
        );
        CREATE INDEX approval_events_request ON approval_events(request_id);
        CREATE TABLE approval_rules (
            id INTEGER PRIMARY KEY,
            tool TEXT NOT NULL,
            pattern TEXT,
            created_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX approval_rules_unique ON approval_rules(tool, IFNULL(pattern, ''));
        CREATE TABLE tainted_conversations (
            conversation_id TEXT PRIMARY KEY
                REFERENCES conversations(id) ON DELETE CASCADE,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE TABLE security_log (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            conversation_id TEXT,
            tool TEXT,
            detail TEXT NOT NULL DEFAULT '',
            findings TEXT NOT NULL DEFAULT '[]'
        );
        CREATE INDEX security_log_at ON security_log(at);
    """


# --- m003: memory index and message search (memory issue) ---


@migration
def m003_memory() -> str:
    # memory_entries mirrors the markdown files (the canonical store) and is the external
    # content of memory_fts; messages_fts indexes messages in place. Triggers keep both
    # indexes in step with their tables, cascaded deletes included. An mtime-only change
    # does not touch the index (the update trigger watches the indexed columns only).
    return """
        CREATE TABLE memory_entries (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            category TEXT NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            indexed_at REAL NOT NULL
        );
        CREATE INDEX memory_entries_category ON memory_entries(category, name);
        CREATE VIRTUAL TABLE memory_fts USING fts5(
            name, title, body,
            content='memory_entries', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER memory_entries_ai AFTER INSERT ON memory_entries BEGIN
            INSERT INTO memory_fts(rowid, name, title, body)
            VALUES (new.id, new.name, new.title, new.body);
        END;
        CREATE TRIGGER memory_entries_ad AFTER DELETE ON memory_entries BEGIN
            INSERT INTO memory_fts(memory_fts, rowid, name, title, body)
            VALUES ('delete', old.id, old.name, old.title, old.body);
        END;
        CREATE TRIGGER memory_entries_au AFTER UPDATE OF name, title, body ON memory_entries
        BEGIN
            INSERT INTO memory_fts(memory_fts, rowid, name, title, body)
            VALUES ('delete', old.id, old.name, old.title, old.body);
            INSERT INTO memory_fts(rowid, name, title, body)
            VALUES (new.id, new.name, new.title, new.body);
        END;
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content,
            content='messages', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END;
        CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_fts_au AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END;
        INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
    """


# --- m004: gatekeeper: senders, lockouts, security log (telegram issue) ---


@migration
def m004_gatekeeper() -> str:
    # gate_senders: passphrase state and lockouts per platform sender (survive restarts).
    # gate_log: the gatekeeper's security log, every decision; never message text (m002's
    # security_log has no sender to rate-limit by). gate_chats: a chat's current conversation
    # (/new). gate_flags: injection findings of incoming messages, per conversation.
    # inbox/inbox_replies: platform updates recorded before they are confirmed, and the ids
    # of the replies sent for them (resume without loss, retry without duplicates).
    # gate_prompts/gate_buttons: approval messages and their opaque button tokens.
    return """
        CREATE TABLE gate_senders (
            platform TEXT NOT NULL,
            sender TEXT NOT NULL,
            verified_at REAL,
            last_seen REAL,
            challenged_at REAL,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until REAL,
            PRIMARY KEY (platform, sender)
        );
        CREATE TABLE gate_log (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            platform TEXT NOT NULL,
            sender TEXT NOT NULL,
            chat TEXT NOT NULL DEFAULT '',
            event TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX gate_log_sender ON gate_log(platform, sender, at);
        CREATE TABLE gate_chats (
            platform TEXT NOT NULL,
            chat TEXT NOT NULL,
            conversation TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (platform, chat)
        );
        CREATE TABLE gate_flags (
            conversation TEXT NOT NULL,
            flag TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (conversation, flag)
        );
        CREATE TABLE inbox (
            platform TEXT NOT NULL,
            update_id INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('message', 'callback')),
            chat TEXT NOT NULL,
            sender TEXT NOT NULL,
            chat_type TEXT NOT NULL DEFAULT 'private',
            message_id INTEGER,
            text TEXT,
            date REAL NOT NULL,
            received_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'new' CHECK (state IN
                ('new', 'held', 'answering', 'answered', 'done')),
            action TEXT,
            conversation TEXT,
            answer TEXT,
            PRIMARY KEY (platform, update_id)
        );
        CREATE INDEX inbox_state ON inbox(platform, state, update_id);
        CREATE TABLE inbox_replies (
            platform TEXT NOT NULL,
            update_id INTEGER NOT NULL,
            part INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            PRIMARY KEY (platform, update_id, part),
            FOREIGN KEY (platform, update_id) REFERENCES inbox(platform, update_id)
                ON DELETE CASCADE
        );
        CREATE TABLE gate_prompts (
            platform TEXT NOT NULL,
            request_id TEXT NOT NULL,
            chat TEXT NOT NULL,
            sender TEXT,
            message_id INTEGER,
            expires_at REAL NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'open' CHECK (state IN
                ('open', 'pressed', 'closed', 'orphaned')),
            decision TEXT,
            pressed_by TEXT,
            PRIMARY KEY (platform, request_id, chat)
        );
        CREATE TABLE gate_buttons (
            token TEXT PRIMARY KEY,
            platform TEXT NOT NULL,
            request_id TEXT NOT NULL,
            chat TEXT NOT NULL,
            option TEXT NOT NULL,
            FOREIGN KEY (platform, request_id, chat)
                REFERENCES gate_prompts(platform, request_id, chat) ON DELETE CASCADE
        );
        CREATE INDEX gate_buttons_prompt ON gate_buttons(platform, request_id, chat);
    """


class Database:
    """One aiosqlite connection with migrations applied. Create with :meth:`open`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        # One connection: transactions from concurrent tasks must not interleave.
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> Database:
        # Create it private before SQLite does, so no window exists with a wider mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # isolation_level=None: no implicit BEGINs; transactions are explicit (transaction()).
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a record the daemon acknowledged survives power loss too (audit, messages).
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            db = cls(conn, path)
            await db._migrate(migrations)
        except BaseException:
            await conn.close()
            raise
        return db

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        await self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        async with self._conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        ) as c:
            row = await c.fetchone()
        current = int(row[0]) if row else 0
        for version, fn in enumerate(migrations, start=1):
            if version <= current:
                continue
            log.info("applying database migration %d (%s)", version, fn.__name__)
            # One script, one transaction: executescript() would commit a BEGIN issued apart.
            # Our own number and name, not input: no injection is possible here.
            record = "INSERT INTO schema_migrations VALUES ({}, '{}', {});".format(  # noqa: UP032, S608
                version, fn.__name__, time.time()
            )
            try:
                await self._conn.executescript(f"BEGIN IMMEDIATE;\n{fn()}\n{record}\nCOMMIT;")
            except BaseException:
                if self._conn.in_transaction:
                    await self._conn.rollback()
                raise

    async def aclose(self) -> None:
        await self._conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception or cancellation.

        Commit and rollback run shielded: a cancelled turn still leaves a consistent database.
        """
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._conn.rollback()
                raise
            with anyio.CancelScope(shield=True):
                await self._conn.commit()

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement in its own transaction; returns ``lastrowid``."""
        async with self.transaction() as conn, conn.execute(sql, tuple(params)) as cursor:
            return cursor.lastrowid or 0

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            row: Row | None = await cursor.fetchone()
            return row

    async def fetchval(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]
