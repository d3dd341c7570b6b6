"""The Pyra wire protocol: JSON-RPC 2.0, one UTF-8 JSON object per ``\\n``-terminated line.

Every request, result and notification is a msgspec Struct defined here; both sides import this
module (the daemon and every frontend), so it must stay light: msgspec and the stdlib only.

This module is sans-I/O: it encodes and decodes frames and splits a byte stream into lines
(:class:`FrameSplitter`), but it never touches a socket. :mod:`pyra_client.connection` and
``pyra_daemon.server`` do the I/O.

Evolution rules (read before changing anything here):

* ``PROTOCOL_VERSION`` is bumped only for changes an old peer cannot ignore.
* New fields get defaults; existing fields never change type or meaning; tags never change.
* Unknown fields are ignored on decode (msgspec's default), so a newer peer's extra data is safe.
* Unknown stream event types decode to :class:`UnknownEvent` instead of raising, so an older
  client keeps working against a newer daemon.
* Error codes in :class:`ErrorCode` are stable forever; add new ones, never renumber.

A session (see ``docs/protocol.md`` for a full transcript)::

    -> {"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,"client":"cli"}}
    <- {"jsonrpc":"2.0","id":1,"result":{"protocol":1,"daemon_version":"0.1.0","pid":42}}
    -> {"jsonrpc":"2.0","id":2,"method":"ask","params":{"prompt":"hi"}}
    <- {"jsonrpc":"2.0","method":"stream","params":{"request":2,"type":"text","text":"Hel"}}
    <- {"jsonrpc":"2.0","id":2,"result":{"conversation":"cli:...","text":"Hello", ...}}
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "AskParams",
    "AskResult",
    "CancelParams",
    "CancelResult",
    "ConversationExportParams",
    "ConversationExportResult",
    "ConversationIdParams",
    "ConversationListParams",
    "ConversationListResult",
    "ConversationShowResult",
    "ConversationSummary",
    "DecodedMessage",
    "Empty",
    "ErrorCode",
    "ErrorObject",
    "Event",
    "FrameSplitter",
    "FrameTooLarge",
    "HelloParams",
    "HelloResult",
    "MessageView",
    "Notification",
    "OkResult",
    "Request",
    "Response",
    "SetupParams",
    "SetupResult",
    "StatusResult",
    "StreamEvent",
    "TaskStatus",
    "TextDelta",
    "ToolCallEvent",
    "ToolResultEvent",
    "TurnUsage",
    "UnknownEvent",
    "decode_event",
    "decode_message",
    "encode",
]

PROTOCOL_VERSION = 1
#: Versions this build speaks. A daemon refuses a ``hello`` naming any other with
#: :attr:`ErrorCode.UNSUPPORTED_PROTOCOL`.
SUPPORTED_PROTOCOLS = frozenset({1})
#: The largest frame either side accepts, newline included.
MAX_FRAME_BYTES = 1024 * 1024


class ErrorCode(enum.IntEnum):
    """Stable JSON-RPC error codes. Never renumber; only add."""

    # JSON-RPC 2.0's own.
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # Transport and session (-32000..-32099 is JSON-RPC's range for server errors).
    FRAME_TOO_LARGE = -32001
    HANDSHAKE_REQUIRED = -32002
    UNSUPPORTED_PROTOCOL = -32003
    UNAUTHORIZED = -32004
    SHUTTING_DOWN = -32005
    # Application errors.
    NOT_FOUND = 1000
    CANCELLED = 1001
    NOT_CONFIGURED = 1002
    BUSY = 1003
    INVALID_CONFIG = 1004
    PROVIDER_ERROR = 2000
    PROVIDER_AUTH = 2001
    PROVIDER_RATE_LIMIT = 2002
    PROVIDER_TIMEOUT = 2003
    PROVIDER_UNAVAILABLE = 2004
    PROVIDER_BAD_REQUEST = 2005
    VAULT_LOCKED = 3000
    VAULT_ERROR = 3001
    SECRET_NOT_FOUND = 3002
    ACCESS_DENIED = 3003
    APPROVAL_REFUSED = 4000


# --- Envelopes -----------------------------------------------------------------------------


class Base(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Base of every payload struct: defaults are omitted on the wire."""


