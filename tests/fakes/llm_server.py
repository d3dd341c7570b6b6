"""An OpenAI-compatible LLM server on loopback, scripted per test and recording what it is sent.

What it fakes: the parts of the OpenAI HTTP API that litellm's ``openai/<model>`` provider uses,
over real HTTP on ``127.0.0.1`` (a free port), so tests exercise the real client stack
(litellm -> openai SDK -> httpx, on litellm's aiohttp transport) in this process or in a
spawned daemon process:

- ``POST /v1/chat/completions``: a JSON ``chat.completion``, or with ``"stream": true`` an SSE
  stream of ``chat.completion.chunk`` events (a role delta, content deltas, ``tool_calls``
  deltas whose ``arguments`` arrive in several pieces, a final chunk with ``finish_reason``, a
  usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``). Streams use
  HTTP/1.1 chunked transfer, so connections are reused between requests and a stream cut
  mid-way is visible to the client as an incomplete body.
- ``GET /v1/models``: the configured model names.
- ``POST /v1/embeddings``: deterministic unit vectors (``embedding_dim``, default 8, or the
  request's ``dimensions``) built by hashing the lower-cased words of each input, so texts that
  share words are closer; ``encoding_format`` ``float`` or ``base64`` (the openai SDK's default).

Scripting: chat-completion requests consume one scripted reply each, first in first out; when
the queue is empty they get ``default_reply`` (``"ok"``) at once, so a benchmark can run
thousands of turns unscripted. Embeddings and model listing are never scripted.

What it deliberately does not do: check the model name, validate the request beyond "is it a
JSON object", count real tokens (usage is roughly characters / 4 unless scripted), honour
sampling parameters, or check credentials -- unless ``require_key`` is set, in which case a
missing or wrong ``Authorization: Bearer`` header gets a 401 and consumes no scripted reply.
It never prints and logs only at DEBUG (``http.server``'s access log is silenced).

API::

    FakeLLMServer(*, default_reply="ok", models=("fake-model",), require_key=None,
                  embedding_dim=8)
        start() -> self; stop(); ``with FakeLLMServer() as srv:``; base_url; port
        enqueue_text(text, *, chunk_size=None, delay=0.0, usage=None)
        enqueue_tool_calls(calls, *, text="", delay=0.0, usage=None) -> list of call ids
        enqueue_error(status, message=None, *, retry_after=None, error_type=None, code=None)
        enqueue_cut(text, *, after_chunks=1, chunk_size=None)
        enqueue_hang(seconds)
        default_reply; pending; requests; last_request(); wait_for_requests(n, timeout)
        await_requests(n) (async); reset(); errors

Example::

    with FakeLLMServer() as srv:
        srv.enqueue_tool_calls([("get_time", '{"tz": "UTC"}')])
        srv.enqueue_text("It is noon.", chunk_size=4)
        ...  # litellm.acompletion(model="openai/fake-model", api_base=srv.base_url, ...)
        assert srv.last_request().body["messages"][-1]["role"] == "tool"
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import anyio

__all__ = ["FakeLLMServer", "RecordedRequest", "ToolCallSpec", "Usage", "embed"]

log = logging.getLogger(__name__)

Usage = tuple[int, int]
"""Scripted token counts: ``(prompt_tokens, completion_tokens)``."""

ToolCallSpec = tuple[str, str | Mapping[str, Any]] | Mapping[str, Any]
"""``(name, arguments)`` or ``{"name", "arguments", optional "id"}``; non-string arguments
are JSON-encoded."""


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The body parsed as JSON, or ``None`` when empty or not JSON."""
    raw: bytes
    client_port: int
    """The client's source port: equal across requests on one kept-alive connection."""


# Scripted replies -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    text: str
    chunk_size: int | None
    delay: float
    usage: Usage | None


@dataclass(frozen=True)
class _ToolCalls:
    calls: tuple[tuple[str, str, str], ...]  # (id, name, arguments)
    text: str
    delay: float
    usage: Usage | None


@dataclass(frozen=True)
class _Error:
    status: int
    message: str
    retry_after: float | None
    error_type: str
    code: str | None


@dataclass(frozen=True)
class _Cut:
    text: str
    after_chunks: int
    chunk_size: int | None


@dataclass(frozen=True)
class _Hang:
    seconds: float


