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
    "MEMORY_CATEGORIES",
    "PERMISSION_DECISIONS",
    "PROTOCOL_VERSION",
    "SECRET_NAME_PATTERN",
    "SUPPORTED_PROTOCOLS",
    "ApprovalRule",
    "ApprovalRuleAddParams",
    "ApprovalRuleIdParams",
    "ApprovalRuleListResult",
    "AskParams",
    "AskResult",
    "CancelParams",
    "CancelResult",
    "CheckStatus",
    "CommandListResult",
    "CommandRunParams",
    "CommandRunResult",
    "CommandView",
    "ConfigFileResult",
    "ConfigGetResult",
    "ConfigKeyParams",
    "ConfigSetParams",
    "ConfigSetResult",
    "ConfigShowResult",
    "ConfigWriteParams",
    "ConfigWriteResult",
    "ConversationExportParams",
    "ConversationExportResult",
    "ConversationIdParams",
    "ConversationListParams",
    "ConversationListResult",
    "ConversationSearchParams",
    "ConversationSearchResult",
    "ConversationShowResult",
    "ConversationSummary",
    "DecodedMessage",
    "DoctorCheck",
    "DoctorParams",
    "DoctorResult",
    "Empty",
    "ErrorCode",
    "ErrorObject",
    "Event",
    "FrameSplitter",
    "FrameTooLarge",
    "GateAction",
    "GateChallengeParams",
    "GateChatParams",
    "GateCheckParams",
    "GateConversationResult",
    "GateInfoResult",
    "GatePassphraseParams",
    "GatePlatformParams",
    "GatePressParams",
    "GatePressResult",
    "GatePromptClosedParams",
    "GatePromptParams",
    "GatePromptResult",
    "GatePromptSentParams",
    "GatePromptView",
    "GatePromptsParams",
    "GatePromptsResult",
    "GateResult",
    "GateSenderParams",
    "GateSetupParams",
    "GateSetupResult",
    "HelloParams",
    "HelloResult",
    "InboxAcceptParams",
    "InboxAcceptResult",
    "InboxAskResult",
    "InboxItem",
    "InboxItemParams",
    "InboxPendingParams",
    "InboxPendingResult",
    "InboxSentParams",
    "Interaction",
    "InteractionAnswerParams",
    "InteractionAnswerResult",
    "InteractionListResult",
    "InteractionResolved",
    "InteractionSubscribeParams",
    "InteractionSubscribeResult",
    "MemoryAppendParams",
    "MemoryEntry",
    "MemoryHit",
    "MemoryListParams",
    "MemoryListResult",
    "MemoryNameParams",
    "MemoryReindexParams",
    "MemoryReindexResult",
    "MemorySearchParams",
    "MemorySearchResult",
    "MemoryShowResult",
    "MemoryWriteParams",
    "MemoryWriteResult",
    "MessageHit",
    "MessageView",
    "Notification",
    "OkResult",
    "PluginInfoResult",
    "PluginInstallParams",
    "PluginListResult",
    "PluginNameParams",
    "PluginSecretView",
    "PluginSetupResult",
    "PluginToolView",
    "PluginView",
    "Request",
    "Response",
    "SetupCheckResult",
    "SetupModelsParams",
    "SetupModelsResult",
    "SetupParams",
    "SetupResult",
    "StatusResult",
    "StreamEvent",
    "TaskStatus",
    "TextDelta",
    "ToolCallEvent",
    "ToolListResult",
    "ToolResultEvent",
    "ToolView",
    "TurnUsage",
    "UnknownEvent",
    "VaultListResult",
    "VaultNameParams",
    "VaultPasswdParams",
    "VaultRotateParams",
    "VaultSetParams",
    "VaultStatusResult",
    "VaultUnlockParams",
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
    #: This connection answers approval requests raised by this turn (``interaction.request``
    #: notifications); set by frontends that can ask the person, e.g. on a terminal.
    approve: bool = False


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
# Secret values travel from frontends to the daemon only: no result below carries one, and
# every params struct holding one has a redacted ``repr`` so that it cannot reach a log.

