"""What the typer command groups share: reaching the daemon, and printing results.

Every command that needs the daemon goes through :func:`call`, which connects (starting the
daemon unless told not to), sends one request and returns the typed result; errors propagate as
:class:`~pyra_client.errors.PyraError` to the single handler in :mod:`pyra_client.cli`.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import msgspec

from pyra_client.autostart import connect_or_start
from pyra_client.paths import Layout

__all__ = ["call", "print_json"]

T = TypeVar("T")


def call(method: str, params: object, result_type: type[T], *, autostart: bool = True) -> T:
    with connect_or_start(Layout.default(), autostart=autostart) as conn:
        return conn.call(method, params, result_type)


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value).decode(), indent=2) + "\n")
