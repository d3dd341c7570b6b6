"""Logging for the daemon: journald-friendly stderr and a rotating file, with redaction.

Handlers are configured only here, at daemon start. Every record passes through
:class:`Redactor`, which masks registered secret values and key-shaped strings in the message,
its arguments and any traceback, so a secret cannot reach a log by accident.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
from pathlib import Path

__all__ = ["Redactor", "redactor", "setup_logging"]

_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]+|\b\d{8,10}:[A-Za-z0-9_\-]{30,}\b)"
)


class Redactor(logging.Filter):
    """Masks secret values (registered at run time) and key-shaped strings in log records."""

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) >= 6:
            with self._lock:
                self._values.add(value)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            text = text.replace(value, "***")
        return _PATTERNS.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            formatter = logging.Formatter()
            message += "\n" + formatter.formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.scrub(message)
        record.args = None
        return True


#: The daemon's one redactor; the vault registers each secret it hands out.
redactor = Redactor()


def setup_logging(log_file: Path, level: str = "INFO") -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    under_journal = "JOURNAL_STREAM" in os.environ
    stderr = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamps; a terminal or a plain file wants them.
    stderr.setFormatter(
        logging.Formatter(
            "%(levelname)s %(name)s: %(message)s"
            if under_journal
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    )
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not log_file.exists():
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT, 0o600))
    rotating = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=5 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    rotating.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    for handler in (stderr, rotating):
        handler.addFilter(redactor)
        root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "aiosqlite", "LiteLLM", "openai", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