_VAULT_PART = r"[a-z0-9][a-z0-9_.-]{0,63}"
#: A secret name: ``provider:<id>`` or ``plugin:<name>:<key>`` (the vault enforces the same
#: rule; the CLI checks it before prompting for a value).
SECRET_NAME_PATTERN = rf"provider:{_VAULT_PART}|plugin:{_VAULT_PART}:{_VAULT_PART}"


class VaultStatusResult(Base):
    """The vault's state; never names or values. ``damaged`` comes with ``problem``/``hint``."""

    initialized: bool
    #: ``identity`` (unlocks itself from a 0600 identity file) or ``passphrase``.
    mode: Literal["identity", "passphrase"] | None = None
    locked: bool = True
    #: Number of secrets; ``None`` while locked or damaged.
    count: int | None = None
    path: str = ""
    damaged: bool = False
    problem: str | None = None
    hint: str | None = None
    #: The daemon runs with core dumps and ptrace attachment disabled (``None``: not Linux).
    hardened: bool | None = None


class VaultUnlockParams(Base):
    passphrase: str

    def __repr__(self) -> str:
        return "VaultUnlockParams(passphrase=***)"


class VaultSetParams(Base):
    name: str
    value: str

    def __repr__(self) -> str:
        return f"VaultSetParams(name={self.name!r}, value=***)"


class VaultNameParams(Base):
    name: str


class VaultListResult(Base):
    names: list[str]


class VaultPasswdParams(Base):
    #: The current passphrase; ``None`` for a vault in identity mode.
    old: str | None = None
    #: The new passphrase; ``None`` goes back to identity mode (a plain 0600 identity file).
    new: str | None = None

    def __repr__(self) -> str:
        return "VaultPasswdParams(old=***, new=***)"


class VaultRotateParams(Base):
    #: The current passphrase (passphrase mode only); it also wraps the new identity.
    passphrase: str | None = None

    def __repr__(self) -> str:
        return "VaultRotateParams(passphrase=***)"


class SetupModelsParams(Base):
    provider: str
    base_url: str | None = None
    #: A key typed in the wizard and not stored yet; without it the stored key is used.
    api_key: str | None = None

    def __repr__(self) -> str:
        return f"SetupModelsParams(provider={self.provider!r}, base_url={self.base_url!r})"


class SetupModelsResult(Base):
    models: list[str]
    #: False when Pyra cannot list this provider's models (the wizard asks for a name).
    supported: bool = True
    #: The URL the list came from.
    source: str | None = None


class SetupCheckResult(Base):
    provider: str
    model: str
    seconds: float


class ConfigShowResult(Base):
    path: str
    #: The effective configuration (defaults included) as TOML.
    toml: str
    #: The same, as JSON values by section.
    values: dict[str, Any]


class ConfigKeyParams(Base):
    #: ``section.key`` (or just ``section``).
    key: str


class ConfigGetResult(Base):
    key: str
    value: Any


class ConfigSetParams(Base):
    key: str
    #: As typed: parsed as the key's type (a TOML value such as ``[1, 2]`` where needed).
    value: str


class ConfigSetResult(Base):
    key: str
    value: Any
    path: str
    #: The change takes effect only after ``pyra daemon restart`` (socket, transport).
    restart_needed: bool = False


class ConfigFileResult(Base):
    path: str
    #: The file's text as written by a person or by Pyra ("" when there is no file yet).
    text: str


class ConfigWriteParams(Base):
    text: str
    #: The text the edit started from; the write is refused if the file changed meanwhile.
    expected: str | None = None


class ConfigWriteResult(Base):
    path: str
    changed: bool
    restart_needed: bool = False


# --- Tools, approvals and plugins (tools issue) ------------------------------------------

# Approvals and tools (``interactions.*``, ``approvals.*``, ``tools.list``). The daemon sends
# ``interaction.request`` (params: :class:`Interaction`) to every subscribed approver it may
# ask, and ``interaction.resolved`` (params: :class:`InteractionResolved`) once it is decided.

#: The answers to a permission request: run once, run and remember a rule, refuse.
PERMISSION_DECISIONS = ("allow", "always", "deny")


