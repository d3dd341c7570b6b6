"""A secret value that does not leak by accident.

:class:`Secret` wraps one credential (an API key, a bot token, a passphrase) so that the places
a value usually escapes through print ``***`` instead: ``repr()``, ``str()``, f-strings, log
arguments, tracebacks that show locals, and the ``data`` of a
:class:`~pyra_client.errors.PyraError`.
The value comes out only through an explicit :meth:`Secret.reveal`, which is easy to grep for.

It deliberately does not encrypt, zero memory or lock pages: CPython cannot promise that a
``str`` is ever wiped, so the protection here is against leaks through text, not against a
reader of the process's memory (the daemon disables core dumps and ptrace for that). It also
refuses to be pickled, so a secret cannot slip into a cache, a queue to another process or a
saved state file without someone revealing it on purpose.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn, Self, final

__all__ = ["Secret"]

_REDACTED = "***"


@final
class Secret:
    """An immutable secret string whose text forms are redacted.

    ``Secret("sk-...")`` and ``Secret(b"sk-...")`` (UTF-8) hold the same value. Two secrets
    compare equal in constant time; a secret never equals a plain ``str``, so a comparison
    cannot reveal the value by accident. Secrets are unhashable (a hash would be a cheap
    equality oracle) and not picklable.
    """

    __slots__ = ("_value",)

    _value: str

    def __init__(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                # ``from None``: the UnicodeDecodeError carries the raw bytes in ``.object``.
                raise ValueError("a secret given as bytes must be valid UTF-8") from None
        elif isinstance(value, str):
            text = value
        else:
            raise TypeError(f"a secret must be str or bytes, not {type(value).__name__}")
        object.__setattr__(self, "_value", text)

    def reveal(self) -> str:
        """The secret's value; call this only where the value is actually used."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_REDACTED}')"

    def __str__(self) -> str:
        return _REDACTED

    def __format__(self, format_spec: str) -> str:
        return format(_REDACTED, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose, see the class docstring

    def __bool__(self) -> bool:
        return bool(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; reveal() it explicitly where that is meant")

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self
