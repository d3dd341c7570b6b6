"""`pyra ask "hi"` wall time against a warm daemon, next to its floors.

Every command runs as a new process, the way a shell script runs ``pyra ask``; the runs are
interleaved so that a change in machine load hits every row alike. Floors: the interpreter
alone (``python -c pass``) and a stdlib-only client doing the same exchange
(:mod:`tests.bench.min_client`). The fake LLM answers "ok" at once, so the daemon's share is
the in-process round trip (last row).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from pathlib import Path

from pyra_client.connection import Connection
from pyra_client.paths import read_endpoint
from pyra_client.protocol import AskParams, AskResult
from tests.bench.harness import (
    PYRA,
    PYTHON,
    BenchDaemon,
    fake_llm,
    median,
    ms,
    percentile,
    print_table,
)

MIN_CLIENT = str(Path(__file__).with_name("min_client.py"))


def _time(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - began


def _import_profile(env: dict[str, str], runs: int = 10) -> list[tuple[str, float, float]]:
    """(module, cumulative ms, self ms), best of *runs*, for the top-level imports of the
    ``pyra ask`` path."""
    best: dict[str, tuple[float, float]] = {}
    order: list[str] = []
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")
    for _ in range(runs):
        err = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", "import pyra_client.cli.ask"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for line in err.splitlines():
            match = pattern.match(line)
            if not match or len(match[3]) > 4:  # keep two levels of nesting
                continue
            name, own, total = match[4], int(match[1]) / 1000, int(match[2]) / 1000
            if name not in best:
                order.append(name)
                best[name] = (total, own)
            else:
                best[name] = (min(best[name][0], total), min(best[name][1], own))
    return [(name, *best[name]) for name in order if best[name][0] >= 1.0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args(argv).runs

    with fake_llm() as llm, BenchDaemon.running(llm) as bench:
        bench.wait_llm_ready()
        env = bench.env
        no_cache = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
        no_cache.pop("PYTHONPYCACHEPREFIX")
        socket_path = read_endpoint(bench.layout).path
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass (interpreter floor)": ([PYTHON, "-c", "pass"], env),
            "stdlib client: hello + ask (floor)": ([PYTHON, MIN_CLIENT, socket_path, "hi"], env),
            'pyra ask "hi"': ([PYRA, "ask", "hi"], env),
            'pyra ask "hi", no bytecode cache': ([PYRA, "ask", "hi"], no_cache),
        }
        for command, command_env in commands.values():  # warm the first call and the caches
            _time(command, command_env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (command, command_env) in commands.items():
                samples[name].append(_time(command, command_env))
        in_process: list[float] = []
        with Connection.open(bench.layout) as conn:
            for _ in range(runs):
                began = time.perf_counter()
                conn.call("ask", AskParams(prompt="hi"), AskResult)
                in_process.append(time.perf_counter() - began)
        profile = _import_profile(env)

    floor = median(samples["stdlib client: hello + ask (floor)"])
    interpreter = median(samples["python -c pass (interpreter floor)"])
    rows = [
        [
            name,
            ms(median(values)),
            ms(percentile(values, 0.95)),
            ms(median(values) - interpreter),
            f"{median(values) / floor:.2f}x",
        ]
        for name, values in samples.items()
    ]
    rows.append(
        [
            "in-process Connection ask (daemon round trip)",
            ms(median(in_process)),
            ms(percentile(in_process, 0.95)),
            "-",
            f"{median(in_process) / floor:.2f}x",
        ]
    )
    print(f"{runs} runs each, interleaved; times in ms")
    print_table(["command", "median", "p95", "minus python", "vs stdlib client"], rows)
    ask_median = median(samples['pyra ask "hi"'])
    print(
        f"\npyra ask / stdlib client: {ask_median / floor:.2f}x "
        f"({ms(ask_median - floor)} ms above the floor)"
    )
    print("\nimport time of `import pyra_client.cli.ask` (best of 10, ms; two levels shown)")
    print_table(
        ["module", "cumulative", "self"],
        [[name, f"{total:.1f}", f"{own:.1f}"] for name, total, own in profile],
    )


if __name__ == "__main__":
    main()