class Interaction(Base):
    """A request waiting for the person (the ``interaction.request`` notification).

    ``arguments`` is the full JSON text the tool would run with: show all of it, with control
    and bidirectional characters made visible. ``flags`` name why it deserves a closer look
    (``tainted``, ``injection-suspected``, ``injection:<category>``, ...). Times are epoch
    seconds.
    """

    id: str
    #: ``permission``, ``question`` or ``choice``.
    kind: str
    prompt: str
    tool: str | None = None
    arguments: str = ""
    preview: str = ""
    options: list[str] = []
    conversation: str | None = None
    #: The connection that started the turn (``cli:conn-7``).
    origin: str | None = None
    created_at: float = 0.0
    expires_at: float = 0.0
    flags: list[str] = []


class InteractionResolved(Base):
    """How a request ended (the ``interaction.resolved`` notification)."""

    id: str
    #: ``allow``, ``always``, ``deny`` (or the answer to a question).
    decision: str
    #: The approver that answered, or ``system`` (expiry, no approver, cancelled turn).
    by: str
    reason: str = ""


class InteractionSubscribeParams(Base):
    #: ``all``: every request this connection may answer (a person's watcher, a bot with an
    #: approver chat). ``own``: only requests from conversations of this client's kind
    #: (``telegram:*`` for a bot with no approver chat), so the broker still fails fast for
    #: requests nobody here could show.
    scope: Literal["all", "own"] = "all"


class InteractionSubscribeResult(Base):
    #: The approver id answers from this connection are bound to.
    approver: str
    #: Requests already pending (each is also sent as ``interaction.request``).
    pending: int = 0


class InteractionListResult(Base):
    requests: list[Interaction]


class InteractionAnswerParams(Base):
    id: str
    #: ``allow``, ``always`` or ``deny`` (for a question: the answer).
    decision: str


class InteractionAnswerResult(Base):
    id: str
    decision: str
    by: str


class ApprovalRule(Base):
    """A remembered "allow always": ``tool`` with any arguments, or those matching ``pattern``."""

    id: int
    tool: str
    pattern: str | None = None
    created_at: float = 0.0


class ApprovalRuleListResult(Base):
    rules: list[ApprovalRule]


class ApprovalRuleIdParams(Base):
    id: int


class ApprovalRuleAddParams(Base):
    tool: str
    #: A glob over the call's arguments as canonical JSON (sorted keys, no spaces), e.g.
    #: ``{"command":"ls *"}``; omitted: any arguments. ``*`` also matches quotes and ``;``.
    pattern: str | None = None


class ToolView(Base):
    """A tool the model may call, as ``tools.list`` shows it."""

    name: str
    description: str = ""
    plugin: str = ""
    read_only: bool = False
    requires_approval: bool = True
    #: The configured policy (``ask``, ``allow``, ``deny``) or ``default``.
    policy: str = "default"
    timeout: float = 30.0


class ToolListResult(Base):
    tools: list[ToolView]


# Plugins and slash commands (``plugins.*``, ``commands.*``).


class PluginToolView(Base):
    """A tool as ``plugins.list`` and ``plugins.info`` show it."""

    name: str
    description: str = ""
    requires_approval: bool = True
    read_only: bool = False


class PluginView(Base):
    """One discovered plugin, whatever its state."""

    name: str
    #: ``entry-point`` (an installed distribution) or ``directory`` ($PYRA_HOME/plugins/<name>).
    source: str
    #: ``active``, ``disabled``, ``error`` or ``loading``.
    state: str
    enabled: bool
    version: str = ""
    description: str = ""
    #: The entry point (``module:attribute``) or the plugin's folder.
    location: str = ""
    #: One line: why the plugin is not running (its traceback is in the daemon's log).
    error: str | None = None
    tools: list[PluginToolView] = []
    commands: list[str] = []
    #: Names of its supervised background tasks (see ``status``).
    tasks: list[str] = []


class PluginListResult(Base):
    plugins: list[PluginView]


class PluginNameParams(Base):
    name: str


