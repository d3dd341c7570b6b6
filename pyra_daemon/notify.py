"""Tell the service manager how the daemon is doing: the ``sd_notify`` protocol.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` set to a Unix datagram socket
(a path, or an abstract name written with a leading ``@``). The daemon sends newline-separated
``KEY=VALUE`` states to it: ``READY=1`` once it accepts connections, ``RELOADING=1`` and
``STOPPING=1`` around SIGHUP and SIGTERM, ``WATCHDOG=1`` as a heartbeat, ``STATUS=...`` for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (run from a shell, under launchd, in tests)
every call is a no-op that returns ``False``.

What this module deliberately does not do:

* It does not ping the watchdog by itself. The daemon's event loop calls :func:`watchdog`
  every ``watchdog_interval() / 2`` seconds, so a hung loop stops the pings and systemd
  restarts it; a helper thread pinging on its own would hide exactly that hang.
* It does not use the ``sdnotify`` package from PyPI (no release since 2017) nor libsystemd
  through ctypes: the protocol is one ``sendto`` on a datagram socket, about 30 lines here.
* It does not remove ``$NOTIFY_SOCKET`` from ``os.environ``. Whoever spawns plugin or tool
  processes should drop :data:`ENVIRONMENT_VARIABLES` from their environment; the unit's
  ``NotifyAccess=main`` makes systemd ignore them anyway.
* It never raises on a failed send: losing a status message must not take the daemon down.
  A failure is logged and reported as ``False``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

#: Variables the service manager sets for the main process only; children must not inherit them.
ENVIRONMENT_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte instead of "@".
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # "vsock:CID:PORT" (systemd 254+, for virtual machines) is not used by a user service.
    return None


def notify(*states: str) -> bool:
    """Send *states* (``"READY=1"``, ...) as one message; ``False`` if there is no one to tell."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw or not states:
        return False
    address = _address(raw)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a Unix socket address; not notifying", raw)
        return False
    message = "\n".join(states).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", raw, exc)
        return False
    return True


def ready() -> bool:
    """The daemon accepts connections (also sent again after a reload)."""
    return notify("READY=1")


def stopping() -> bool:
    """The daemon has begun its graceful shutdown."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """The daemon is reloading its config; send :func:`ready` when done.

    ``MONOTONIC_USEC`` lets systemd 253+ tell this reload from an earlier one.
    """
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")


def watchdog() -> bool:
    """Heartbeat: the event loop is alive."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl --user status pyra``."""
    return notify("STATUS=" + " ".join(text.split()))


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects a :func:`watchdog` ping, or ``None`` if it does not.

    ``None`` when ``$WATCHDOG_USEC`` is unset or invalid, or when ``$WATCHDOG_PID`` names
    another process (the variables were inherited, not meant for us). Ping at half this.
    """
    raw = os.environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000
