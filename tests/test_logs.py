"""`pyra logs`: tail and follow of the daemon's rotating log file, and redaction at write time.

:func:`tail` and :func:`follow` run in-process against files written here, with the daemon's
own rotation (``RotatingFileHandler``) where rotation matters; ``pyra logs`` runs as a real
command. Every wait is bounded by a deadline, so a broken follower fails, never hangs.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyra_client.cli.logs import follow, tail
from pyra_client.paths import Layout
from tests.conftest import PYRA, DaemonHandle, clean_env

DEADLINE = 10.0


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """conftest's home without litellm's background warm-up, so a daemon stops at once."""
    config = pyra_home / "config.toml"
    config.write_text(config.read_text() + "warm_up = false\n")  # the last section: [daemon]
    return pyra_home


def write_lines(path: Path, lines: list[str], mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as out:
        out.writelines(f"{line}\n" for line in lines)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def log_file(pyra_home: Path) -> Path:
    path = Layout(pyra_home).log_file
    path.parent.mkdir(mode=0o700)
    return path


# --- tail -------------------------------------------------------------------------------------


def test_tail_returns_the_last_lines(log_file: Path) -> None:
    write_lines(log_file, [f"line {i}" for i in range(1, 101)])

    assert tail(log_file, 3) == [b"line 98\n", b"line 99\n", b"line 100\n"]
    assert tail(log_file, 0) == []
    assert len(tail(log_file, 500)) == 100


def test_tail_reads_across_blocks_and_keeps_a_last_line_without_newline(log_file: Path) -> None:
    long = "x" * 50_000
    write_lines(log_file, [f"{i} {long}" for i in range(5)])
    with log_file.open("a") as out:
        out.write("unfinished")

    lines = tail(log_file, 3)

    assert [line[:2] for line in lines] == [b"3 ", b"4 ", b"un"]
    assert lines[0] == f"3 {long}\n".encode()


def test_tail_continues_into_the_rotated_files(log_file: Path) -> None:
    write_lines(log_file.with_name("pyrad.log.2"), ["a1", "a2"])
    write_lines(log_file.with_name("pyrad.log.1"), ["b1", "b2", "b3"])
    write_lines(log_file, ["c1"])

    assert tail(log_file, 5) == [b"a2\n", b"b1\n", b"b2\n", b"b3\n", b"c1\n"]
    assert tail(log_file, 50) == [b"a1\n", b"a2\n", b"b1\n", b"b2\n", b"b3\n", b"c1\n"]


# --- follow -----------------------------------------------------------------------------------


class Follower:
    """Runs :func:`follow` in a thread and collects what it writes."""

    def __init__(self, path: Path, lines: int) -> None:
        self.chunks: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=follow,
            args=(path, lines, self.chunks.append),
            kwargs={"interval": 0.01, "stop": self._stop.is_set},
            daemon=True,
        )
        self._thread.start()

    @property
    def lines(self) -> list[str]:
        return b"".join(self.chunks).decode().splitlines()

    def wait_for(self, *lines: str) -> None:
        wait_for(lambda: self.lines[-len(lines) :] == list(lines), f"lines {lines}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()


@pytest.fixture
def follower_factory() -> Iterator[Callable[[Path, int], Follower]]:
    followers: list[Follower] = []

    def make(path: Path, lines: int) -> Follower:
        followers.append(Follower(path, lines))
        return followers[-1]

    yield make
    for follower in followers:
        follower.close()


def test_follow_prints_the_backlog_then_new_lines(
    log_file: Path, follower_factory: Callable[[Path, int], Follower]
) -> None:
    write_lines(log_file, ["old 1", "old 2", "old 3"])

    follower = follower_factory(log_file, 2)
    follower.wait_for("old 2", "old 3")
    write_lines(log_file, ["new 1", "new 2"])
    follower.wait_for("new 1", "new 2")

    assert follower.lines == ["old 2", "old 3", "new 1", "new 2"]


def test_follow_holds_a_partial_line_until_its_newline(
    log_file: Path, follower_factory: Callable[[Path, int], Follower]
) -> None:
    write_lines(log_file, ["first"])
    follower = follower_factory(log_file, 5)
    follower.wait_for("first")

    with log_file.open("a") as out:
        out.write("half a ")
        out.flush()
        time.sleep(0.1)  # several polls see the unfinished line
        out.write("line\n")
    follower.wait_for("half a line")

    assert follower.lines == ["first", "half a line"]


def test_follow_survives_the_daemons_rotation_without_losing_lines(
    log_file: Path, follower_factory: Callable[[Path, int], Follower]
) -> None:
    # The daemon's handler (pyra_daemon.logs), with a tiny size so it rotates every few lines.
    handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=200, backupCount=5)
    logger = logging.getLogger("test_logs.rotation")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("before")
        follower = follower_factory(log_file, 1)
        follower.wait_for("before")
        expected = [f"message {i:03d} " + "." * 40 for i in range(40)]
        for index, message in enumerate(expected):
            logger.info(message)
            if index % 4 == 0:
                time.sleep(0.02)  # let the follower see some rotations one by one
        follower.wait_for(expected[-1])
    finally:
        logger.removeHandler(handler)
        handler.close()

    assert log_file.with_name("pyrad.log.3").exists()  # it did rotate, several times
    assert follower.lines == ["before", *expected]


def test_follow_starts_over_after_a_truncation_and_waits_for_a_missing_file(
    log_file: Path, follower_factory: Callable[[Path, int], Follower]
) -> None:
    follower = follower_factory(log_file, 10)  # nothing there yet
    time.sleep(0.05)
    write_lines(log_file, ["created"])
    follower.wait_for("created")

    log_file.write_bytes(b"")  # `: > pyrad.log`; the daemon appends (O_APPEND) after it
    time.sleep(0.1)  # a poll sees the shorter file (a longer rewrite in between cannot be told)
    write_lines(log_file, ["after truncation"])
    follower.wait_for("after truncation")

    assert follower.lines == ["created", "after truncation"]


# --- the command ------------------------------------------------------------------------------


def test_logs_n_prints_the_last_lines(log_file: Path, pyra_home: Path) -> None:
    write_lines(log_file, [f"line {i}" for i in range(1, 21)])

    done = subprocess.run(
        [PYRA, "logs", "-n", "3"],
        env=clean_env(pyra_home),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "line 18\nline 19\nline 20\n"


def test_logs_without_a_log_file_says_so(pyra_home: Path) -> None:
    done = subprocess.run(
        [PYRA, "logs"],
        env=clean_env(pyra_home),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 9
    assert "no log yet" in done.stderr


def test_journal_needs_the_installed_service(pyra_home: Path, short_dir: Path) -> None:
    env = {**clean_env(pyra_home), "XDG_CONFIG_HOME": str(short_dir / "xdg")}

    done = subprocess.run(
        [PYRA, "logs", "--journal"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert "not installed" in done.stderr


def test_logs_f_follows_until_interrupted(log_file: Path, pyra_home: Path) -> None:
    write_lines(log_file, ["one", "two"])
    process = subprocess.Popen(
        [PYRA, "logs", "-f", "-n", "1"],
        env=clean_env(pyra_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        got: list[str] = []
        reader = threading.Thread(
            target=lambda: got.extend(iter(process.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        wait_for(lambda: got == ["two\n"], "the backlog")
        write_lines(log_file, ["three", "four"])
        wait_for(lambda: got == ["two\n", "three\n", "four\n"], "followed lines")

        process.send_signal(signal.SIGINT)  # Ctrl-C ends it cleanly
        assert process.wait(DEADLINE) == 0
        reader.join(DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- redaction at write time --------------------------------------------------------------------


def test_key_shaped_strings_reach_the_log_file_as_stars(pyra_home: Path) -> None:
    """A person pastes keys into config.toml; the daemon's complaint must not repeat them."""
    openai_like = "sk-proj-abcdefghijklmnopqrstuvwx0123"
    telegram_like = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()
    log_file = handle.layout.log_file
    try:
        config = pyra_home / "config.toml"
        config.write_text(
            config.read_text() + f'{openai_like} = 1\n"{telegram_like}" = 2\n'
        )  # both land in [daemon] as unknown keys, which the error names
        os.kill(handle.pid, signal.SIGHUP)
        wait_for(lambda: "config not reloaded" in log_file.read_text(), "the reload error")
    finally:
        handle.stop()

    text = log_file.read_text()
    error = next(line for line in text.splitlines() if "config not reloaded" in line)
    assert "daemon.***" in error
    for secret in (openai_like, telegram_like):
        assert secret not in text
        assert secret not in handle.stderr()  # the journald-bound stderr too
    assert stat_mode(log_file) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