class PluginSecretView(Base):
    """A vault key a plugin declares; ``is_set`` is ``None`` while the vault is locked."""

    key: str
    #: The full vault name, ``plugin:<name>:<key>``.
    secret: str
    description: str = ""
    is_set: bool | None = None


class PluginInfoResult(Base):
    plugin: PluginView
    system_prompt: str = ""
    #: The plugin's settings: its defaults overlaid with ``[plugins.<name>]``.
    config: dict[str, Any] = {}
    secrets: list[PluginSecretView] = []
    #: The last import or setup failure's traceback (secrets redacted).
    traceback: str | None = None


class PluginInstallParams(Base):
    #: An absolute path to a folder holding ``manifest.json`` and the entry file.
    path: str
    #: Replace an installed directory plugin of the same name.
    replace: bool = False


class PluginSetupResult(Base):
    plugin: PluginView
    secrets: list[PluginSecretView] = []
    #: What the person should do next, one line each.
    messages: list[str] = []


class CommandView(Base):
    name: str
    description: str = ""
    plugin: str = ""


class CommandListResult(Base):
    commands: list[CommandView]


class CommandRunParams(Base):
    #: Without the leading ``/``.
    name: str
    args: str = ""
    conversation: str | None = None


class CommandRunResult(Base):
    ok: bool
    text: str


# --- Memory (memory issue) ---------------------------------------------------------------

#: The memory categories, in the order lists and the prompt index show them.
MEMORY_CATEGORIES = ("user", "context", "knowledge")


class MemoryNameParams(Base):
    #: ``category/slug``, e.g. ``user/preferences`` (a trailing ``.md`` is accepted).
    name: str


class MemoryListParams(Base):
    #: Only this category (``user``, ``context`` or ``knowledge``).
    category: str | None = None
    #: At most this many entries (up to 2000), user notes first, then by name.
    limit: int = 500


class MemoryEntry(Base):
    name: str
    category: str
    title: str
    size: int
    #: The file's modification time (seconds since the epoch).
    updated_at: float


class MemoryListResult(Base):
    entries: list[MemoryEntry]
    #: How many entries there are in all (more than listed when the limit cut the list).
    total: int = 0


class MemoryShowResult(Base):
    name: str
    title: str
    text: str
    #: SHA-256 of the file's bytes; pass it back as ``if_hash`` to write only if unchanged.
    hash: str
    updated_at: float


class MemorySearchParams(Base):
    #: Plain words: FTS5 syntax (quotes, ``NEAR``, ``*``, ``col:``, ``AND``/``OR``) is taken
    #: literally. All words must match; when nothing does, any word may.
    query: str
    limit: int = 10
    category: str | None = None


class MemoryHit(Base):
    name: str
    title: str
    #: Matching text with the matched words in ``**``; ``…`` marks cuts.
    snippet: str
    #: Relevance (bm25, sign flipped): higher is better; comparable within one search only.
    score: float


class MemorySearchResult(Base):
    hits: list[MemoryHit]


class MemoryWriteParams(Base):
    name: str
    text: str
    #: Write only if the file's current hash is this one (``""``: only if it does not exist).
    if_hash: str | None = None


class MemoryAppendParams(Base):
    name: str
    text: str


class MemoryWriteResult(Base):
    name: str
    hash: str
    size: int
    created: bool = False


class MemoryReindexParams(Base):
    #: Re-read and re-hash every file, not only those whose size or mtime changed.
    full: bool = False


class MemoryReindexResult(Base):
    added: int
    updated: int
    removed: int
    unchanged: int
    #: Files skipped: symlinks, hard links, bad names, unreadable (see the daemon log).
    skipped: int
    #: The index failed its integrity check and was rebuilt from the files.
    rebuilt: bool
    seconds: float


class ConversationSearchParams(Base):
    #: Plain words, all of which must appear in a message (FTS5 syntax is taken literally).
    text: str
    limit: int = 20


class MessageHit(Base):
    conversation: str
    turn: int
    role: str
    snippet: str
    created_at: float


class ConversationSearchResult(Base):
    hits: list[MessageHit]


