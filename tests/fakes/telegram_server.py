"""A fake Telegram Bot API server on loopback, for driving the real python-telegram-bot.

`FakeBotAPI` serves `http://127.0.0.1:PORT/bot<token>/<method>` from a `ThreadingHTTPServer` in
a background thread, so a held long poll and the bot's other calls are served at the same time.
Tests script it from any thread (`send_text`, `press_button`, `inject_error`,
`stall_get_updates`) and assert on what the bot did (`calls`, `sent_messages`, `documents`,
`get_updates_offsets`, the async `wait_for*` helpers).

What it fakes, following the real Bot API where a bot could tell the difference:

- Requests as `application/x-www-form-urlencoded`, `multipart/form-data` (uploads) or JSON, plus
  query-string parameters. Every parameter is recorded as a string, as on the wire; structured
  ones (`reply_markup`, `allowed_updates`) arrive JSON-encoded. Method names are
  case-insensitive. A wrong token is 401 "Unauthorized", an unknown method 404 "Not Found".
- `getUpdates` with confirmation semantics: updates stay pending until a later call passes an
  `offset` above their id, so an update handed to a client that died is delivered again. The
  call is held open up to `timeout` seconds, `timeout=0` answers at once, a newer `getUpdates`
  ends an older held one with 409 Conflict, and a client that hangs up is noticed and dropped.
- A per-chat message store: `message_id` counts up per chat (shared by the user's and the
  bot's messages, as in private chats), edits and deletions are applied, inline keyboards are
  echoed, and the real API's refusals that a bot must handle are reproduced: chat not found
  (the user never wrote to the bot), empty or over-long text, `callback_data` over 64 bytes,
  "message is not modified", editing or deleting a message that does not exist, and answering
  an unknown callback query.

What it deliberately does not fake: webhooks (`setWebhook` is 404; `deleteWebhook` only honours
`drop_pending_updates`), groups beyond the chat `type` and `title` fields (no members, admins or
permissions), negative `offset` values, parsing of `parse_mode` markup (text is stored verbatim,
no entities are produced), `reply_parameters`, downloading files (`getFile` and the file URL are
404; uploads are recorded but given no retrievable id), sending files by id or URL, scopes and
languages of bot commands (`getMyCommands` returns the last list set), inline mode, payments,
and rate limiting of its own (inject it with `inject_error`).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TypeVar

import anyio

__all__ = ["Call", "Document", "FakeBotAPI", "Upload"]

log = logging.getLogger(__name__)

JSON = dict[str, Any]
T = TypeVar("T")

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
# How often a held request re-checks for a vanished client or a stopping server.
_HOLD_SLICE = 0.05
_CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
_UPDATE_TYPES = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "callback_query",
    "inline_query",
    "chosen_inline_result",
    "my_chat_member",
    "chat_member",
)


class Call(NamedTuple):
    """One authorised Bot API request, as received: method name and string parameters."""

    method: str
    params: dict[str, str]


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    field: str
    filename: str
    content: bytes
    mime_type: str


@dataclass(frozen=True)
class Document:
    """A document the bot sent with `sendDocument`."""

    chat_id: int
    message_id: int
    filename: str
    content: bytes
    mime_type: str
    caption: str | None


class _ApiError(Exception):
    """Raised inside a method to answer `{"ok": false, ...}` with this status."""

    def __init__(self, status: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _bad_request(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


@dataclass
class _Reply:
    status: int
    body: JSON


@dataclass
class _InjectedError:
    status: int
    description: str
    retry_after: int | None
    times: int


def _ok(result: Any) -> _Reply:
    return _Reply(200, {"ok": True, "result": result})


def _error_reply(error: _ApiError) -> _Reply:
    body: JSON = {"ok": False, "error_code": error.status, "description": error.description}
    if error.parameters:
        body["parameters"] = error.parameters
    return _Reply(error.status, body)


def _utf16_len(text: str) -> int:
    # Telegram measures text in UTF-16 code units, like its entity offsets.
    return len(text.encode("utf-16-le")) // 2


def _parse_body(content_type: str, body: bytes) -> tuple[dict[str, str], list[Upload]]:
    mime, _, _ = content_type.partition(";")
    mime = mime.strip().lower()
    if not body:
        return {}, []
    if mime == "application/json":
        decoded = json.loads(body)
        if not isinstance(decoded, dict):
            raise _bad_request("JSON body must be an object")
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in decoded.items()}
        return params, []
    if mime == "multipart/form-data":
        return _parse_multipart(content_type, body)
    pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    return dict(pairs), []


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[Upload]]:
    header = HeaderParser().parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise _bad_request("multipart body without boundary")
    params: dict[str, str] = {}
    uploads: list[Upload] = []
    delimiter = b"\r\n--" + boundary.encode()
    # Prefixing CRLF lets the first delimiter match like the others; bytes are split exactly,
    # so binary uploads survive untouched.
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise _bad_request("malformed multipart part")
        part = HeaderParser().parsestr(head.decode("utf-8", "surrogateescape") + "\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _bad_request("multipart part without a name")
        filename = part.get_filename()
        if filename is None:
            params[name] = content.decode()
        else:
            mime_type = part.get_content_type() if part["content-type"] else ""
            uploads.append(Upload(name, filename, content, mime_type or "application/octet-stream"))
    return params, uploads


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client hung up (a request is fully read, so readable means EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: FakeBotAPI) -> None:
        self.api = api
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # One request per connection keeps shutdown simple: no idle keep-alive threads linger.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("fake Bot API: " + format, *args)  # noqa: G003 (format comes from http.server)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sock = self.connection
        try:
            reply = self.server.api._serve(
                self.path, self.headers.get("Content-Type", ""), body, lambda: _peer_closed(sock)
            )
        except Exception as exc:
            log.exception("fake Bot API failed on %s", self.path)
            reply = _error_reply(_ApiError(500, f"Internal Server Error: {exc!r}"))
        if reply is None:
            self.close_connection = True
            return
        data = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            log.debug("fake Bot API: client went away before the reply to %s", self.path)


class FakeBotAPI:
    """A scriptable, recording Bot API server for one bot token.

    Use as a context manager or call `start()`/`stop()`. All public methods are thread-safe;
    the `wait_for*` helpers are async so the bot under test keeps running while a test waits.
    Returned dicts are copies in the Bot API's JSON shape.
    """

    def __init__(
        self,
        token: str = "123456789:AAFakeTokenForPyraTests",
        *,
        bot_id: int | None = None,
        username: str = "pyra_test_bot",
        first_name: str = "Pyra",
        first_update_id: int = 100_000_001,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        head = token.partition(":")[0]
        self.bot_id = bot_id if bot_id is not None else int(head) if head.isdigit() else 123456789
        self.username = username
        self.first_name = first_name
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Guarded by _cond.
        self._calls: list[Call] = []
        self._pending: list[JSON] = []
        self._next_update_id = first_update_id
        self._offsets: list[int] = []
        self._delivered: list[int] = []
        self._allowed_updates: frozenset[str] | None = None
        self._poll_generation = 0
        self._stall_until = 0.0
        self._errors: dict[str, list[_InjectedError]] = {}
        self._chats: dict[int, JSON] = {}
        self._users: dict[int, JSON] = {}
        self._next_message_id: dict[int, int] = {}
        self._messages: dict[tuple[int, int], JSON] = {}
        self._documents: list[Document] = []
        self._uploads: list[Upload] = []
        self._callback_ids: set[str] = set()
        self._callback_counter = itertools.count(4_000_000_000_000_001)
        self._commands: list[JSON] = []
        self._methods: dict[str, Callable[[dict[str, str], list[Upload]], Any]] = {
            "getMe": self._get_me,
            "deleteWebhook": self._delete_webhook,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "sendChatAction": self._send_chat_action,
            "answerCallbackQuery": self._answer_callback_query,
            "sendDocument": self._send_document,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
        }
        # Bot API method names are case-insensitive; calls are recorded under these spellings.
        self._canonical = {name.lower(): name for name in [*self._methods, "getUpdates"]}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeBotAPI:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeBotAPI already started")
        self._stopping = False
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"FakeBotAPI:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held long polls are dropped without an answer. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeBotAPI not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For `ApplicationBuilder().base_url(...)`: PTB appends `{token}/{method}`."""
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        """For `ApplicationBuilder().base_file_url(...)`; downloads are not served (404)."""
        return f"{self.url}/file/bot"

    # -- scripting -----------------------------------------------------------------------------

    def send_text(
        self,
        user_id: int,
        text: str,
        *,
        chat_id: int | None = None,
        username: str | None = None,
        first_name: str | None = None,
        chat_type: str = "private",
        date: int | None = None,
    ) -> JSON:
        """Queue an update: user `user_id` writes `text`. Returns the update.

        A leading "/word" (up to the first space) gets its `bot_command` entity, which PTB's
        `CommandHandler` needs. Non-private chats need an explicit (usually negative) `chat_id`.
        """
        if chat_id is None:
            if chat_type != "private":
                raise ValueError(f"a {chat_type} chat needs an explicit chat_id")
            chat_id = user_id
        with self._cond:
            user = self._user(user_id, username, first_name)
            chat = self._register_chat(chat_id, chat_type, user)
            message: JSON = {
                "message_id": self._take_message_id(chat_id),
                "from": user,
                "chat": chat,
                "date": date if date is not None else int(self._clock()),
                "text": text,
            }
            if text.startswith("/"):
                command = text.split(maxsplit=1)[0]
                message["entities"] = [
                    {"type": "bot_command", "offset": 0, "length": _utf16_len(command)}
                ]
            self._messages[(chat_id, message["message_id"])] = message
            return self._push({"message": copy.deepcopy(message)})

    def press_button(
        self,
        user_id: int,
        message: JSON | int,
        data: str,
        *,
        chat_id: int | None = None,
        username: str | None = None,
        first_name: str | None = None,
        strict: bool = True,
    ) -> JSON:
        """Queue an update: user `user_id` presses the inline button with `data` on `message`.

        `message` is a Message dict (as sent or from `sent_messages`) or a message id with
        `chat_id`. The update carries the message as it is now, after edits. With `strict`,
        pressing a button the message does not currently show raises `ValueError`.
        """
        with self._cond:
            if isinstance(message, int):
                if chat_id is None:
                    raise ValueError("press_button by message id needs chat_id")
                key = (chat_id, message)
            else:
                key = (
                    chat_id if chat_id is not None else message["chat"]["id"],
                    message["message_id"],
                )
            current = self._messages.get(key)
            if current is None:
                raise ValueError(f"no message {key[1]} in chat {key[0]} (deleted or never sent)")
            if strict and data not in _callback_datas(current.get("reply_markup")):
                raise ValueError(f"message {key[1]} shows no button with callback_data {data!r}")
            query_id = str(next(self._callback_counter))
            self._callback_ids.add(query_id)
            update = {
                "callback_query": {
                    "id": query_id,
                    "from": self._user(user_id, username, first_name),
                    "chat_instance": str(-(abs(key[0]) * 7919 + 13)),
                    "data": data,
                    "message": copy.deepcopy(current),
                }
            }
            return self._push(update)

    def push_update(self, update: JSON) -> JSON:
        """Queue a hand-made update (its `update_id` is assigned here). Returns it."""
        with self._cond:
            return self._push(copy.deepcopy(update))

    def inject_error(
        self,
        method: str,
        status: int,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` fail with `status` (recorded, not executed).

        `retry_after` adds `parameters: {"retry_after": N}` as Telegram does on 429, which PTB
        turns into `telegram.error.RetryAfter`.
        """
        if description is None:
            if status == 429:
                description = f"Too Many Requests: retry after {retry_after or 1}"
            else:
                description = HTTPStatus(status).phrase
        with self._cond:
            self._errors.setdefault(method.lower(), []).append(
                _InjectedError(status, description, retry_after, times)
            )

    def stall_get_updates(self, seconds: float) -> None:
        """For the next `seconds`, `getUpdates` calls hang (then answer normally), as a stuck
        network would; `timeout=0` included. Use it to exercise the bot's read timeouts."""
        with self._cond:
            self._stall_until = time.monotonic() + seconds

    # -- recording -----------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every authorised request in arrival order, including ones answered with an error."""
        with self._cond:
            return [Call(c.method, dict(c.params)) for c in self._calls]

    def calls_to(self, method: str) -> list[dict[str, str]]:
        """The parameters of every call to `method`, in order."""
        return [c.params for c in self.calls if c.method.lower() == method.lower()]

    @property
    def get_updates_offsets(self) -> list[int]:
        """The `offset` of every `getUpdates` that had one, in order: what the bot confirmed."""
        with self._cond:
            return list(self._offsets)

    @property
    def delivered_update_ids(self) -> list[int]:
        """Update ids in every `getUpdates` answer, in order; repeats mean redelivery.

        Best effort: an answer to a client that hung up at that very moment is counted too.
        """
        with self._cond:
            return list(self._delivered)

    @property
    def pending_updates(self) -> list[JSON]:
        """Updates queued and not yet confirmed by an `offset`."""
        with self._cond:
            return copy.deepcopy(self._pending)

    @property
    def documents(self) -> list[Document]:
        with self._cond:
            return list(self._documents)

    @property
    def uploads(self) -> list[Upload]:
        """Every file part received by any method, including failed calls."""
        with self._cond:
            return list(self._uploads)

    def sent_messages(self, chat_id: int | None = None) -> list[JSON]:
        """The bot's messages that still exist, as they are now (edits applied), oldest first."""
        with self._cond:
            return [
                copy.deepcopy(m)
                for (chat, _), m in self._messages.items()
                if m["from"]["id"] == self.bot_id and (chat_id is None or chat == chat_id)
            ]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        """The current state of any message (the user's or the bot's), or None if deleted."""
        with self._cond:
            found = self._messages.get((chat_id, message_id))
            return copy.deepcopy(found) if found is not None else None

    # The waits take a plain `timeout` (ASYNC109) so that every wait is bounded by default and
    # its failure names what was missing, which a bare `anyio.fail_after` around it cannot do.

    async def wait_for(
        self,
        predicate: Callable[[list[Call]], T | None],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> T:
        """Wait until `predicate(calls)` is truthy and return that value."""

        def probe() -> T | None:
            return predicate(self.calls) or None

        def describe() -> str:
            return "last calls: " + ", ".join(c.method for c in self.calls[-10:])

        return await _poll(probe, timeout, describe)

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[dict[str, str]], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, str]:
        """Wait for the first call to `method` whose params satisfy `predicate`; return them."""

        def find(calls: list[Call]) -> dict[str, str] | None:
            return next(
                (
                    c.params
                    for c in calls
                    if c.method.lower() == method.lower()
                    and (predicate is None or predicate(c.params))
                ),
                None,
            )

        return await self.wait_for(find, timeout)

    async def wait_for_message(
        self,
        chat_id: int,
        predicate: Callable[[JSON], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> JSON:
        """Wait until a current bot message in `chat_id` satisfies `predicate`; return it."""

        def probe() -> JSON | None:
            return next(
                (m for m in self.sent_messages(chat_id) if predicate is None or predicate(m)),
                None,
            )

        def describe() -> str:
            texts = [m.get("text", m.get("caption")) for m in self.sent_messages(chat_id)]
            return f"bot messages in chat {chat_id}: {texts!r}"

        return await _poll(probe, timeout, describe)

    # -- serving (handler threads) -------------------------------------------------------------

    def _serve(
        self, path: str, content_type: str, body: bytes, peer_closed: Callable[[], bool]
    ) -> _Reply | None:
        parsed = urllib.parse.urlsplit(path)
        if not parsed.path.startswith("/bot"):
            return _error_reply(_ApiError(404, "Not Found"))
        token, _, method = parsed.path.removeprefix("/bot").partition("/")
        if token != self.token:
            return _error_reply(_ApiError(401, "Unauthorized"))
        try:
            params, uploads = _parse_body(content_type, body)
        except _ApiError as exc:
            return _error_reply(exc)
        except ValueError as exc:
            return _error_reply(_bad_request(f"can't parse request body: {exc}"))
        params = {**dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)), **params}
        name = self._canonical.get(method.lower())
        if name is None:
            return _error_reply(_ApiError(404, "Not Found"))
        with self._cond:
            self._calls.append(Call(name, params))
            self._uploads.extend(uploads)
            injected = self._take_injected_error(name.lower())
        if injected is not None:
            return _error_reply(injected)
        try:
            if name == "getUpdates":
                return self._get_updates(params, peer_closed)
            with self._cond:
                return _ok(self._methods[name](params, uploads))
        except _ApiError as exc:
            return _error_reply(exc)
        except ValueError as exc:  # a malformed number or JSON value in the parameters
            return _error_reply(_bad_request(str(exc)))

    def _take_injected_error(self, key: str) -> _ApiError | None:
        queue = self._errors.get(key)
        if not queue:
            return None
        spec = queue[0]
        spec.times -= 1
        if spec.times <= 0:
            queue.pop(0)
        parameters = {"retry_after": spec.retry_after} if spec.retry_after is not None else None
        return _ApiError(spec.status, spec.description, parameters)

    def _get_updates(
        self, params: dict[str, str], peer_closed: Callable[[], bool]
    ) -> _Reply | None:
        offset = _opt_int(params, "offset")
        timeout = max(0.0, float(params.get("timeout") or 0))
        limit = min(100, max(1, _opt_int(params, "limit") or 100))
        with self._cond:
            self._poll_generation += 1
            generation = self._poll_generation
            self._cond.notify_all()  # an older held poll now ends with 409
            if offset is not None:
                self._offsets.append(offset)
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
            if "allowed_updates" in params:
                allowed = json.loads(params["allowed_updates"] or "[]")
                self._allowed_updates = frozenset(allowed) if allowed else None
            if self._allowed_updates is not None:
                self._pending = [
                    u for u in self._pending if _update_type(u) in self._allowed_updates
                ]
            # The long-poll deadline starts once a stall (if any) is over.
            if not self._hold(lambda: time.monotonic() >= self._stall_until, None, peer_closed):
                return None
            deadline = time.monotonic() + timeout
            if not self._hold(
                lambda: bool(self._pending) or generation != self._poll_generation,
                deadline,
                peer_closed,
            ):
                return None
            if generation != self._poll_generation:
                return _error_reply(_ApiError(409, _CONFLICT))
            batch = copy.deepcopy(self._pending[:limit])
            self._delivered.extend(u["update_id"] for u in batch)
            return _ok(batch)

    def _hold(
        self, ready: Callable[[], bool], deadline: float | None, peer_closed: Callable[[], bool]
    ) -> bool:
        """Wait (holding `_cond`) until `ready()` or `deadline`. False if the request is moot."""
        while not ready():
            if self._stopping or peer_closed():
                return False
            now = time.monotonic()
            limit = deadline if deadline is not None else self._stall_until
            if now >= limit:
                break
            self._cond.wait(min(_HOLD_SLICE, limit - now))
        return not self._stopping

    # -- Bot API methods (called with _cond held) ----------------------------------------------

    def _get_me(self, params: dict[str, str], uploads: list[Upload]) -> JSON:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _delete_webhook(self, params: dict[str, str], uploads: list[Upload]) -> bool:
        if _flag(params, "drop_pending_updates"):
            self._pending.clear()
        return True

    def _send_message(self, params: dict[str, str], uploads: list[Upload]) -> JSON:
        chat = self._chat_param(params)
        text = params.get("text", "")
        _check_text(text)
        markup = _markup_param(params)
        return self._store_bot_message(chat, {"text": text}, markup)

    def _send_document(self, params: dict[str, str], uploads: list[Upload]) -> JSON:
        chat = self._chat_param(params)
        upload = next((u for u in uploads if u.field == "document"), None)
        if upload is None:
            if params.get("document"):
                raise _bad_request("the fake accepts uploaded documents only, not ids or URLs")
            raise _bad_request("there is no document in the request")
        caption = params.get("caption")
        if caption is not None and _utf16_len(caption) > MAX_CAPTION:
            raise _bad_request("message caption is too long")
        file_unique_id = f"fake-doc-{len(self._documents) + 1}"
        fields: JSON = {
            "document": {
                "file_id": f"{file_unique_id}-id",
                "file_unique_id": file_unique_id,
                "file_name": upload.filename,
                "mime_type": upload.mime_type,
                "file_size": len(upload.content),
            }
        }
        if caption is not None:
            fields["caption"] = caption
        message = self._store_bot_message(chat, fields, _markup_param(params))
        self._documents.append(
            Document(
                chat["id"],
                message["message_id"],
                upload.filename,
                upload.content,
                upload.mime_type,
                caption,
            )
        )
        return message

    def _edit_message_text(self, params: dict[str, str], uploads: list[Upload]) -> JSON:
        message = self._editable(params)
        text = params.get("text", "")
        _check_text(text)
        # Like Telegram: an edit without reply_markup removes the inline keyboard.
        markup = _markup_param(params)
        if "text" not in message:
            raise _bad_request("there is no text in the message to edit")
        if text == message["text"] and markup == message.get("reply_markup"):
            raise _not_modified()
        message["text"] = text
        _set_markup(message, markup)
        message["edit_date"] = int(self._clock())
        return copy.deepcopy(message)

    def _edit_message_reply_markup(self, params: dict[str, str], uploads: list[Upload]) -> JSON:
        message = self._editable(params)
        markup = _markup_param(params)
        if markup == message.get("reply_markup"):
            raise _not_modified()
        _set_markup(message, markup)
        message["edit_date"] = int(self._clock())
        return copy.deepcopy(message)

    def _delete_message(self, params: dict[str, str], uploads: list[Upload]) -> bool:
        chat = self._chat_param(params)
        message_id = _opt_int(params, "message_id")
        if message_id is None or self._messages.pop((chat["id"], message_id), None) is None:
            raise _bad_request("message to delete not found")
        return True

    def _send_chat_action(self, params: dict[str, str], uploads: list[Upload]) -> bool:
        self._chat_param(params)
        if not params.get("action"):
            raise _bad_request("action is empty")
        return True

    def _answer_callback_query(self, params: dict[str, str], uploads: list[Upload]) -> bool:
        query_id = params.get("callback_query_id", "")
        if query_id not in self._callback_ids:
            raise _bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        self._callback_ids.discard(query_id)
        return True

    def _set_my_commands(self, params: dict[str, str], uploads: list[Upload]) -> bool:
        commands = json.loads(params.get("commands") or "[]")
        if not isinstance(commands, list):
            raise _bad_request("can't parse commands JSON object")
        self._commands = commands
        return True

    def _get_my_commands(self, params: dict[str, str], uploads: list[Upload]) -> list[JSON]:
        return copy.deepcopy(self._commands)

    # -- helpers (called with _cond held) ------------------------------------------------------

    def _push(self, update: JSON) -> JSON:
        update = {"update_id": self._next_update_id, **update}
        self._next_update_id += 1
        self._pending.append(update)
        self._cond.notify_all()
        return copy.deepcopy(update)

    def _bot_user(self) -> JSON:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def _user(self, user_id: int, username: str | None, first_name: str | None) -> JSON:
        # A user keeps the names last given for them, as a real profile would.
        user = self._users.setdefault(
            user_id, {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
        )
        if first_name is not None:
            user["first_name"] = first_name
        if username is not None:
            user["username"] = username
        return copy.deepcopy(user)

    def _register_chat(self, chat_id: int, chat_type: str, user: JSON) -> JSON:
        chat: JSON = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = user["first_name"]
            if "username" in user:
                chat["username"] = user["username"]
        else:
            chat["title"] = f"Chat {chat_id}"
        self._chats[chat_id] = chat
        return copy.deepcopy(chat)

    def _take_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _chat_param(self, params: dict[str, str]) -> JSON:
        raw = params.get("chat_id", "")
        if not raw:
            raise _bad_request("chat_id is empty")
        try:
            chat = self._chats[int(raw)]
        except (ValueError, KeyError):
            # Telegram says the same when the user has never written to the bot.
            raise _bad_request("chat not found") from None
        return chat

    def _store_bot_message(self, chat: JSON, fields: JSON, markup: JSON | None) -> JSON:
        message: JSON = {
            "message_id": self._take_message_id(chat["id"]),
            "from": self._bot_user(),
            "chat": copy.deepcopy(chat),
            "date": int(self._clock()),
            **fields,
        }
        _set_markup(message, markup)
        self._messages[(chat["id"], message["message_id"])] = message
        return copy.deepcopy(message)

    def _editable(self, params: dict[str, str]) -> JSON:
        if "inline_message_id" in params:
            raise _bad_request("inline messages are not supported by the fake")
        chat = self._chat_param(params)
        message_id = _opt_int(params, "message_id")
        message = self._messages.get((chat["id"], message_id or 0))
        if message is None:
            raise _bad_request("message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise _bad_request("message can't be edited")
        return message


def _opt_int(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad_request(f"invalid {name} specified") from None


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() in ("true", "1")


def _check_text(text: str) -> None:
    if not text.strip():
        raise _bad_request("message text is empty")
    if _utf16_len(text) > MAX_TEXT:
        raise _bad_request("message is too long")


def _markup_param(params: dict[str, str]) -> JSON | None:
    raw = params.get("reply_markup")
    if not raw:
        return None
    try:
        markup = json.loads(raw)
    except ValueError:
        raise _bad_request("can't parse reply keyboard markup JSON object") from None
    if not isinstance(markup, dict):
        raise _bad_request("can't parse reply keyboard markup JSON object")
    for data in _callback_datas(markup):
        if not data or len(data.encode()) > MAX_CALLBACK_DATA:
            raise _bad_request("BUTTON_DATA_INVALID")
    return markup


def _set_markup(message: JSON, markup: JSON | None) -> None:
    # Only inline keyboards belong to the message; reply keyboards live on the client.
    if markup is not None and "inline_keyboard" in markup:
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _callback_datas(markup: JSON | None) -> list[str]:
    if not markup:
        return []
    rows = markup.get("inline_keyboard") or []
    return [b["callback_data"] for row in rows for b in row if "callback_data" in b]


def _not_modified() -> _ApiError:
    return _bad_request(
        "message is not modified: specified new message content and reply markup are exactly "
        "the same as a current content and reply markup of the message"
    )


async def _poll(probe: Callable[[], T | None], seconds: float, describe: Callable[[], str]) -> T:
    # Polling keeps the fake free of any event loop: its state lives behind a thread lock.
    deadline = time.monotonic() + seconds
    while (found := probe()) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {seconds}s; {describe()}")
        await anyio.sleep(0.01)
    return found


def _update_type(update: JSON) -> str:
    return next((k for k in update if k in _UPDATE_TYPES), "")
