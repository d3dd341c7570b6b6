"""What the benchmarks share: a private home, a real daemon against the fake LLM, timing helpers.

Benchmarks run the same way a user does: ``python -m pyra_daemon`` and the installed ``pyra``
script as separate processes, with a bytecode cache (``.bench/pycache``, ignored by git), since
an installed tool has one; this environment sets ``PYTHONDONTWRITEBYTECODE``, which would make
every run compile ``pyra_client`` from source and measure the compiler instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyra_client.connection import Connection
from pyra_client.errors import DaemonUnreachable
from pyra_client.paths import Layout
from pyra_client.protocol import Empty, SetupParams, SetupResult, StatusResult
from tests.fakes.llm_server import FakeLLMServer

__all__ = [
    "PYRA",
    "PYTHON",
    "BenchDaemon",
    "bench_env",
    "fake_llm",
    "ms",
    "percentile",
    "print_table",
    "rss_bytes",
    "spawn_daemon",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PYRA = str(Path(sys.executable).with_name("pyra"))
PYCACHE = ROOT / ".bench" / "pycache"
CONFIG = """\
[llm]
retries = 0
timeout = 30

[daemon]
log_level = "WARNING"
warm_up = {warm_up}
"""


def bench_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYRA_", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET", "WATCHDOG_"))
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        PYRA_HOME=str(home),
        FAKE_KEY="sk-bench-0123456789",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONPYCACHEPREFIX=str(PYCACHE),
    )
    return env


def prime_bytecode(env: dict[str, str]) -> None:
    """Fill the bytecode cache for everything the client and the daemon import."""
    PYCACHE.mkdir(parents=True, exist_ok=True)
    code = "import pyra_client.cli.ask, pyra_client.cli.app, pyra_daemon.daemon, litellm"
    subprocess.run([PYTHON, "-c", code], env=env, check=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def spawn_daemon(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "pyra_daemon"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(
    layout: Layout, process: subprocess.Popen[bytes], timeout: float = 60
) -> StatusResult:
    """Poll until the daemon answers ``status``; returns that answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Connection.open(layout, timeout=1.0) as conn:
                return conn.call("status", Empty(), StatusResult)
        except DaemonUnreachable:
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class BenchDaemon:
    """A home in a short temporary folder and a daemon serving it (see :meth:`running`)."""

    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.home)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @classmethod
    @contextlib.contextmanager
    def home_only(cls, *, warm_up: bool = True) -> Iterator[BenchDaemon]:
        root = Path(tempfile.mkdtemp(prefix="pyra"))
        try:
            home = root / "home"
            home.mkdir(mode=0o700)
            (home / "config.toml").write_text(CONFIG.format(warm_up=str(warm_up).lower()))
            (home / "config.toml").chmod(0o600)
            bench = cls(home=home, env=bench_env(home))
            prime_bytecode(bench.env)
            yield bench
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, llm: FakeLLMServer, *, warm_up: bool = True) -> Iterator[BenchDaemon]:
        with cls.home_only(warm_up=warm_up) as bench:
            bench.start()
            try:
                with Connection.open(bench.layout) as conn:
                    conn.call(
                        "setup",
                        SetupParams(
                            provider="openai-compatible",
                            model="fake-model",
                            base_url=llm.base_url,
                            api_key_env="FAKE_KEY",
                        ),
                        SetupResult,
                    )
                yield bench
            finally:
                bench.stop()

    def start(self) -> StatusResult:
        self.process = spawn_daemon(self.env)
        return wait_ready(self.layout, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def wait_llm_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Connection.open(self.layout) as conn:
                if conn.call("status", Empty(), StatusResult).llm_ready:
                    return
            time.sleep(0.05)
        raise TimeoutError("litellm did not finish loading")


def rss_bytes(pid: int) -> int:
    """VmRSS of *pid*, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join("-" * width for width in widths)

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    print(fmt(header))
    print(line)
    for row in rows:
        print(fmt(row))