# --- Doctor and service (service issue) --------------------------------------------------

#: ``ok``: healthy; ``warn``: works, but look; ``fail``: broken (``pyra doctor`` exits 1);
#: ``skipped``: could not or need not be checked (the detail says why).
CheckStatus = Literal["ok", "warn", "fail", "skipped"]


class DoctorParams(Base):
    #: Probe the provider with a 1-token completion (costs a request; off: ``skipped``).
    provider: bool = True
    #: Seconds the provider may take to answer (loading litellm is not counted).
    timeout: float = 10.0


class DoctorCheck(Base):
    """One finding of ``pyra doctor``, from the daemon or from the client."""

    name: str
    status: CheckStatus
    detail: str = ""
    #: What to do about it, when there is something to do.
    hint: str = ""
    #: ``pyra doctor --fix`` repaired something; ``status`` and ``detail`` describe the result.
    fixed: bool = False


class DoctorResult(Base):
    checks: list[DoctorCheck]


# --- Gatekeeper and bots (telegram issue) ------------------------------------------------
# Every bot (Telegram now; Matrix and Signal later) is an IPC frontend: the daemon's gatekeeper
# decides who may talk (``gate.*``) and its inbox makes each incoming platform message durable
# before the bot confirms it to the platform, so nothing is lost or answered twice (``inbox.*``).
# Platform ids (users, chats) travel as strings; Telegram's numeric ids in decimal.

#: What the gatekeeper decided about one incoming message.
GateAction = Literal["allow", "challenge", "verified", "refuse", "silent", "rate_limited", "locked"]


class GateCheckParams(Base):
    """``gate.check``: may ``sender`` say ``text`` in ``chat``? Ask before acting on a message.

    With ``update_id`` (an inbox item) the check is idempotent: a message already allowed is
    allowed again without counting twice (a resumed message after a restart).
    """

    platform: str
    sender: str
    chat: str
    text: str = ""
    #: ``private``, ``group``, ``supergroup`` or ``channel``.
    chat_type: str = "private"
    update_id: int | None = None

    def __repr__(self) -> str:
        # The text may be a passphrase attempt.
        return f"GateCheckParams(platform={self.platform!r}, sender={self.sender!r}, text=***)"


class GateResult(Base):
    """The gatekeeper's answer; the bot sends ``reply`` (when not empty) and nothing else.

    ``allow`` names the ``conversation`` to continue. ``challenge`` holds the message until the
    passphrase is given; ``verified`` says the passphrase was right (then ``resume`` the held
    messages). ``delete`` asks the bot to delete the person's message (it held a passphrase).
    """

    action: GateAction
    reply: str = ""
    delete: bool = False
    conversation: str | None = None
    #: Findings of the injection scanner (``injection-suspected``, ``injection:<category>``).
    flags: list[str] = []
    resume: bool = False


class GateChallengeParams(Base):
    """``gate.answer_challenge``: a passphrase attempt typed by ``sender``."""

    platform: str
    sender: str
    chat: str
    attempt: str

    def __repr__(self) -> str:
        return f"GateChallengeParams(platform={self.platform!r}, sender={self.sender!r}, ***)"


class GatePlatformParams(Base):
    platform: str


class GateInfoResult(Base):
    """``gate.info``: what a bot needs to know of its platform's gatekeeper settings."""

    platform: str
    allowed: list[str] = []
    approver_chat: str | None = None
    private_only: bool = True
    challenge: bool = True
    passphrase_set: bool = False


class GateSetupParams(Base):
    """``gate.setup``: change who may talk to a bot (``None`` leaves a value as it is)."""

    platform: str
    allow: list[str] | None = None
    approver_chat: str | None = None
    #: Remove the approver chat.
    clear_approver_chat: bool = False
    #: The Bot API server (Telegram), for self-hosted Bot API servers.
    api_base_url: str | None = None


class GateSetupResult(Base):
    config_path: str
    info: GateInfoResult


class GatePassphraseParams(Base):
    """``gate.set_passphrase``: the shared passphrase; the daemon keeps only its bcrypt hash."""

    passphrase: str

    def __repr__(self) -> str:
        return "GatePassphraseParams(passphrase=***)"


