"""Daemon start-up to the first `status` answer, and its memory over 100 turns.

Start-up: spawn ``python -m pyra_daemon`` on an existing home (the database and vault already
made by a first, unmeasured start) and poll its endpoint until ``status`` answers; stopped with
SIGTERM between runs. litellm's background warm-up is off for these runs: it starts only after
the daemon is ready, so it does not change the time to ready, but a SIGTERM during the import
waits for it. Memory: VmRSS from /proc after start, after litellm's warm-up, after the first
turn, and after 100 and 200 turns (each a new conversation, answered at once by the fake).
"""

from __future__ import annotations

import argparse
import time

from pyra_client.connection import Connection
from pyra_client.protocol import AskParams, AskResult
from tests.bench.harness import (
    BenchDaemon,
    fake_llm,
    median,
    ms,
    percentile,
    print_table,
    rss_bytes,
    spawn_daemon,
    stop,
    wait_ready,
)

STARTS = 10


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def start_up() -> None:
    with BenchDaemon.home_only(warm_up=False) as bench:
        first = time.perf_counter()
        bench.start()
        cold = time.perf_counter() - first
        bench.stop()
        times: list[float] = []
        for _ in range(STARTS):
            began = time.perf_counter()
            process = spawn_daemon(bench.env)
            wait_ready(bench.layout, process)
            times.append(time.perf_counter() - began)
            stop(process)
    print(f"spawn -> first `status` answer, {STARTS} starts (ms)")
    print_table(
        ["start", "median", "p95", "min", "max"],
        [
            ["first start (creates db, vault)", ms(cold), "-", "-", "-"],
            [
                "warm starts",
                ms(median(times)),
                ms(percentile(times, 0.95)),
                ms(min(times)),
                ms(max(times)),
            ],
        ],
    )


def memory(turns: int = 100) -> None:
    rows: list[list[str]] = []
    with fake_llm() as llm, BenchDaemon.running(llm, warm_up=True) as bench:
        pid = bench.pid
        rows.append(["after start (ready)", _mib(rss_bytes(pid)), "-"])
        bench.wait_llm_ready()
        time.sleep(0.2)
        rows.append(["after litellm warm-up", _mib(rss_bytes(pid)), "-"])
        with Connection.open(bench.layout) as conn:
            began = time.perf_counter()
            conn.call("ask", AskParams(prompt="hi"), AskResult)
            rows.append(
                ["after the first turn", _mib(rss_bytes(pid)), ms(time.perf_counter() - began)]
            )
            for batch in (1, 2):
                latencies: list[float] = []
                for _ in range(turns):
                    began = time.perf_counter()
                    conn.call("ask", AskParams(prompt="hi"), AskResult)
                    latencies.append(time.perf_counter() - began)
                rows.append(
                    [
                        f"after {batch * turns} more turns",
                        _mib(rss_bytes(pid)),
                        f"{ms(median(latencies))} median",
                    ]
                )
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
        rows.append(["peak (VmHWM)", _mib(peak), "-"])
    print("daemon memory (VmRSS, MiB) and turn latency (ms, in-process client)")
    print_table(["when", "RSS MiB", "turn ms"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)  # accepted for a uniform command line
    parser.parse_args(argv)
    start_up()
    print()
    memory()


if __name__ == "__main__":
    main()
