"""The daemon's side of memory: the ``memory.*`` and ``conversations.search`` methods, the
background upkeep of both indexes, and the memory block of each turn's system prompt.

:class:`MemoryService` is created with the daemon and bound to the database by :meth:`open`.
Methods called before that (or after shutdown began) answer ``ShuttingDown``. Writes through
these methods are the person's own (the CLI) and need no approval; the model's writes go
through the tools of :mod:`pyra_daemon.memory_tools` and the approval gate.

Deliberately not here: file access and indexing (:mod:`pyra_daemon.memory`) and the text the
model sees (:mod:`pyra_daemon.memory_tools`).
"""

from __future__ import annotations

import logging

import anyio.abc

from pyra_client.errors import ShuttingDown
from pyra_client.paths import Layout
from pyra_client.protocol import (
    ConversationSearchParams,
    ConversationSearchResult,
    MemoryAppendParams,
    MemoryListParams,
    MemoryListResult,
    MemoryNameParams,
    MemoryReindexParams,
    MemoryReindexResult,
    MemorySearchParams,
    MemorySearchResult,
    MemoryShowResult,
    MemoryWriteParams,
    MemoryWriteResult,
    OkResult,
)
from pyra_daemon.db import Database
from pyra_daemon.memory import MemoryStore, MessageSearch
from pyra_daemon.memory_tools import DEFAULT_CONTEXT_TOKENS, memory_context
from pyra_daemon.server import Call, Method, MethodTable

__all__ = ["MemoryService"]

log = logging.getLogger(__name__)


class MemoryService:
    """Memory and history search for the daemon; see the module docstring."""

    def __init__(self, layout: Layout, *, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> None:
        self._layout = layout
        self._context_tokens = context_tokens
        self._store: MemoryStore | None = None
        self._history: MessageSearch | None = None

    def open(self, db: Database) -> None:
        self._store = MemoryStore(db, self._layout.memory_dir, vault=self._layout.vault_dir)
        self._history = MessageSearch(db)

    @property
    def store(self) -> MemoryStore:
        """The memory store (for the model's tools: ``memory_tools(service.store)``)."""
        if self._store is None:
            raise ShuttingDown("the daemon is not serving")
        return self._store

    @property
    def history(self) -> MessageSearch:
        if self._history is None:
            raise ShuttingDown("the daemon is not serving")
        return self._history

    async def maintain(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Check the message index, then keep the memory index in step; runs until cancelled."""
        task_status.started()
        try:
            # The count only: the full check holds the database for seconds on a long
            # history, and a search that meets damage repairs it then.
            await self.history.check(thorough=False)
        except Exception:
            log.exception("the message search index could not be checked")
        await self.store.maintain()

    async def context(self, prompt: str) -> str:
        """The memory block for a turn's system prompt (``""`` when there is nothing)."""
        if self._store is None:
            return ""
        try:
            return await memory_context(self._store, prompt, self._context_tokens)
        except Exception:
            # The answer matters more than the notes: log it, answer without them.
            log.exception("saved memory left out of this turn's prompt")
            return ""

    def methods(self) -> MethodTable:
        return {
            "memory.list": Method(MemoryListParams, self.m_list),
            "memory.show": Method(MemoryNameParams, self.m_show),
            "memory.search": Method(MemorySearchParams, self.m_search),
            "memory.write": Method(MemoryWriteParams, self.m_write),
            "memory.append": Method(MemoryAppendParams, self.m_append),
            "memory.delete": Method(MemoryNameParams, self.m_delete),
            "memory.reindex": Method(MemoryReindexParams, self.m_reindex),
            "conversations.search": Method(ConversationSearchParams, self.m_conversations_search),
        }

    async def m_list(self, call: Call, params: MemoryListParams) -> MemoryListResult:
        entries, total = await self.store.entries(category=params.category, limit=params.limit)
        return MemoryListResult(entries=entries, total=total)

    async def m_show(self, call: Call, params: MemoryNameParams) -> MemoryShowResult:
        return await self.store.read(params.name)

    async def m_search(self, call: Call, params: MemorySearchParams) -> MemorySearchResult:
        hits = await self.store.search(params.query, limit=params.limit, category=params.category)
        return MemorySearchResult(hits=hits)

    async def m_write(self, call: Call, params: MemoryWriteParams) -> MemoryWriteResult:
        return await self.store.write(params.name, params.text, if_hash=params.if_hash)

    async def m_append(self, call: Call, params: MemoryAppendParams) -> MemoryWriteResult:
        return await self.store.append(params.name, params.text)

    async def m_delete(self, call: Call, params: MemoryNameParams) -> OkResult:
        await self.store.delete(params.name)
        return OkResult()

    async def m_reindex(self, call: Call, params: MemoryReindexParams) -> MemoryReindexResult:
        return await self.store.reindex(full=params.full)

    async def m_conversations_search(
        self, call: Call, params: ConversationSearchParams
    ) -> ConversationSearchResult:
        return ConversationSearchResult(
            hits=await self.history.search(params.text, limit=params.limit)
        )
