"""Benchmark: the approval path over a real Unix socket.

Measured per iteration: a tool call enters :meth:`ToolRegistry.run` (validation, argument scan,
taint lookup, policy chain, the broker's audit row written to SQLite with ``synchronous=FULL``)
-> ``interaction.request`` reaches an approver in **another process** over the Unix socket ->
it answers ``interactions.answer`` -> the daemon side's tool handler starts running. Target:
median <= 5 ms. The approval audit rows go through the background writer, as in the daemon;
the ``tool_calls`` row of each call is written (fsync'd) after the handler, outside the timing
but inside the loop.

The approver is a separate Python process using only ``pyra_client`` (a raw socket and the
protocol module), so the numbers include real IPC and a second interpreter, not an in-loop
shortcut. Run it on demand (not collected by pytest)::

    .venv/bin/python tests/bench/bench_approval.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyra_daemon.audit import AuditStore  # noqa: E402
from pyra_daemon.broker import InteractionBroker  # noqa: E402
from pyra_daemon.config import ToolsConfig  # noqa: E402
from pyra_daemon.db import Database  # noqa: E402
from pyra_daemon.engine import TurnContext  # noqa: E402
from pyra_daemon.interactions import Interactions, eligible_for  # noqa: E402
from pyra_daemon.llm import ToolCallRequest  # noqa: E402
from pyra_daemon.plugin_api import Tool  # noqa: E402
from pyra_daemon.server import Server  # noqa: E402
from pyra_daemon.tools import ToolRegistry  # noqa: E402

# The approver process: subscribe, then answer every request with "allow" as it arrives.
APPROVER = textwrap.dedent(
    """
    import socket, sys
    import msgspec
    from pyra_client.protocol import (
        FrameSplitter, HelloParams, InteractionAnswerParams, Request, encode,
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    sock.sendall(
        encode(Request(id=1, method="hello", params=HelloParams(protocol=1, client="bench")))
        + encode(Request(id=2, method="interactions.subscribe", params={}))
    )
    splitter, ids = FrameSplitter(), 2
    while data := sock.recv(65536):
        for frame in splitter.feed(data):
            message = msgspec.json.decode(frame)
            if message.get("method") == "interaction.request":
                ids += 1
                answer = InteractionAnswerParams(id=message["params"]["id"], decision="allow")
                sock.sendall(encode(Request(id=ids, method="interactions.answer", params=answer)))
            elif message.get("id") == 2:
                print("subscribed", flush=True)
    """
)


async def _noop_emit(event: object) -> None:
    return None


async def bench(iterations: int, warmup: int, db_dir: str | None = None) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix="pyra"))
    db_home = Path(tempfile.mkdtemp(prefix="pyra", dir=db_dir)) if db_dir else workdir
    db = await Database.open(db_home / "pyra.db")
    try:
        audit = AuditStore(db)
        await db.execute(
            "INSERT INTO conversations (id, kind, created_at, updated_at) VALUES (?, ?, ?, ?)",
            ("cli:bench", "cli", time.time(), time.time()),
        )
        broker = InteractionBroker(audit=audit.record_interaction)
        settings = ToolsConfig()
        registry = ToolRegistry(
            broker, config=lambda: settings, audit=audit, eligible_for=eligible_for
        )
        started: list[float] = []

        async def handler(text: str) -> str:
            started.append(time.perf_counter())
            return "ok"

        registry.add(
            Tool(
                "touch",
                "A tool that needs approval.",
                {"type": "object", "properties": {"text": {"type": "string"}}},
                handler=handler,
            )
        )
        interactions = Interactions(broker, registry)
        server = Server(
            interactions.methods(), version="bench", on_session_end=interactions.session_ended
        )
        socket_path = workdir / "pyra.sock"
        listener = await anyio.create_unix_listener(socket_path)
        async with anyio.create_task_group() as tasks:
            await tasks.start(audit.run)  # as the daemon does: the audit writer off the path
            await tasks.start(server.serve, listener)
            approver = await anyio.open_process(
                [sys.executable, "-c", APPROVER, str(socket_path)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=subprocess.STDOUT,
            )
            assert approver.stdout is not None
            await approver.stdout.receive()  # "subscribed"
            context = TurnContext(
                conversation="cli:bench", request=1, origin="cli:conn-0", emit=_noop_emit
            )
            samples: list[float] = []
            for index in range(warmup + iterations):
                call = ToolCallRequest(id=f"c{index}", name="touch", arguments='{"text": "hi"}')
                raised = time.perf_counter()
                outcome = await registry.run(call, context)
                assert outcome.ok, outcome.content
                if index >= warmup:
                    samples.append((started[-1] - raised) * 1000)
            approver.terminate()
            await approver.wait()
            await listener.aclose()
            tasks.cancel_scope.cancel()
        return samples
    finally:
        await db.aclose()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(db_home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--db-dir",
        help="where to put the database (e.g. /dev/shm to leave fsync out of the numbers)",
    )
    args = parser.parse_args()
    samples = anyio.run(bench, args.iterations, args.warmup, args.db_dir, backend="asyncio")
    samples.sort()
    median = statistics.median(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(
        f"approval path (raised -> delivered over the Unix socket -> answered -> tool running), "
        f"{len(samples)} iterations: median {median:.2f} ms, p95 {p95:.2f} ms, "
        f"min {samples[0]:.2f} ms, max {samples[-1]:.2f} ms (target: median <= 5 ms)"
    )
    return 0 if median <= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
