"""Every error Pyra raises, on both sides of the socket.

One hierarchy serves the daemon and the frontends: the daemon raises these, the server turns
them into JSON-RPC errors with the class's stable :class:`~pyra_client.protocol.ErrorCode`, and
the client turns the code back into the same class (:func:`from_wire`). The CLI catches
:class:`PyraError` in one place, prints one line and exits with :attr:`PyraError.exit_code`.

::

    PyraError
    ├── UsageError                  bad command-line usage
    ├── DaemonUnreachable           no daemon answers at the endpoint
    ├── ProtocolError               the peer broke the wire protocol
    │   ├── FrameTooLargeError
    │   ├── ParseError
    │   ├── InvalidRequest
    │   ├── MethodNotFound
    │   ├── InvalidParams
    │   ├── HandshakeRequired
    │   ├── UnsupportedProtocol
    │   └── Unauthorized
    ├── InternalError               a bug in the daemon (logged there with its traceback)
    ├── ShuttingDown
    ├── NotFound
    ├── Cancelled
    ├── NotConfigured
    ├── Busy
    ├── ConfigError                 the config file is invalid
    ├── ProviderError               the LLM provider failed
    │   ├── ProviderAuthError
    │   ├── ProviderRateLimited
    │   ├── ProviderTimeout
    │   ├── ProviderUnavailable
    │   └── ProviderBadRequest
    ├── VaultLocked
    ├── VaultError
    ├── SecretNotFound
    ├── AccessDenied                a path or secret outside what the caller may touch
    └── ApprovalRefused             an approval answer that is late, unknown, replayed or forged
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from pyra_client.protocol import ErrorCode

__all__ = [
    "AccessDenied",
    "ApprovalRefused",
    "Busy",
    "Cancelled",
    "ConfigError",
    "DaemonUnreachable",
    "ExitCode",
    "FrameTooLargeError",
    "HandshakeRequired",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "NotConfigured",
    "NotFound",
    "ParseError",
    "ProtocolError",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "PyraError",
    "SecretNotFound",
    "ShuttingDown",
    "Unauthorized",
    "UnsupportedProtocol",
    "UsageError",
    "VaultError",
    "VaultLocked",
    "from_wire",
]


class ExitCode(enum.IntEnum):
    """Process exit codes of the ``pyra`` command; stable, documented in the README."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNREACHABLE = 3
    PROVIDER_AUTH = 4
    PROVIDER_RATE_LIMIT = 5
    PROVIDER_TIMEOUT = 6
    PROVIDER = 7
    NOT_CONFIGURED = 8
    NOT_FOUND = 9
    VAULT_LOCKED = 10
    REFUSED = 11
    CONFIG = 78  # EX_CONFIG: also what the daemon exits with on an invalid config
    INTERRUPTED = 130


class PyraError(Exception):
    """Root of all Pyra errors; ``data`` holds structured, secret-free details."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class UsageError(PyraError):
    """Raised for bad command-line usage (a missing prompt, conflicting flags)."""

    code = ErrorCode.INVALID_PARAMS
    exit_code = ExitCode.USAGE


class DaemonUnreachable(PyraError):
    """Raised when no daemon answers at the endpoint (and auto-start was off or failed)."""

    exit_code = ExitCode.UNREACHABLE


class ProtocolError(PyraError):
    """Raised when a peer breaks the wire protocol."""

    code = ErrorCode.INVALID_REQUEST


class FrameTooLargeError(ProtocolError):
    """Raised for a frame over the 1 MiB limit."""

    code = ErrorCode.FRAME_TOO_LARGE


class ParseError(ProtocolError):
    """Raised for a frame that is not valid JSON."""

    code = ErrorCode.PARSE_ERROR


class InvalidRequest(ProtocolError):
    """Raised for valid JSON that is not a JSON-RPC 2.0 message."""

    code = ErrorCode.INVALID_REQUEST


class MethodNotFound(ProtocolError):
    """Raised for a method the daemon does not have."""

    code = ErrorCode.METHOD_NOT_FOUND


class InvalidParams(ProtocolError):
    """Raised when a method's params fail validation."""

    code = ErrorCode.INVALID_PARAMS
    exit_code = ExitCode.USAGE


class HandshakeRequired(ProtocolError):
    """Raised for any request sent before a successful ``hello``."""

    code = ErrorCode.HANDSHAKE_REQUIRED


class UnsupportedProtocol(ProtocolError):
    """Raised when the client's protocol version is one the daemon does not speak."""

    code = ErrorCode.UNSUPPORTED_PROTOCOL


class Unauthorized(ProtocolError):
    """Raised for a wrong or missing TCP token, or a peer running as another user."""

    code = ErrorCode.UNAUTHORIZED


