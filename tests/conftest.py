"""Shared fixtures: a fake LLM on loopback, a private Pyra home, and a real daemon process.

The daemon fixture spawns ``python -m pyra_daemon`` exactly as ``pyra daemon start`` does, with
its own ``$PYRA_HOME`` in a short temporary directory (AF_UNIX paths are limited to 108 bytes),
configures it against the fake LLM server, and stops it by its own process handle.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pyra_client.connection import Connection
from pyra_client.errors import DaemonUnreachable
from pyra_client.paths import Layout
from pyra_client.protocol import SetupParams, SetupResult
from tests.fakes.llm_server import FakeLLMServer

FAKE_KEY = "sk-fake-test-key-0123456789abcdef"
PYRA = str(Path(sys.executable).with_name("pyra"))
#: Keep provider errors fast and deterministic: no retries, short timeouts.
TEST_CONFIG = """\
[llm]
retries = 0
timeout = 10

[daemon]
shutdown_grace = 5
log_level = "DEBUG"
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pyra"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server
        assert not server.errors, server.errors


def clean_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYRA_", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(
        PYRA_HOME=str(home),
        FAKE_KEY=FAKE_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class DaemonHandle:
    """A daemon process under test and helpers to talk to it."""

    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    stderr_path: Path = field(default_factory=Path)

    @property
    def layout(self) -> Layout:
        return Layout(self.home)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def connect(self, client: str = "cli") -> Connection:
        return Connection.open(self.layout, client=client)

    def cli(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYRA, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )

    def start(self, timeout: float = 20.0) -> None:
        self.stderr_path = self.home.parent / "daemon.stderr"
        with self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyra_daemon"],
                env=self.env,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited {self.process.returncode}: {self.stderr()}")
            try:
                self.connect().close()
                return
            except DaemonUnreachable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def configure(self, base_url: str) -> None:
        with self.connect() as conn:
            conn.call(
                "setup",
                SetupParams(
                    provider="openai-compatible",
                    model="fake-model",
                    base_url=base_url,
                    api_key_env="FAKE_KEY",
                ),
                SetupResult,
            )


@pytest.fixture
def pyra_home(short_dir: Path) -> Path:
    home = short_dir / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(TEST_CONFIG)
    (home / "config.toml").chmod(0o600)
    return home


@pytest.fixture
def daemon(pyra_home: Path, fake_llm: FakeLLMServer) -> Iterator[DaemonHandle]:
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()
    handle.configure(fake_llm.base_url)
    try:
        yield handle
    finally:
        handle.stop()