class GateSenderParams(Base):
    """``gate.unlock``: lift a lockout (and ask for the passphrase again)."""

    platform: str
    sender: str


class GateChatParams(Base):
    platform: str
    chat: str


class GateConversationResult(Base):
    conversation: str


class GatePromptParams(Base):
    """``gate.prompt``: bind an approval request shown in ``chat`` to fresh button tokens.

    Presses are then accepted only in ``chat``, only from ``sender`` (any allowed sender when
    ``None``, e.g. a group), once, and before ``expires_at`` (epoch seconds).
    """

    platform: str
    request_id: str
    chat: str
    sender: str | None = None
    expires_at: float = 0.0
    options: list[str] = []


class GatePromptResult(Base):
    """The opaque callback data for each option (``option -> token``, at most 64 bytes).

    ``message_id`` is set when this request was already shown in this chat (do not send it
    again); ``state`` is ``open``, ``pressed``, ``closed`` or ``orphaned``.
    """

    buttons: dict[str, str]
    message_id: int | None = None
    state: str = "open"


class GatePromptSentParams(Base):
    platform: str
    request_id: str
    chat: str
    message_id: int


class GatePressParams(Base):
    """``gate.press``: a button press; raises ``ApprovalRefused`` (``reason``) when refused."""

    platform: str
    token: str
    chat: str
    sender: str


class GatePressResult(Base):
    request_id: str
    decision: str


class GatePromptsParams(Base):
    """``gate.prompts``: prompts of one request, or all in one state (``orphaned``)."""

    platform: str
    request_id: str | None = None
    state: str | None = None


class GatePromptView(Base):
    request_id: str
    chat: str
    message_id: int | None
    state: str
    decision: str | None = None
    pressed_by: str | None = None


class GatePromptsResult(Base):
    prompts: list[GatePromptView]


class GatePromptClosedParams(Base):
    platform: str
    request_id: str
    chat: str


class InboxAcceptParams(Base):
    """``inbox.accept``: record a platform update durably; call before confirming it."""

    platform: str
    update_id: int
    #: ``message`` or ``callback`` (a button press: recorded for de-duplication only).
    kind: str
    chat: str
    sender: str
    message_id: int | None = None
    text: str = ""
    chat_type: str = "private"
    #: When the person sent it (epoch seconds, the platform's clock).
    date: float = 0.0

    def __repr__(self) -> str:
        return f"InboxAcceptParams(platform={self.platform!r}, update_id={self.update_id})"


class InboxAcceptResult(Base):
    #: ``new``, or ``duplicate`` for an update already recorded (drop it).
    status: str
    #: The text was not stored: it is probably a passphrase (an outstanding challenge).
    secret: bool = False


class InboxItem(Base):
    """A recorded message that is not done yet, with the replies already sent for it."""

    update_id: int
    chat: str
    sender: str
    message_id: int | None = None
    #: ``None`` when the text was not stored (a passphrase attempt).
    text: str | None = None
    chat_type: str = "private"
    date: float = 0.0
    #: ``new``, ``held`` (waiting for the passphrase), ``answering`` or ``answered``.
    state: str = "new"
    conversation: str | None = None
    #: Message ids of the reply parts already sent, in order.
    parts: list[int] = []


class InboxPendingParams(Base):
    platform: str
    #: Only this chat's items.
    chat: str | None = None
    #: Held items (waiting for the passphrase) instead of the unanswered ones.
    held: bool = False


class InboxPendingResult(Base):
    items: list[InboxItem]


class InboxItemParams(Base):
    platform: str
    update_id: int


class InboxAskResult(Base):
    """``inbox.ask``: the answer to an allowed inbox item (run once; a retry replays it)."""

    conversation: str
    text: str
    #: True when the answer was already computed before (no new model call was made).
    replayed: bool = False
    parts: list[int] = []


class InboxSentParams(Base):
    """``inbox.sent``: reply part ``part`` of an item went out as ``message_id``."""

    platform: str
    update_id: int
    part: int
    message_id: int
