"""Benchmark: memory reindex throughput and search latency; message search over 1M messages.

Run on demand (pytest does not collect ``bench_*.py``)::

    python -m tests.bench.bench_memory                      # 100k files, 1M messages
    python -m tests.bench.bench_memory --files 10000 --messages 100000 --queries 500

What it measures, through the daemon's own code paths (``MemoryStore`` and ``MessageSearch``
over aiosqlite, so each figure includes the hop to SQLite's thread):

- a full reindex of N memory files of ~1 KB (first index, then a rescan with nothing changed,
  then the start-up integrity check);
- memory search latency (p50/p95/p99/max) over 1,000 queries, and the prompt-context lookup;
- message search latency over M messages inserted directly with SQLite (triggers maintain
  the index as in production).

Text is synthetic: words drawn from a 30,000-word vocabulary with a Zipf distribution (s=1.1),
as natural language roughly is. Queries are 1-3 words drawn from the same distribution minus
its 100 most frequent words (people search for content words, not "the"); the worst case, the
single most frequent word, is reported apart. Everything lives in a temporary folder removed
at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from pyra_daemon.db import Database
from pyra_daemon.memory import MemoryStore, MessageSearch
from pyra_daemon.memory_tools import memory_context

VOCABULARY = 30_000
ZIPF_S = 1.1
STREAM_WORDS = 4_000_000
SKIP_COMMON = 100
CATEGORIES = ("user", "context", "knowledge")


class Corpus:
    """A stream of Zipf-distributed synthetic words to cut documents from."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"]
        words: set[str] = set()
        while len(words) < VOCABULARY:
            words.add("".join(self.rng.choices(syllables, k=self.rng.randint(1, 4))))
        self.words = sorted(words, key=lambda w: (len(w), w))  # short words are common
        weights = [1 / (rank**ZIPF_S) for rank in range(1, VOCABULARY + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self.stream = self.rng.choices(self.words, cum_weights=self.cumulative, k=STREAM_WORDS)
        rare = self.cumulative[SKIP_COMMON - 1]
        self._rare_total = self.cumulative[-1] - rare
        self._rare_base = rare

    def text(self, words: int) -> str:
        start = self.rng.randrange(0, STREAM_WORDS - words)
        return " ".join(self.stream[start : start + words])

    def query_word(self) -> str:
        point = self._rare_base + self.rng.random() * self._rare_total
        return self.words[min(bisect.bisect_left(self.cumulative, point), VOCABULARY - 1)]

    def query(self) -> str:
        count = self.rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        return " ".join(self.query_word() for _ in range(count))


def write_memory_files(root: Path, corpus: Corpus, count: int) -> int:
    total = 0
    for category in CATEGORIES:
        (root / category).mkdir(parents=True, mode=0o700, exist_ok=True)
    for i in range(count):
        category = CATEGORIES[i % 3]
        body = f"# Note {i} {corpus.text(4)}\n\n{corpus.text(205)}\n"
        path = root / category / f"note-{i:06}.md"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            total += out.write(body)
    return total


def fill_messages(path: Path, corpus: Corpus, count: int) -> float:
    """Insert *count* messages in conversations of 20 turns; returns seconds taken."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")  # bulk load only; the daemon uses FULL
    started = time.perf_counter()
    now = time.time() - count
    per_conversation, per_turn = 40, 2
    for first in range(0, count, 20_000):
        conn.execute("BEGIN")
        for c in range(first // per_conversation, (first + 20_000) // per_conversation):
            conversation = f"cli:bench-{c}"
            conn.execute(
                "INSERT INTO conversations (id, kind, title, created_at, updated_at) "
                "VALUES (?, 'cli', '', ?, ?)",
                (conversation, now, now),
            )
            for _t in range(per_conversation // per_turn):
                turn = conn.execute(
                    "INSERT INTO turns (conversation_id, status, started_at) "
                    "VALUES (?, 'complete', ?)",
                    (conversation, now),
                ).lastrowid
                rows = [
                    (conversation, turn, role, corpus.text(corpus.rng.randint(8, 80)), now)
                    for role in ("user", "assistant")
                ]
                conn.executemany(
                    "INSERT INTO messages (conversation_id, turn_id, role, content, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                now += 1
        conn.execute("COMMIT")
        sys.stderr.write(f"\r  {min(first + 20_000, count):,} messages")
    sys.stderr.write("\n")
    conn.close()
    return time.perf_counter() - started


async def latencies(queries: list[str], run: Callable[[str], Awaitable[object]]) -> Timings:
    """Wall-clock and CPU milliseconds per call (CPU of the whole process: SQLite runs in
    aiosqlite's thread; CPU time stays meaningful on a machine busy with other work)."""
    for query in queries[:20]:  # warm the page cache and the statement cache
        await run(query)
    timings = Timings([], [])
    for query in queries:
        wall, cpu = time.perf_counter(), time.process_time()
        await run(query)
        timings.cpu.append((time.process_time() - cpu) * 1000)
        timings.wall.append((time.perf_counter() - wall) * 1000)
    return timings


@dataclass
class Timings:
    wall: list[float]
    cpu: list[float]

    def __str__(self) -> str:
        return f"{_percentiles(self.wall)} | {_percentiles(self.cpu)}"


def _percentiles(times: list[float]) -> str:
    ordered = sorted(times)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return f"{cut[49]:.2f} / {cut[94]:.2f} / {cut[98]:.2f} / {ordered[-1]:.2f}"


async def bench(args: argparse.Namespace, folder: Path) -> list[str]:
    corpus = Corpus(args.seed)
    rows: list[str] = []
    queries = [corpus.query() for _ in range(args.queries)]
    common = corpus.words[0]

    if args.files:
        memory = folder / "memory"
        reuse = args.reuse is not None and memory.exists()
        if not reuse:
            sys.stderr.write(f"writing {args.files:,} memory files...\n")
            size = write_memory_files(memory, corpus, args.files)
        db = await Database.open(folder / "memory.db")
        store = MemoryStore(db, memory, vault=folder / "vault")
        if not reuse:
            first = await store.reindex(check=False)
            rows.append(
                f"| memory: full reindex, {first.added:,} files ({size / first.added:.0f} B avg) "
                f"| {first.seconds:.1f} s = **{first.added / first.seconds:,.0f} files/s** |"
            )
        again = await store.reindex(check=False)
        rows.append(
            f"| memory: rescan, nothing changed ({again.unchanged:,} files) "
            f"| {again.seconds:.2f} s |"
        )
        started = time.perf_counter()
        checked = await store.reindex(check=True)
        rows.append(
            f"| memory: start-up check (integrity-check + rescan), rebuilt={checked.rebuilt} "
            f"| {time.perf_counter() - started:.2f} s |"
        )
        times = await latencies(queries, lambda q: store.search(q, limit=10))
        rows.append(f"| memory search, {len(queries)} queries | {times} |")
        hits = [len(await store.search(q, limit=10)) for q in queries[:200]]
        rows.append(
            f"| memory search: queries with hits (first 200) | {sum(1 for h in hits if h)}/200 |"
        )
        worst = await latencies([common] * 50, lambda q: store.search(q, limit=10))
        rows.append(f"| memory search, worst case: the most common word x50 | {worst} |")
        prompts = [corpus.text(12) for _ in range(min(args.queries, 300))]
        context = await latencies(prompts, lambda p: memory_context(store, p, 1500))
        rows.append(f"| memory context for a 12-word prompt, {len(prompts)} prompts | {context} |")
        await db.aclose()
        if not args.keep:
            shutil.rmtree(memory)

    if args.messages:
        path = folder / "messages.db"
        if not (args.reuse is not None and path.exists()):
            db = await Database.open(path)  # migrations: the same schema and triggers
            await db.aclose()
            sys.stderr.write(f"inserting {args.messages:,} messages...\n")
            seconds = fill_messages(path, corpus, args.messages)
            rows.append(
                f"| messages: insert {args.messages:,} with the FTS triggers "
                f"| {seconds:.1f} s = {args.messages / seconds:,.0f} msg/s |"
            )
        db = await Database.open(path)
        history = MessageSearch(db)
        for thorough, label in ((False, "start-up check (counts)"), (True, "full integrity-check")):
            started = time.perf_counter()
            rebuilt = await history.check(thorough=thorough)
            rows.append(
                f"| messages: {label}, rebuilt={rebuilt} | {time.perf_counter() - started:.2f} s |"
            )
        times = await latencies(queries, lambda q: history.search(q, limit=20))
        rows.append(f"| message search, {len(queries)} queries | {times} |")
        worst = await latencies([common] * 50, lambda q: history.search(q, limit=20))
        rows.append(f"| message search, worst case: the most common word x50 | {worst} |")
        await db.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="memory files (0: skip)")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages (0: skip)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--reuse", type=Path, help="a folder kept by --keep: measure searches again, no rebuild"
    )
    args = parser.parse_args(argv)
    folder = args.reuse or Path(tempfile.mkdtemp(prefix="pyra-bench-"))
    args.keep = args.keep or args.reuse is not None
    try:
        rows = anyio.run(bench, args, folder, backend="asyncio")
    finally:
        if args.keep:
            sys.stderr.write(f"kept {folder}\n")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print("| measurement | result (latencies in ms: p50 / p95 / p99 / max) | CPU ms, same |")
    print("|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
