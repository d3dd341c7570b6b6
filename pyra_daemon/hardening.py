"""Process hardening applied at daemon start: no core dumps, no ptrace by other processes.

Secrets are decrypted into this process's memory; a core file or a debugger attached by
another process of the same user would copy them out. ``PR_SET_DUMPABLE=0`` forbids both on
Linux (and makes ``/proc/<pid>/mem`` and ``environ`` readable by root only); elsewhere only the
core-size limit is lowered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

__all__ = ["harden_process", "is_dumpable"]

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def harden_process() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux") and _prctl(_PR_SET_DUMPABLE, 0) != 0:
        log.warning("could not disable ptrace/core dumps (prctl failed)")


def is_dumpable() -> bool | None:
    """Whether this process may be dumped or traced (None where it cannot be asked)."""
    if not sys.platform.startswith("linux"):
        return None
    return _prctl(_PR_GET_DUMPABLE, 0) != 0