class InternalError(PyraError):
    """Raised for a bug in the daemon; the traceback is in the daemon's log, not here."""

    code = ErrorCode.INTERNAL_ERROR


class ShuttingDown(PyraError):
    """Raised for requests cut short because the daemon is stopping."""

    code = ErrorCode.SHUTTING_DOWN
    exit_code = ExitCode.UNREACHABLE


class NotFound(PyraError):
    """Raised when a named conversation, memory, plugin or rule does not exist."""

    code = ErrorCode.NOT_FOUND
    exit_code = ExitCode.NOT_FOUND


class Cancelled(PyraError):
    """Raised for a request cancelled by its client (Ctrl-C, ``cancel``, disconnect)."""

    code = ErrorCode.CANCELLED
    exit_code = ExitCode.INTERRUPTED


class NotConfigured(PyraError):
    """Raised when no provider is configured yet (run ``pyra setup``)."""

    code = ErrorCode.NOT_CONFIGURED
    exit_code = ExitCode.NOT_CONFIGURED


class Busy(PyraError):
    """Raised when a conversation already has a turn running."""

    code = ErrorCode.BUSY


class ConfigError(PyraError):
    """Raised when the config file is invalid; ``data['errors']`` names each bad key."""

    code = ErrorCode.INVALID_CONFIG
    exit_code = ExitCode.CONFIG


class ProviderError(PyraError):
    """Raised when the LLM provider fails in a way not covered by a subclass."""

    code = ErrorCode.PROVIDER_ERROR
    exit_code = ExitCode.PROVIDER


class ProviderAuthError(ProviderError):
    """Raised when the provider rejects the API key (HTTP 401/403)."""

    code = ErrorCode.PROVIDER_AUTH
    exit_code = ExitCode.PROVIDER_AUTH


class ProviderRateLimited(ProviderError):
    """Raised when the provider answers 429 after the configured retries."""

    code = ErrorCode.PROVIDER_RATE_LIMIT
    exit_code = ExitCode.PROVIDER_RATE_LIMIT


class ProviderTimeout(ProviderError):
    """Raised when the provider does not answer within the configured timeout."""

    code = ErrorCode.PROVIDER_TIMEOUT
    exit_code = ExitCode.PROVIDER_TIMEOUT


class ProviderUnavailable(ProviderError):
    """Raised for 5xx answers, refused connections and streams cut off mid-way."""

    code = ErrorCode.PROVIDER_UNAVAILABLE


class ProviderBadRequest(ProviderError):
    """Raised when the provider refuses the request itself (unknown model, 400, 404)."""

    code = ErrorCode.PROVIDER_BAD_REQUEST


class VaultLocked(PyraError):
    """Raised when a secret is needed while the vault is locked."""

    code = ErrorCode.VAULT_LOCKED
    exit_code = ExitCode.VAULT_LOCKED


class VaultError(PyraError):
    """Raised when the vault cannot be read or written (wrong passphrase, tampered file)."""

    code = ErrorCode.VAULT_ERROR


class SecretNotFound(PyraError):
    """Raised when a named secret is not in the vault."""

    code = ErrorCode.SECRET_NOT_FOUND
    exit_code = ExitCode.NOT_FOUND


class AccessDenied(PyraError):
    """Raised when a path or secret lies outside what the caller may touch."""

    code = ErrorCode.ACCESS_DENIED
    exit_code = ExitCode.REFUSED


class ApprovalRefused(PyraError):
    """Raised for an approval answer that is late, unknown, replayed or not the sender's."""

    code = ErrorCode.APPROVAL_REFUSED
    exit_code = ExitCode.REFUSED


def _by_code() -> dict[int, type[PyraError]]:
    table: dict[int, type[PyraError]] = {}
    stack: list[type[PyraError]] = [PyraError]
    while stack:
        cls = stack.pop()
        # The first class registered for a code is the most general one that owns it.
        table.setdefault(int(cls.code), cls)
        stack.extend(cls.__subclasses__())
    # Codes shared by a parent and a child map to the class a peer actually raises.
    table[int(ErrorCode.INTERNAL_ERROR)] = InternalError
    table[int(ErrorCode.INVALID_PARAMS)] = InvalidParams
    table[int(ErrorCode.INVALID_REQUEST)] = InvalidRequest
    return table


_BY_CODE: dict[int, type[PyraError]] | None = None


def from_wire(code: int, message: str, data: dict[str, Any] | None = None) -> PyraError:
    """The exception a JSON-RPC error object stands for (unknown codes: :class:`PyraError`)."""
    global _BY_CODE  # noqa: PLW0603 - a lazily built, immutable lookup table
    if _BY_CODE is None:
        _BY_CODE = _by_code()
    cls = _BY_CODE.get(code, PyraError)
    return cls(message, **(data or {}))
