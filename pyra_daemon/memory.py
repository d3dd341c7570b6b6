"""Memory: markdown files the person owns, and the FTS5 indexes that make recall instant.

The canonical store is ``$PYRA_HOME/memory/<category>/<slug>.md`` (categories ``user``,
``context``, ``knowledge``; files 0600, folders 0700). The person may edit those files with
anything; :class:`MemoryStore` keeps an index of them in the daemon's database
(``memory_entries`` + the external-content FTS5 table ``memory_fts``, migration m003):

- every write through Pyra updates file and index together (under one lock);
- :meth:`MemoryStore.reindex` reconciles the index with the files by size + mtime, then
  SHA-256 (so a ``touch`` costs no re-index); it runs at start, on ``memory.reindex`` and
  periodically while the daemon runs (:meth:`MemoryStore.maintain`);
- at start the FTS5 ``integrity-check`` and a row count compare index and table; an index that
  fails is dropped and rebuilt from the files, which are the truth.

Names are ``category/slug``. A name that tries ``..`` or an absolute path, a category folder
or file that is a symlink, a hard-linked file, and a memory folder inside the vault are refused
with :class:`~pyra_client.errors.AccessDenied`. Files are opened relative to descriptors of
their folders with ``O_NOFOLLOW``, so no path is re-resolved between the check and the use.

:class:`MessageSearch` is the same kind of index over past conversation messages
(``messages_fts``, kept in step with ``messages`` by triggers).

Search text never reaches FTS5 as syntax: :func:`fts_query` quotes every word, so quotes,
``NEAR(``, ``*``, ``col:``, ``AND``/``OR``/``NOT`` are looked for literally and cannot error.

What it deliberately does not do: decide who may write (the person's own CLI writes directly;
the model's writes go through the approval gate, see :mod:`pyra_daemon.memory_tools`), watch
the folder with inotify (a stat scan is cheap enough), or semantic search.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from pyra_client.errors import AccessDenied, Busy, NotFound, UsageError
from pyra_client.protocol import (
    MEMORY_CATEGORIES,
    MemoryEntry,
    MemoryHit,
    MemoryReindexResult,
    MemoryShowResult,
    MemoryWriteResult,
    MessageHit,
)
from pyra_daemon.db import Database

__all__ = [
    "MAX_MEMORY_BYTES",
    "SEARCH_POOL",
    "MemoryStore",
    "MessageSearch",
    "Relevant",
    "fts_query",
    "parse_name",
]

log = logging.getLogger(__name__)

#: The largest memory file Pyra writes or indexes (bigger files are skipped and logged).
MAX_MEMORY_BYTES = 256 * 1024
#: Words of a query that reach FTS5; the rest are ignored (keeps OR queries bounded).
MAX_QUERY_TERMS = 32
#: Files read and indexed per transaction during a reconcile, so turns are not held up.
_BATCH = 500

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

# Word characters, space and a little punctuation; no slash, no leading dot or dash.
_SLUG = re.compile(r"[^\W_][\w .,+()'&-]{0,119}")
# A token FTS5's unicode61 tokenizer keeps: letters and digits (an all-punctuation "word"
# would be an empty phrase).
_WORDY = re.compile(r"[^\W_]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_BM25 = "bm25(8.0, 4.0, 1.0)"  # name, title, body
_BM25_OF = "bm25(memory_fts, 8.0, 4.0, 1.0)"
#: Matches ranked exactly before a search counts as broad (see ``MemoryStore._ranked``).
SEARCH_POOL = 500
#: The same for picking a prompt's context, from at most this many of its words.
_CONTEXT_POOL = 200
_CONTEXT_TERMS = 6


def parse_name(name: str) -> tuple[str, str]:
    """Validate a memory name and return ``(category, slug)``.

    Raises :class:`AccessDenied` for a name that tries to leave the memory folder and
    :class:`UsageError` for one that is merely malformed.
    """
    raw = name.strip().removesuffix(".md")
    parts = raw.replace("\\", "/").split("/")
    if raw.startswith(("/", "\\", "~")) or any(p in ("..", ".") for p in parts) or "\0" in raw:
        raise AccessDenied(f"memory name {name!r} points outside the memory folder", name=name)
    if len(parts) != 2:
        raise UsageError(
            f"memory name {name!r} is not category/slug (e.g. user/preferences)", name=name
        )
    category, slug = parts
    if category not in MEMORY_CATEGORIES:
        raise UsageError(
            f"unknown memory category {category!r}; use one of {', '.join(MEMORY_CATEGORIES)}",
            name=name,
        )
    if not _SLUG.fullmatch(slug) or slug.endswith((" ", ".")):
        raise UsageError(
            f"memory name {name!r}: the part after {category}/ must be 1-120 letters, digits, "
            "spaces or . , + ( ) ' & - _, starting with a letter or digit",
            name=name,
        )
    return category, slug


def fts_query(text: str, *, any_word: bool = False) -> str | None:
    """An FTS5 MATCH expression for plain *text*: every word quoted (``"`` doubled).

    Words are ANDed (or ORed with *any_word*). ``None`` when *text* has no searchable word.
    """
    words: list[str] = []
    # Control characters (a NUL ends the string inside FTS5's parser) separate words.
    for token in _CONTROL.sub(" ", text).split():
        if _WORDY.search(token) and token not in words:
            words.append(token)
    if not words:
        return None
    quoted = ['"' + word.replace('"', '""') + '"' for word in words[:MAX_QUERY_TERMS]]
    return (" OR " if any_word else " ").join(quoted)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT


def _title(text: str, slug: str) -> str:
    """The first markdown heading, else the first non-empty line, else the slug."""
    first = ""
    for number, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip():
            return stripped.lstrip("#").strip()[:80]
        if stripped and not first:
            first = stripped
        if number > 40:
            break
    return (first or slug)[:80]


# --- files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    """One memory file as read: what the index stores about it."""

    name: str
    category: str
    title: str
    body: str
    hash: str
    size: int
    mtime_ns: int

    @classmethod
    def parse(cls, name: str, data: bytes, info: os.stat_result) -> _Loaded:
        category, slug = name.split("/", 1)
        body = data.decode("utf-8", errors="replace")
        return cls(
            name=name,
            category=category,
            title=_title(body, slug),
            body=body,
            hash=hashlib.sha256(data).hexdigest(),
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
        )


def _denied(name: str, why: str) -> AccessDenied:
    return AccessDenied(f"memory {name}: {why}; refusing it", name=name)


def _check_file(name: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _denied(name, "the file is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise _denied(name, "not a regular file")
    if info.st_nlink > 1:
        # A hard link could make a vault file read as a note (and reach a prompt).
        raise _denied(name, "the file has other hard links")
    if info.st_size > MAX_MEMORY_BYTES:
        raise UsageError(
            f"memory {name} is over {MAX_MEMORY_BYTES // 1024} KiB; edit it directly", name=name
        )


class _Files:
    """Synchronous file access confined to the memory folder (run it in a worker thread)."""

    def __init__(self, root: Path, vault: Path) -> None:
        self.root = root
        self.vault = vault

    @contextlib.contextmanager
    def _category(self, category: str, *, create: bool) -> Iterator[int]:
        real = os.path.realpath(self.root)
        vault = os.path.realpath(self.vault)
        if real == vault or real.startswith(vault + os.sep):
            raise AccessDenied(
                f"the memory folder {self.root} resolves into the vault; refusing it",
                path=str(self.root),
            )
        if create:
            os.makedirs(real, mode=0o700, exist_ok=True)
        root_fd = os.open(real, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
            try:
                fd = os.open(category, flags, dir_fd=root_fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(category, 0o700, dir_fd=root_fd)
                fd = os.open(category, flags, dir_fd=root_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise AccessDenied(
                    f"memory/{category} is a symlink or not a folder; refusing it",
                    path=str(self.root / category),
                ) from exc
            raise
        finally:
            os.close(root_fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self, name: str) -> tuple[bytes, os.stat_result]:
        category, slug = name.split("/", 1)
        try:
            with self._category(category, create=False) as dfd:
                return self._read_at(dfd, name, f"{slug}.md")
        except FileNotFoundError as exc:
            raise NotFound(f"no memory {name}", name=name) from exc

    def _read_at(self, dfd: int, name: str, filename: str) -> tuple[bytes, os.stat_result]:
        try:
            fd = os.open(filename, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _denied(name, "the file is a symlink") from exc
            raise
        try:
            info = os.fstat(fd)
            _check_file(name, info)
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks), info
        finally:
            os.close(fd)

    def load(self, names: Sequence[str]) -> tuple[list[_Loaded], int]:
        """Read and parse *names*; files gone or refused since the scan are skipped."""
        loaded: list[_Loaded] = []
        skipped = 0
        for name in names:
            try:
                data, info = self.read(name)
            except NotFound:
                continue
            except (AccessDenied, UsageError, OSError) as exc:
                log.warning("memory file skipped: %s", exc)
                skipped += 1
                continue
            loaded.append(_Loaded.parse(name, data, info))
        return loaded, skipped

    def replace(
        self, name: str, make: Callable[[bytes | None], bytes], if_hash: str | None
    ) -> tuple[_Loaded, bool]:
        """Write ``make(current bytes or None)`` atomically; returns the result and created."""
        category, slug = name.split("/", 1)
        filename = f"{slug}.md"
        with self._category(category, create=True) as dfd:
            try:
                current, _ = self._read_at(dfd, name, filename)
            except FileNotFoundError:
                current = None
            if if_hash is not None:
                found = "" if current is None else hashlib.sha256(current).hexdigest()
                if found != if_hash:
                    raise Busy(
                        f"memory {name} changed since it was read; nothing was written",
                        name=name,
                    )
            data = make(current)
            if len(data) > MAX_MEMORY_BYTES:
                raise UsageError(
                    f"memory {name} would be over {MAX_MEMORY_BYTES // 1024} KiB", name=name
                )
            tmp = f".{filename}.{secrets.token_hex(4)}.tmp"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600,
                dir_fd=dfd,
            )  # fmt: skip
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                info = os.fstat(fd)
                os.replace(tmp, filename, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            finally:
                os.close(fd)
            os.fsync(dfd)
        return _Loaded.parse(name, data, info), current is None

    def delete(self, name: str) -> None:
        category, slug = name.split("/", 1)
        try:
            with self._category(category, create=False) as dfd:
                # A symlink or hard link is removed itself, never what it points to.
                os.unlink(f"{slug}.md", dir_fd=dfd)
                os.fsync(dfd)
        except FileNotFoundError as exc:
            raise NotFound(f"no memory {name}", name=name) from exc

    def scan(self) -> tuple[dict[str, tuple[int, int]], int]:
        """``{name: (size, mtime_ns)}`` of every indexable file, and how many were refused."""
        found: dict[str, tuple[int, int]] = {}
        skipped = 0
        for category in MEMORY_CATEGORIES:
            try:
                with self._category(category, create=True) as dfd, os.scandir(dfd) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not entry.name.endswith(".md"):
                            continue
                        name = f"{category}/{entry.name[:-3]}"
                        try:
                            parse_name(name)
                            info = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(info.st_mode):
                                continue
                            _check_file(name, info)
                        except (AccessDenied, UsageError, OSError) as exc:
                            log.warning("memory file skipped: %s", exc)
                            skipped += 1
                            continue
                        found[name] = (info.st_size, info.st_mtime_ns)
            except AccessDenied as exc:
                log.error("%s", exc)  # noqa: TRY400 - a clear line; the reason is the message
                skipped += 1
        return found, skipped


# --- index helpers -------------------------------------------------------------------------


async def _index_healthy(db: Database, fts: str, content: str, *, thorough: bool = True) -> bool:
    """The index holds one document per content row and (*thorough*) passes FTS5's
    integrity check, which reads the whole index: seconds for a million messages."""
    # Table names are our own constants, never input.
    try:
        if thorough:
            await db.execute(f"INSERT INTO {fts}({fts}) VALUES ('integrity-check')")  # noqa: S608
        documents = await db.fetchval(f"SELECT COUNT(*) FROM {fts}_docsize")  # noqa: S608
        rows = await db.fetchval(f"SELECT COUNT(*) FROM {content}")  # noqa: S608
    except sqlite3.DatabaseError as exc:
        log.error("the %s index failed its integrity check: %s", fts, exc)  # noqa: TRY400
        return False
    if documents != rows:
        log.error("the %s index holds %s documents for %s rows", fts, documents, rows)
        return False
    return True


_SHADOW_TABLES = (
    "CREATE TABLE IF NOT EXISTS {fts}_data(id INTEGER PRIMARY KEY, block BLOB)",
    "CREATE TABLE IF NOT EXISTS {fts}_idx(segid, term, pgno, PRIMARY KEY(segid, term)) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS {fts}_docsize(id INTEGER PRIMARY KEY, sz BLOB)",
    "CREATE TABLE IF NOT EXISTS {fts}_config(k PRIMARY KEY, v) WITHOUT ROWID",
)


async def _recreate_index(db: Database, fts: str, content: str, *, clear_content: bool) -> None:
    """Drop *fts* and its triggers and create them again as the migrations made them.

    Dropping works even when the shadow tables are damaged; ``rebuild`` alone does not.
    """
    rows = await db.fetchall(
        "SELECT type, name, sql FROM sqlite_master WHERE (type = 'table' AND name = ?) "
        "OR (type = 'trigger' AND tbl_name = ? AND sql LIKE ?)",
        (fts, content, f"%{fts}%"),
    )
    tables = [row["sql"] for row in rows if row["type"] == "table"]
    triggers = [row for row in rows if row["type"] == "trigger"]
    if not tables:
        raise RuntimeError(f"the {fts} table is missing from the schema")
    async with db.transaction() as conn:
        for trigger in triggers:
            await conn.execute(f'DROP TRIGGER "{trigger["name"]}"')
        # FTS5 must open a table to drop it, and cannot without its shadow tables, a format
        # version and a structure record: put back those of a fresh, empty index.
        for shadow in _SHADOW_TABLES:
            await conn.execute(shadow.format(fts=fts))
        await conn.execute("CREATE VIRTUAL TABLE temp.pyra_fts_scratch USING fts5(x)")
        for shadow in ("data", "config"):
            await conn.execute(
                f"INSERT OR REPLACE INTO {fts}_{shadow} "  # noqa: S608
                f"SELECT * FROM temp.pyra_fts_scratch_{shadow}"
            )
        await conn.execute("DROP TABLE temp.pyra_fts_scratch")
        await conn.execute(f"DROP TABLE {fts}")
        if clear_content:
            await conn.execute(f"DELETE FROM {content}")  # noqa: S608
        await conn.execute(tables[0])
        for trigger in triggers:
            await conn.execute(trigger["sql"])
        if not clear_content:
            await conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")  # noqa: S608


# --- the store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    """A ranked match: ``text`` is a snippet, or the whole body for the prompt context."""

    name: str
    title: str
    text: str
    #: bm25 as SQLite gives it: lower is better.
    score: float


@dataclass(frozen=True)
class Relevant:
    """A memory entry chosen for a prompt's context."""

    name: str
    title: str
    body: str


class MemoryStore:
    """The memory files and their index; see the module docstring."""

    def __init__(
        self, db: Database, root: Path, *, vault: Path, search_pool: int = SEARCH_POOL
    ) -> None:
        self._db = db
        self._files = _Files(root, vault)
        self._pool = search_pool
        # Entries per category, for lists and the prompt's index; None: count again.
        self._counts: dict[str, int] | None = None
        # One writer at a time: file and index change together, and a reconcile must not
        # index a file Pyra is rewriting.
        self._lock = anyio.Lock()
        self._ready = anyio.Event()
        self._last_scan = 0.0

    @property
    def root(self) -> Path:
        return self._files.root

    @property
    def ready(self) -> bool:
        """True once a reconcile has finished (or the one at start has failed)."""
        return self._ready.is_set()

    async def maintain(
        self,
        *,
        rescan_every: float = 30.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Check and reconcile the index now, then rescan periodically; runs until cancelled.

        The pause between rescans grows with the folder (50 times the last scan's duration),
        so a very large store costs at most ~2% of a core.
        """
        task_status.started()
        try:
            result = await self.reindex(check=True)
            log.info(
                "memory index ready: %d added, %d updated, %d removed, %d unchanged in %.2f s",
                result.added,
                result.updated,
                result.removed,
                result.unchanged,
                result.seconds,
            )
        except Exception:
            log.exception("the memory index could not be reconciled at start")
        finally:
            self._ready.set()
        while True:
            await anyio.sleep(max(rescan_every, 50 * self._last_scan))
            try:
                # A stat scan only: the integrity check reads the whole index.
                result = await self.reindex(check=False)
            except Exception:
                log.exception("memory rescan failed; trying again later")
                continue
            if result.added or result.updated or result.removed:
                log.info(
                    "memory files changed outside Pyra: %d added, %d updated, %d removed",
                    result.added,
                    result.updated,
                    result.removed,
                )

    async def reindex(self, *, full: bool = False, check: bool = True) -> MemoryReindexResult:
        """Bring the index in line with the files; rebuild it if it fails its check.

        *full* re-reads every file instead of trusting size and mtime.
        """
        started = time.monotonic()
        async with self._lock:
            rebuilt = False
            if check and not await _index_healthy(self._db, "memory_fts", "memory_entries"):
                log.warning("rebuilding the memory index from the files in %s", self.root)
                await _recreate_index(self._db, "memory_fts", "memory_entries", clear_content=True)
                self._counts = None
                rebuilt = True
            result = await self._reconcile(full=full or rebuilt)
        self._ready.set()
        seconds = time.monotonic() - started
        self._last_scan = seconds
        return MemoryReindexResult(
            added=result.added,
            updated=result.updated,
            removed=result.removed,
            unchanged=result.unchanged,
            skipped=result.skipped,
            rebuilt=rebuilt,
            seconds=round(seconds, 3),
        )

    async def _reconcile(self, *, full: bool) -> MemoryReindexResult:
        disk, skipped = await anyio.to_thread.run_sync(self._files.scan)
        rows = await self._db.fetchall("SELECT name, size, mtime_ns, hash FROM memory_entries")
        indexed = {row["name"]: row for row in rows}
        removed = [name for name in indexed if name not in disk]
        candidates = [
            name
            for name, (size, mtime_ns) in disk.items()
            if full
            or name not in indexed
            or (indexed[name]["size"], indexed[name]["mtime_ns"]) != (size, mtime_ns)
        ]
        added = updated = 0
        unchanged = len(disk) - len(candidates)
        for start in range(0, len(candidates), _BATCH):
            chunk = candidates[start : start + _BATCH]
            loaded, refused = await anyio.to_thread.run_sync(self._files.load, chunk)
            skipped += refused
            changed = [
                e for e in loaded if e.name not in indexed or indexed[e.name]["hash"] != e.hash
            ]
            touched = [e for e in loaded if e.name in indexed and indexed[e.name]["hash"] == e.hash]
            await self._store(changed, touched)
            added += sum(1 for e in changed if e.name not in indexed)
            updated += sum(1 for e in changed if e.name in indexed)
            unchanged += len(touched)
        for start in range(0, len(removed), _BATCH):
            self._counts = None
            async with self._db.transaction() as conn:
                await conn.executemany(
                    "DELETE FROM memory_entries WHERE name = ?",
                    [(name,) for name in removed[start : start + _BATCH]],
                )
        return MemoryReindexResult(
            added=added,
            updated=updated,
            removed=len(removed),
            unchanged=unchanged,
            skipped=skipped,
            rebuilt=False,
            seconds=0.0,
        )

    async def _store(self, changed: Sequence[_Loaded], touched: Sequence[_Loaded] = ()) -> None:
        now = time.time()
        self._counts = None
        async with self._db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO memory_entries "
                "(name, category, title, body, hash, size, mtime_ns, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "title = excluded.title, body = excluded.body, hash = excluded.hash, "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "indexed_at = excluded.indexed_at",
                [
                    (e.name, e.category, e.title, e.body, e.hash, e.size, e.mtime_ns, now)
                    for e in changed
                ],
            )
            # Same bytes, new mtime (a touch, a copy): no need to re-index the text.
            await conn.executemany(
                "UPDATE memory_entries SET size = ?, mtime_ns = ? WHERE name = ?",
                [(e.size, e.mtime_ns, e.name) for e in touched],
            )

    # --- reading ---------------------------------------------------------------------------

    async def entries(
        self, *, category: str | None = None, limit: int = 500, wait: bool = True
    ) -> tuple[list[MemoryEntry], int]:
        """Indexed entries (user, context, knowledge; then by name) and how many there are."""
        if wait:
            await self._ready.wait()
        if category is not None and category not in MEMORY_CATEGORIES:
            raise UsageError(
                f"unknown memory category {category!r}; use one of {', '.join(MEMORY_CATEGORIES)}"
            )
        categories = [category] if category else list(MEMORY_CATEGORIES)
        limit = max(1, min(limit, 2000))
        if self._counts is None:
            rows = await self._db.fetchall(
                "SELECT category, COUNT(*) AS n FROM memory_entries GROUP BY category"
            )
            self._counts = {row["category"]: row["n"] for row in rows}
        total = sum(self._counts.get(c, 0) for c in categories)
        # One indexed query per category (in category order): no sort of the whole table.
        rows = []
        for name in categories:
            if len(rows) >= limit:
                break
            rows += await self._db.fetchall(
                "SELECT name, category, title, size, mtime_ns FROM memory_entries "
                "WHERE category = ? ORDER BY name LIMIT ?",
                (name, limit - len(rows)),
            )
        return [
            MemoryEntry(
                name=row["name"],
                category=row["category"],
                title=row["title"],
                size=row["size"],
                updated_at=row["mtime_ns"] / 1e9,
            )
            for row in rows
        ], total

    async def read(self, name: str) -> MemoryShowResult:
        """The file as it is on disk now (the canonical text, even before a rescan)."""
        category, slug = parse_name(name)
        canonical = f"{category}/{slug}"
        data, info = await anyio.to_thread.run_sync(self._files.read, canonical)
        entry = _Loaded.parse(canonical, data, info)
        return MemoryShowResult(
            name=canonical,
            title=entry.title,
            text=entry.body,
            hash=entry.hash,
            updated_at=info.st_mtime_ns / 1e9,
        )

    async def search(
        self,
        query: str,
        *,
        limit: int = 10,
        category: str | None = None,
        wait: bool = True,
    ) -> list[MemoryHit]:
        """Best matches first (bm25; a word in the name or title weighs most).

        Every word must match; when none does, any word may. See :meth:`_ranked` for how a
        very broad search is bounded.
        """
        if wait:
            await self._ready.wait()
        if category is not None and category not in MEMORY_CATEGORIES:
            raise UsageError(f"unknown memory category {category!r}")
        limit = max(1, min(limit, 100))
        found: list[_Match] = []
        for any_word in (False, True):
            match = fts_query(query, any_word=any_word)
            if match is None:
                return []
            found = await self._match(match, limit, category, body=False)
            if found or any_word or " " not in match:
                break
        return [
            MemoryHit(
                name=m.name,
                title=m.title,
                snippet=" ".join(m.text.split()),
                score=float(f"{-m.score:.6g}"),
            )
            for m in found
        ]

    async def relevant(self, text: str, *, limit: int = 3) -> list[Relevant]:
        """Entries sharing words with *text* (stop words dropped), best first.

        The longest words are used (longer words are rarer, so they tell notes apart) and the
        ranking pool is small: this runs before every turn.
        """
        words = {w for w in re.findall(r"[^\W_][\w'-]*", text.lower()) if w not in _STOP_WORDS}
        chosen = sorted(words, key=lambda w: (-len(w), w))[:_CONTEXT_TERMS]
        match = fts_query(" ".join(chosen), any_word=True)
        if match is None:
            return []
        pool = min(self._pool, _CONTEXT_POOL)
        found = await self._match(match, limit, None, body=True, pool=pool)
        return [Relevant(m.name, m.title, m.text) for m in found]

    async def _match(
        self,
        match: str,
        limit: int,
        category: str | None,
        *,
        body: bool,
        pool: int | None = None,
    ) -> list[_Match]:
        pool = pool or self._pool
        try:
            return await self._ranked(match, limit, category, body=body, pool=pool)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            log.error("the memory index is damaged (%s); rebuilding it from the files", exc)  # noqa: TRY400
        await self.reindex(check=True)
        return await self._ranked(match, limit, category, body=body, pool=pool)

    async def _ranked(
        self, match: str, limit: int, category: str | None, *, body: bool, pool: int
    ) -> list[_Match]:
        """The best *limit* matches, by bm25.

        bm25 costs ~2 us per matching note, so it is not run over every match of a broad
        search. Up to *pool* matches are ranked exactly. Beyond that, the candidates are the
        *pool* most recently added matches, and notes whose name or title match come first
        (ranked among themselves): a search that broad has no "best" note, and a note named
        for the words is the likeliest wanted.
        """
        # The join costs a lookup per match: only where a category needs it.
        entries = "JOIN memory_entries e ON e.id = memory_fts.rowid"
        join = entries if category else ""
        where = "memory_fts MATCH ?" + (" AND e.category = ?" if category else "")
        scope = [*([category] if category else [])]
        shown = "e.body" if body else "snippet(memory_fts, 2, '**', '**', '…', 16)"
        matches = await self._db.fetchval(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM memory_fts {join} WHERE {where} "  # noqa: S608
            "ORDER BY memory_fts.rowid DESC LIMIT ?)",
            [match, *scope, pool + 1],
        )
        if matches <= pool:
            # ``rank MATCH`` sets the weights; ``ORDER BY rank`` lets FTS5 sort before the
            # LIMIT, so snippets are made for the rows returned only.
            rows = await self._db.fetchall(
                f"SELECT e.name, e.title, {shown} AS text, rank AS score "  # noqa: S608
                f"FROM memory_fts {entries} WHERE {where} AND rank MATCH '{_BM25}' "
                "ORDER BY rank LIMIT ?",
                [match, *scope, limit],
            )
            return [_Match(r["name"], r["title"], r["text"], r["score"]) for r in rows]
        # Both pools in one statement (one trip to SQLite's thread): tier 0, the notes whose
        # name or title match; tier 1, the rest.
        pooled = (
            f"SELECT id, score FROM (SELECT memory_fts.rowid AS id, {_BM25_OF} AS score "  # noqa: S608
            f"FROM memory_fts {join} WHERE {where} ORDER BY memory_fts.rowid DESC LIMIT ?) "
            "ORDER BY score LIMIT ?"
        )
        rows = await self._db.fetchall(
            f"SELECT 0 AS tier, * FROM ({pooled}) UNION ALL SELECT 1, * FROM ({pooled})",  # noqa: S608
            [f"{{name title}} : ({match})", *scope, pool, limit, match, *scope, pool, limit],
        )
        rows.sort(key=lambda row: (row["tier"], row["score"]))
        ids: list[int] = []
        scores: dict[int, float] = {}
        for row in rows:
            if row["id"] not in scores:
                ids.append(row["id"])
                scores[row["id"]] = row["score"]
        ids = ids[:limit]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = await self._db.fetchall(
            f"SELECT memory_fts.rowid AS id, e.name, e.title, {shown} AS text "  # noqa: S608
            f"FROM memory_fts {entries} WHERE memory_fts MATCH ? "
            f"AND memory_fts.rowid IN ({marks})",
            [match, *ids],
        )
        found = {row["id"]: row for row in rows}
        return [
            _Match(r["name"], r["title"], r["text"], scores[i])
            for i in ids
            if (r := found.get(i)) is not None
        ]

    # --- writing ---------------------------------------------------------------------------

    async def write(self, name: str, text: str, *, if_hash: str | None = None) -> MemoryWriteResult:
        """Replace (or create) a memory; with *if_hash*, only if the file is still that one."""
        data = _encode(name, text)
        return await self._replace(name, lambda _current: data, if_hash)

    async def append(self, name: str, text: str) -> MemoryWriteResult:
        """Add *text* at the end of a memory (on a new line), creating it if needed."""
        data = _encode(name, text)

        def joined(current: bytes | None) -> bytes:
            if not current:
                return data
            return current + (b"" if current.endswith(b"\n") else b"\n") + data

        return await self._replace(name, joined, None)

    async def _replace(
        self, name: str, make: Callable[[bytes | None], bytes], if_hash: str | None
    ) -> MemoryWriteResult:
        category, slug = parse_name(name)
        canonical = f"{category}/{slug}"
        async with self._lock:
            entry, created = await anyio.to_thread.run_sync(
                self._files.replace, canonical, make, if_hash
            )
            await self._store([entry])
        log.info(
            "memory %s %s (%d bytes)", canonical, "created" if created else "saved", entry.size
        )
        return MemoryWriteResult(name=canonical, hash=entry.hash, size=entry.size, created=created)

    async def delete(self, name: str) -> None:
        category, slug = parse_name(name)
        canonical = f"{category}/{slug}"
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._files.delete, canonical)
            finally:
                # Gone from disk (or never there): it must not linger in the index either.
                await self._db.execute("DELETE FROM memory_entries WHERE name = ?", (canonical,))
                self._counts = None
        log.info("memory %s deleted", canonical)


def _encode(name: str, text: str) -> bytes:
    if not text.strip():
        raise UsageError(f"nothing to write to {name}: the text is empty", name=name)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


# --- conversation history ------------------------------------------------------------------


class MessageSearch:
    """Full-text search over every stored message, newest first."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def check(self, *, thorough: bool = True) -> bool:
        """Rebuild ``messages_fts`` from ``messages`` if it fails its check; True if rebuilt.

        Without *thorough* only the document count is compared (milliseconds, where the full
        check takes seconds on a large history and holds the database meanwhile); a search
        that meets a damaged index rebuilds it anyway.
        """
        if await _index_healthy(self._db, "messages_fts", "messages", thorough=thorough):
            return False
        log.warning("rebuilding the message search index")
        await _recreate_index(self._db, "messages_fts", "messages", clear_content=False)
        return True

    async def search(self, text: str, *, limit: int = 20) -> list[MessageHit]:
        """Messages containing every word of *text*, most recent first."""
        match = fts_query(text)
        if match is None:
            return []
        # Newest first straight from the index's rowid order: no ranking of every match, so
        # a common word costs no more than a rare one.
        sql = (
            "SELECT m.conversation_id, m.turn_id, m.role, m.created_at, "
            "snippet(messages_fts, 0, '**', '**', '…', 16) AS snippet "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "WHERE messages_fts MATCH ? ORDER BY messages_fts.rowid DESC LIMIT ?"
        )
        params = (match, max(1, min(limit, 200)))
        try:
            rows = await self._db.fetchall(sql, params)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            log.error("the message index is damaged (%s); rebuilding it", exc)  # noqa: TRY400
            await self.check()
            rows = await self._db.fetchall(sql, params)
        return [
            MessageHit(
                conversation=row["conversation_id"],
                turn=row["turn_id"],
                role=row["role"],
                snippet=" ".join(row["snippet"].split()),
                created_at=row["created_at"],
            )
            for row in rows
        ]


# Words too common to tell memories apart; dropped when a prompt picks context.
_STOP_TEXT = """
    a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just let me more most my myself no nor not now of off on once only or other
    our ours ourselves out over own please same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    us very was we were what when where which while who whom why will with would you your
    yours yourself yourselves tell know want need like get make use using think
    """
_STOP_WORDS = frozenset(_STOP_TEXT.split())