class ErrorObject(Base):
    code: int
    message: str
    data: dict[str, Any] | None = None


# Envelopes always carry ``"jsonrpc": "2.0"``; absent members are UNSET (never ``null``),
# since JSON-RPC forbids a response holding both ``result`` and ``error``.


class Request(msgspec.Struct, kw_only=True):
    jsonrpc: Literal["2.0"] = "2.0"
    id: int | str
    method: str
    params: Any = msgspec.UNSET


class Response(msgspec.Struct, kw_only=True):
    jsonrpc: Literal["2.0"] = "2.0"
    id: int | str | None
    result: Any = msgspec.UNSET
    error: ErrorObject | msgspec.UnsetType = msgspec.UNSET


class Notification(msgspec.Struct, kw_only=True):
    jsonrpc: Literal["2.0"] = "2.0"
    method: str
    params: Any = msgspec.UNSET


class DecodedMessage(msgspec.Struct):
    """Any JSON-RPC message, as read off the wire; ``params`` and ``result`` stay raw so they
    are decoded once, straight into the struct the method expects."""

    jsonrpc: str | None = None
    id: int | str | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw(b"")
    result: msgspec.Raw = msgspec.Raw(b"")
    error: ErrorObject | None = None

    @property
    def is_request(self) -> bool:
        return self.method is not None and self.id is not None

    @property
    def is_notification(self) -> bool:
        return self.method is not None and self.id is None


# --- Methods -------------------------------------------------------------------------------


class Empty(Base):
    """Params of methods that take none."""


class OkResult(Base):
    ok: bool = True


class HelloParams(Base, forbid_unknown_fields=False):
    protocol: int
    client: str
    client_version: str = ""
    #: Required on loopback TCP: the contents of the daemon's 0600 token file.
    token: str | None = None


class HelloResult(Base):
    protocol: int
    daemon_version: str
    pid: int


class AskParams(Base):
    prompt: str
    #: Continue this conversation; a new one is started when omitted.
    conversation: str | None = None
    #: Continue the most recent conversation of this client kind.
    continue_last: bool = False
    #: Send ``stream`` notifications while the turn runs.
    stream: bool = True


class TurnUsage(Base):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: USD, when the provider's price is known to litellm.
    cost: float | None = None


class AskResult(Base):
    conversation: str
    text: str
    model: str
    usage: TurnUsage
    turn: int


class CancelParams(Base):
    #: The id of the in-flight request to cancel, on the same connection.
    request: int | str


class CancelResult(Base):
    cancelled: bool


class ConversationListParams(Base):
    limit: int = 50
    #: Only conversations whose id starts with this kind (``cli``, ``telegram``, ...).
    kind: str | None = None


class ConversationSummary(Base):
    id: str
    title: str
    created_at: float
    updated_at: float
    turns: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None


class ConversationListResult(Base):
    conversations: list[ConversationSummary]


class ConversationIdParams(Base):
    id: str


class MessageView(Base):
    role: str
    content: str
    created_at: float
    turn: int
    #: ``complete``, ``running``, ``cancelled``, ``failed`` or ``interrupted``.
    status: str = "complete"
    tool_name: str | None = None


class ConversationShowResult(Base):
    conversation: ConversationSummary
    messages: list[MessageView]


class ConversationExportParams(Base):
    id: str
    format: Literal["markdown", "json"] = "markdown"


class ConversationExportResult(Base):
    content: str


class SetupParams(Base):
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None


class SetupResult(Base):
    provider: str
    model: str
    config_path: str


