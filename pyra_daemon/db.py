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
# --- m003: memory index and message search (memory issue) ---
# --- m004: gatekeeper: senders, lockouts, security log (telegram issue) ---


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