_Reply = _Text | _ToolCalls | _Error | _Cut | _Hang

# What OpenAI sends for these statuses: (message, type, code). litellm classifies errors by
# body text before status: "invalid_request_error" makes a BadRequestError unless the message
# says "Incorrect API key provided", hence OpenAI's real wording for 401.
_ERROR_KINDS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (scripted).", "invalid_request_error", None),
    401: (
        "Incorrect API key provided: sk-***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to sample from this model.", "permission_error", None),
    404: ("The model does not exist (scripted).", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached (scripted).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error processing your request.", "server_error", None),
    503: ("The engine is currently overloaded (scripted).", "server_error", None),
}


class FakeLLMServer:
    """An OpenAI-compatible server on a free loopback port; see the module docstring."""

    def __init__(
        self,
        *,
        default_reply: str = "ok",
        models: Sequence[str] = ("fake-model",),
        require_key: str | None = None,
        embedding_dim: int = 8,
    ) -> None:
        self.default_reply = default_reply
        self.models = list(models)
        self.require_key = require_key
        self.embedding_dim = embedding_dim
        self.errors: list[BaseException] = []
        """Unexpected exceptions while serving (bugs in the fake, not clients hanging up)."""
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[_Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._next_call = 1
        self._next_id = 1
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a background thread."""
        if self._httpd is not None:
            raise RuntimeError("FakeLLMServer can be started once")
        self._httpd = _HTTPServer(self)
        # A short poll interval keeps stop() fast; the accept loop is otherwise idle.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-llm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut every open connection (streams, hangs, idle keep-alives), join."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None or self._stopping.is_set():
            return
        self._stopping.set()  # wakes hangs and inter-chunk delays
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()  # closes the listener and joins the handler threads
        thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what litellm takes as ``api_base``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # Scripting ------------------------------------------------------------------------------

    def enqueue_text(
        self,
        text: str,
        *,
        chunk_size: int | None = None,
        delay: float = 0.0,
        usage: Usage | None = None,
    ) -> None:
        """Reply with ``text``; streamed word by word, or in ``chunk_size``-character pieces,
        ``delay`` seconds apart. ``usage`` overrides the estimated token counts."""
        self._push(_Text(text, chunk_size, delay, usage))

    def enqueue_tool_calls(
        self,
        calls: Sequence[ToolCallSpec],
        *,
        text: str = "",
        delay: float = 0.0,
        usage: Usage | None = None,
    ) -> list[str]:
        """Reply with one assistant turn making these (parallel) tool calls, after optional
        ``text``; ``finish_reason`` is ``"tool_calls"``. Returns the call ids (``call_<n>``
        unless a dict gives ``"id"``)."""
        resolved: list[tuple[str, str, str]] = []
        with self._lock:
            for call in calls:
                if isinstance(call, Mapping):
                    name, arguments = call["name"], call.get("arguments", "{}")
                    call_id = call.get("id")
                else:
                    (name, arguments), call_id = call, None
                if call_id is None:
                    call_id = f"call_{self._next_call}"
                    self._next_call += 1
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments)
                resolved.append((str(call_id), str(name), arguments))
            self._queue.append(_ToolCalls(tuple(resolved), text, delay, usage))
        return [call_id for call_id, _, _ in resolved]

    def enqueue_error(
        self,
        status: int,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Answer with HTTP ``status`` and an OpenAI error body (``Retry-After`` if given).
        ``message``, ``error_type`` and ``code`` default to what OpenAI sends for that status;
        note that litellm turns a 401 whose message lacks "Incorrect API key provided" into a
        ``BadRequestError``."""
        self._push(_error(status, message, retry_after, error_type, code))

    def enqueue_cut(
        self, text: str, *, after_chunks: int = 1, chunk_size: int | None = None
    ) -> None:
        """Start the reply, then close the connection abruptly: a stream gets its role chunk
        and ``after_chunks`` content chunks of ``text`` and no ``[DONE]``; a non-streaming
        request gets half of its JSON body."""
        self._push(_Cut(text, after_chunks, chunk_size))

    def enqueue_hang(self, seconds: float) -> None:
        """Read the request and answer nothing for ``seconds`` (or until stop()), then close
        the connection without a response."""
        self._push(_Hang(seconds))

    def _push(self, reply: _Reply) -> None:
        with self._lock:
            self._queue.append(reply)

    def _pop(self) -> _Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return _Text(self.default_reply, None, 0.0, None)

    @property
    def pending(self) -> int:
        """Scripted replies not yet consumed."""
        with self._lock:
            return len(self._queue)

    # Recording ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise LookupError("the fake LLM server has received no request")
            return self._requests[-1]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests arrived; raise ``TimeoutError`` after
        ``timeout`` seconds. Do not call from an event loop whose tasks make the requests:
        use ``await_requests``."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"{len(self._requests)} of {n} requests within {timeout}s")
            return list(self._requests)

    async def await_requests(self, n: int) -> list[RecordedRequest]:
        """``wait_for_requests`` for async tests: polls without blocking the event loop.
        Bound it with the caller's deadline, e.g. ``with anyio.fail_after(5):``."""
        while True:
            with self._lock:
                if len(self._requests) >= n:
                    return list(self._requests)
            await anyio.sleep(0.01)

    def reset(self) -> None:
        """Forget scripted replies and recorded requests (and ``errors``)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self.errors.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()

    # Connections ----------------------------------------------------------------------------

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            stopping = self._stopping.is_set()
        if stopping:  # accepted just as stop() swept the connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _new_id(self) -> str:
        with self._lock:
            n, self._next_id = self._next_id, self._next_id + 1
        return f"chatcmpl-fake{n}"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeLLMServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-stream is routine here; anything else is a bug in the fake.
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OSError):
            self.fake.errors.append(exc)
        log.debug("fake LLM server: error serving %s", client_address, exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams whose cut is detectable
    disable_nagle_algorithm = True  # else each small SSE write waits ~40 ms for a delayed ACK
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # Dispatch -------------------------------------------------------------------------------

    def _handle(self) -> None:
        fake = self.server.fake
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = urlsplit(self.path).path
        headers = {name.lower(): value for name, value in self.headers.items()}
        fake._record(
            RecordedRequest(self.command, path, headers, body, raw, int(self.client_address[1]))
        )

        if fake.require_key is not None and (
            self.headers.get("Authorization") != f"Bearer {fake.require_key}"
        ):
            self._send_error(_error(401))
            return
        route = path.removeprefix("/v1").rstrip("/")
        if (self.command, route) == ("GET", "/models"):
            self._send_json(200, {"object": "list", "data": [_model(m) for m in fake.models]})
        elif self.command == "POST" and route in ("/chat/completions", "/embeddings"):
            if not isinstance(body, dict):
                self._send_error(_error(400, "The body must be a JSON object."))
            elif route == "/embeddings":
                self._embeddings(body)
            else:
                self._chat(body)
        else:
            self._send_error(_error(404, f"Unknown request URL: {self.command} {path}."))

    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        reply = fake._pop()
        stream = bool(body.get("stream"))
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
        turn = _Turn(
            id=fake._new_id(),
            created=int(time.time()),
            model=str(body.get("model") or (fake.models[0] if fake.models else "fake-model")),
            prompt_tokens=max(1, len(json.dumps(body.get("messages", []))) // 4),
        )
        if isinstance(reply, _Error):
            self._send_error(reply)
        elif isinstance(reply, _Hang):
            fake._stopping.wait(reply.seconds)
            self._drop()
        elif isinstance(reply, _Cut):
            if stream:
                self._start_stream()
                pieces = _split(reply.text, reply.chunk_size)[: reply.after_chunks]
                self._send_event(turn.chunk({"role": "assistant", "content": ""}))
                for piece in pieces:
                    self._send_event(turn.chunk({"content": piece}))
            else:
                data = _encode(turn.completion(reply.text, (), None))
                self._send_head(200, len(data))
                self.wfile.write(data[: len(data) // 2])
            self._drop()
        elif stream:
            self._stream(turn, reply, include_usage=include_usage)
        else:
            calls = reply.calls if isinstance(reply, _ToolCalls) else ()
            self._send_json(200, turn.completion(reply.text, calls, reply.usage))

    def _stream(self, turn: _Turn, reply: _Text | _ToolCalls, *, include_usage: bool) -> None:
        stopping = self.server.fake._stopping
        self._start_stream()
        for index, event in enumerate(turn.events(reply, include_usage=include_usage)):
            if index and reply.delay and stopping.wait(reply.delay):
                self._drop()
                return
            self._send_event(event)
        # [DONE] and the end of the chunked body in one write, as one segment: clients that
        # close the response on [DONE] then find it complete and keep the connection alive.
        self._send_event("[DONE]", last=True)

    def _embeddings(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        given = body.get("input", "")
        texts = [given] if isinstance(given, str) else list(given or [])
        texts = [t if isinstance(t, str) else json.dumps(t) for t in texts]
        dim = int(body.get("dimensions") or fake.embedding_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            vector = embed(text, dim)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = max(1, sum(len(t) for t in texts) // 4)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    # Wire -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_head(self, status: int, length: int, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(
        self, status: int, payload: object, extra: Mapping[str, str] | None = None
    ) -> None:
        data = _encode(payload)
        self._send_head(status, len(data), extra)
        self.wfile.write(data)

    def _send_error(self, error: _Error) -> None:
        extra = {} if error.retry_after is None else {"Retry-After": f"{error.retry_after:g}"}
        payload = {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.code,
            }
        }
        self._send_json(error.status, payload, extra)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _send_event(self, payload: str, *, last: bool = False) -> None:
        data = f"data: {payload}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n%s" % (len(data), data, b"0\r\n\r\n" if last else b""))

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class _Turn:
    """The envelope shared by a completion and all chunks of its stream."""

    id: str
    created: int
    model: str
    prompt_tokens: int

    def usage(
        self, scripted: Usage | None, text: str, calls: Sequence[tuple[str, str, str]]
    ) -> Any:
        if scripted is not None:
            prompt, completion = scripted
        else:
            produced = len(text) + sum(len(name) + len(args) for _, name, args in calls)
            prompt, completion = self.prompt_tokens, max(1, produced // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(
        self, text: str, calls: Sequence[tuple[str, str, str]], usage: Usage | None
    ) -> Any:
        content = text if text or not calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": self.usage(usage, text, calls),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return json.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            },
            separators=(",", ":"),
        )

    def events(self, reply: _Text | _ToolCalls, *, include_usage: bool) -> Iterator[str]:
        calls = reply.calls if isinstance(reply, _ToolCalls) else ()
        chunk_size = reply.chunk_size if isinstance(reply, _Text) else None
        yield self.chunk({"role": "assistant", "content": "" if reply.text or not calls else None})
        for piece in _split(reply.text, chunk_size):
            yield self.chunk({"content": piece})
        for index, (call_id, name, arguments) in enumerate(calls):
            head = {"name": name, "arguments": ""}
            yield self.chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": head}
                    ]
                }
            )
            for piece in _thirds(arguments):
                yield self.chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                )
        yield self.chunk({}, "tool_calls" if calls else "stop")
        if include_usage:
            usage = self.usage(reply.usage, reply.text, calls)
            yield json.dumps(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                },
                separators=(",", ":"),
            )


def _error(
    status: int,
    message: str | None = None,
    retry_after: float | None = None,
    error_type: str | None = None,
    code: str | None = None,
) -> _Error:
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    default = _ERROR_KINDS.get(status, (f"Scripted error {status}.", fallback, None))
    return _Error(
        status, message or default[0], retry_after, error_type or default[1], code or default[2]
    )


def embed(text: str, dim: int) -> list[float]:
    """The fake's embedding of ``text``: the normalised sum of one pseudo-random vector per
    lower-cased word (the whole text if it has none), so shared words mean higher cosine."""
    words = re.findall(r"\w+", text.lower()) or [text]
    total = [0.0] * dim
    for word in words:
        digest = hashlib.shake_256(word.encode()).digest(dim)
        for i, byte in enumerate(digest):
            total[i] += byte / 127.5 - 1.0
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


def _split(text: str, chunk_size: int | None) -> list[str]:
    if chunk_size is None:
        return re.findall(r"\s*\S+|\s+$", text)
    return [text[i : i + chunk_size] for i in range(0, len(text), max(1, chunk_size))]


def _thirds(arguments: str) -> list[str]:
    size = max(1, -(-len(arguments) // 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "pyra-fake"}


def _encode(payload: object) -> bytes:
    return json.dumps(payload).encode()