class TaskStatus(Base):
    name: str
    state: str
    restarts: int = 0
    last_error: str | None = None


class StatusResult(Base):
    pid: int
    version: str
    protocol: int
    uptime: float
    home: str
    endpoint: str
    provider: str | None
    model: str | None
    conversations: int
    rss_bytes: int
    llm_ready: bool
    active_turns: int = 0
    tasks: list[TaskStatus] = []


# --- Stream events (params of the ``stream`` notification) --------------------------------


class StreamEvent(Base, tag_field="type"):
    """Base of the events a running request streams; ``request`` names that request."""

    request: int | str


class TextDelta(StreamEvent, tag="text"):
    text: str


class ToolCallEvent(StreamEvent, tag="tool_call"):
    call_id: str
    tool: str
    arguments: str


class ToolResultEvent(StreamEvent, tag="tool_result"):
    call_id: str
    tool: str
    ok: bool
    preview: str


class UnknownEvent(msgspec.Struct):
    """An event type this build does not know (from a newer daemon): kept, not raised."""

    request: int | str | None
    type: str
    raw: dict[str, Any]


Event = TextDelta | ToolCallEvent | ToolResultEvent


# --- Framing -------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(DecodedMessage)
_event_decoder = msgspec.json.Decoder(Event)


def encode(message: Request | Response | Notification) -> bytes:
    """One frame: the JSON encoding of *message* and a trailing newline."""
    return _encoder.encode(message) + b"\n"


def decode_message(frame: bytes) -> DecodedMessage:
    """Decode one frame (without its newline). Raises ``msgspec.DecodeError`` on bad JSON or
    ``msgspec.ValidationError`` on a JSON value that is not a JSON-RPC message."""
    return _message_decoder.decode(frame)


def decode_event(raw: msgspec.Raw) -> Event | UnknownEvent:
    """Decode the params of a ``stream`` notification; unknown types degrade gracefully."""
    try:
        event: Event = _event_decoder.decode(raw)
    except msgspec.ValidationError:
        data = msgspec.json.decode(raw)
        if not isinstance(data, dict):
            raise
        return UnknownEvent(request=data.get("request"), type=str(data.get("type")), raw=data)
    return event


class FrameTooLarge(msgspec.Struct):
    """Yielded by :class:`FrameSplitter` in place of a frame that exceeded the limit."""

    size: int


class FrameSplitter:
    """Splits a byte stream into newline-terminated frames of at most ``max_bytes``.

    An oversized frame is skipped up to its newline and reported once as
    :class:`FrameTooLarge`, so the connection can answer with an error and carry on.
    Buffered bytes never exceed ``max_bytes``.
    """

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._discarding = 0  # bytes of an oversized frame skipped so far

    def feed(self, data: bytes) -> list[bytes | FrameTooLarge]:
        frames: list[bytes | FrameTooLarge] = []
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline == -1 else newline
            chunk = data[start:end]
            if self._discarding:
                self._discarding += len(chunk)
            elif len(self._buffer) + len(chunk) + 1 > self._max:
                self._discarding = len(self._buffer) + len(chunk)
                self._buffer.clear()
            else:
                self._buffer += chunk
            if newline == -1:
                break
            if self._discarding:
                frames.append(FrameTooLarge(size=self._discarding + 1))
                self._discarding = 0
            elif self._buffer.strip():
                frames.append(bytes(self._buffer))
            self._buffer.clear()
            start = newline + 1
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held or skipped (non-zero at EOF: a truncated frame)."""
        return len(self._buffer) + self._discarding


# --- Vault and config (vault issue) ------------------------------------------------------

# --- Tools, approvals and plugins (tools issue) ------------------------------------------

# --- Memory (memory issue) ---------------------------------------------------------------

# --- Doctor and service (service issue) --------------------------------------------------

# --- Gatekeeper and bots (telegram issue) ------------------------------------------------
