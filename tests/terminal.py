"""Drive a command on a real pseudo-terminal, for prompts and hidden (getpass) input.

``pty.fork`` makes the pty the child's controlling terminal, so ``getpass`` reads from
``/dev/tty`` with echo off exactly as for a person; everything the command writes (and the
terminal echoes) is collected in ``output``, which lets a test assert that a hidden value was
never shown.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import time

__all__ = ["Terminal"]


class Terminal:
    """A command on a pty: :meth:`expect` text, :meth:`send` a line, :meth:`wait` for the end."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes the command, or exits at once
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self._seen = 0
        self.returncode: int | None = None

    def _read(self, timeout: float) -> bool:
        """Read what is there within *timeout*; False at the end of the output."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.output += data.decode(errors="replace").replace("\r\n", "\n")
        return True

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Wait until *text* appears after the previous match; returns the output up to it."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self._seen :]:
            if time.monotonic() > deadline or not self._read(0.1):
                if text in self.output[self._seen :]:
                    break
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")
        end = self.output.index(text, self._seen) + len(text)
        before, self._seen = self.output[self._seen : end], end
        return before

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def wait(self, timeout: float = 60.0) -> int:
        """Read to the end and reap the command; returns its exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.1):
            pass
        os.close(self.fd)
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:  # still running after the timeout: a test failure, not a hang
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
