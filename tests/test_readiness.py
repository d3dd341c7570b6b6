"""The daemon tells its service manager how it is doing: sd_notify, end to end.

The daemon runs as systemd would run it (``python -m pyra_daemon`` with ``$NOTIFY_SOCKET`` and
``$WATCHDOG_USEC`` in its environment); the test plays systemd's part with a real AF_UNIX
datagram socket in a short temporary folder (pytest's ``tmp_path`` can exceed the 108-byte
``sun_path`` limit). Promised, and checked here:

* ``READY=1`` is sent once the socket accepts connections: a client connecting the moment it
  arrives gets an answer;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from the event loop, and none without it (or
  when ``WATCHDOG_PID`` names another process);
* ``RELOADING=1`` then ``READY=1`` around SIGHUP, a bad config included;
* ``STOPPING=1`` on SIGTERM, then a clean exit.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyra_client.connection import Connection
from pyra_client.paths import Layout
from pyra_client.protocol import Empty, StatusResult
from tests.conftest import clean_env

START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Message:
    at: float
    states: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(state.partition("=")[0] for state in self.states)


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="pyra")
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[Message] = []

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = Message(time.monotonic(), tuple(data.decode().split("\n")))
        self.received.append(message)
        return message

    def wait_for(self, state: str, timeout: float = START_TIMEOUT) -> Message:
        """The next message holding *state*; fails after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and state in message.states:
                return message
        pytest.fail(f"no {state} within {timeout:g} s; received {self.received}")

    def collect(self, seconds: float) -> list[Message]:
        """Every message of the next *seconds* seconds."""
        deadline = time.monotonic() + seconds
        messages = []
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                messages.append(message)
        return messages


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def home(pyra_home: Path) -> Path:
    config = pyra_home / "config.toml"
    # No litellm import in the background: nothing here needs it, and stops are quicker.
    config.write_text(config.read_text() + "warm_up = false\n")
    return pyra_home


@pytest.fixture
def spawn(home: Path, systemd: FakeSystemd) -> Iterator[_Spawner]:
    spawner = _Spawner(home, systemd)
    try:
        yield spawner
    finally:
        spawner.close()


class _Spawner:
    def __init__(self, home: Path, systemd: FakeSystemd) -> None:
        self.home = home
        self.systemd = systemd
        self.process: subprocess.Popen[bytes] | None = None

    def __call__(self, **env: str) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyra_daemon"],
            env={**clean_env(self.home), "NOTIFY_SOCKET": self.systemd.path, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self.process

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_ready_comes_once_the_socket_accepts_and_stopping_on_sigterm(
    spawn: _Spawner, systemd: FakeSystemd, home: Path
) -> None:
    process = spawn()

    ready = systemd.wait_for("READY=1")
    # Right now, with no retry: the socket must already accept and the daemon answer.
    with Connection.open(Layout(home), timeout=1.0) as conn:
        status = conn.call("status", Empty(), StatusResult)
    assert status.pid == process.pid
    assert systemd.received == [ready]  # READY=1 was the first word, sent once
    quiet = systemd.collect(0.3)
    assert "WATCHDOG" not in {key for message in quiet for key in message.keys}

    process.send_signal(signal.SIGTERM)

    systemd.wait_for("STOPPING=1", timeout=10)
    assert process.wait(10) == 0


def test_watchdog_pings_at_half_the_interval(spawn: _Spawner, systemd: FakeSystemd) -> None:
    spawn(WATCHDOG_USEC="200000")  # 0.2 s: a ping every ~0.1 s
    systemd.wait_for("READY=1")

    pings = [m.at for m in systemd.collect(1.0) if "WATCHDOG=1" in m.states]

    assert len(pings) >= 5, pings
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    # Half the interval, so one late ping is not yet fatal (a loaded CI machine may delay one).
    assert 0.05 <= statistics.median(gaps) <= 0.15, gaps


def test_no_watchdog_when_the_variables_are_meant_for_another_process(
    spawn: _Spawner, systemd: FakeSystemd
) -> None:
    spawn(WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    systemd.wait_for("READY=1")

    assert not [m for m in systemd.collect(0.5) if "WATCHDOG=1" in m.states]


def test_sighup_sends_reloading_then_ready_even_for_a_bad_config(
    spawn: _Spawner, systemd: FakeSystemd, home: Path
) -> None:
    process = spawn()
    systemd.wait_for("READY=1")

    for config in (None, "[llm\n"):
        if config is not None:
            (home / "config.toml").write_text(config)
        process.send_signal(signal.SIGHUP)
        reloading = systemd.wait_for("RELOADING=1", timeout=10)
        assert reloading.keys == ("RELOADING", "MONOTONIC_USEC")
        ready = systemd.wait_for("READY=1", timeout=10)
        assert ready.at >= reloading.at
        with Connection.open(Layout(home), timeout=1.0) as conn:  # still serving
            conn.call("status", Empty(), StatusResult)

    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
