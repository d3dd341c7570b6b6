"""The IPC server: accepts frontends on a Unix socket or loopback TCP and dispatches requests.

Per connection it checks the peer (same UID on Unix sockets; the token on TCP, in ``hello``),
splits frames with the protocol's 1 MiB limit, answers every malformed frame with a JSON-RPC
error and keeps the connection, runs each request in its own task (so ``cancel`` can reach a
streaming ``ask``), and cancels whatever a connection still has running when it goes away.

It knows nothing of conversations or models: methods come from a :class:`MethodTable`, each a
params Struct type and a handler ``(Call, params) -> result``.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import msgspec

from pyra_client.errors import (
    Cancelled,
    FrameTooLargeError,
    HandshakeRequired,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    PyraError,
    ShuttingDown,
    Unauthorized,
    UnsupportedProtocol,
)
from pyra_client.protocol import (
    MAX_FRAME_BYTES,
    SUPPORTED_PROTOCOLS,
    CancelParams,
    CancelResult,
    DecodedMessage,
    ErrorObject,
    Event,
    FrameSplitter,
    FrameTooLarge,
    HelloParams,
    HelloResult,
    Notification,
    Response,
    encode,
)

__all__ = ["Call", "Method", "MethodTable", "Server", "Session", "peer_uid"]

log = logging.getLogger(__name__)

#: A client that does not read its socket for this long is dropped, so it cannot stall turns.
SEND_TIMEOUT = 30.0


def peer_uid(sock: socket.socket) -> int | None:
    """The UID of the process at the other end of a Unix socket (None if unknown)."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if hasattr(socket, "LOCAL_PEERCRED"):  # macOS / BSD: struct xucred {u_int, uid_t, ...}
        creds = sock.getsockopt(0, socket.LOCAL_PEERCRED, struct.calcsize("2I"))
        _version, uid = struct.unpack("2I", creds)
        return int(uid)
    return None


@dataclass
class Session:
    """One connected frontend."""

    id: str
    stream: anyio.abc.ByteStream
    transport: str
    client: str = ""
    protocol: int = 0
    handshaken: bool = False
    closed: bool = False
    inflight: dict[int | str, anyio.CancelScope] = field(default_factory=dict)
    cancelled: set[int | str] = field(default_factory=set)
    send_lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        async with self.send_lock:
            try:
                with anyio.fail_after(SEND_TIMEOUT):
                    await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError):
                self.closed = True
                return False
        return True

    async def notify(self, method: str, params: object) -> bool:
        return await self.send(encode(Notification(method=method, params=params)))


@dataclass
class Call:
    """What a handler knows about the request it serves."""

    session: Session
    request_id: int | str

    async def emit(self, event: Event) -> None:
        await self.session.notify("stream", event)


Handler = Callable[[Call, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    params: type[Any]
    handler: Handler
    #: Answered inline in the read loop (quick, must not block) rather than in a task.
    inline: bool = False


MethodTable = dict[str, Method]


def _error(request_id: int | str | None, exc: PyraError) -> bytes:
    data = {k: v for k, v in exc.data.items() if v is not None} or None
    return encode(
        Response(
            id=request_id, error=ErrorObject(code=int(exc.code), message=exc.message, data=data)
        )
    )


class Server:
    """Serves a :class:`MethodTable` to every connection; see the module docstring."""

    def __init__(
        self,
        methods: MethodTable,
        *,
        version: str,
        token: str | None = None,
        on_session_end: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self._methods = methods
        self._version = version
        self._token = token
        self._on_session_end = on_session_end
        self._ids = itertools.count(1)
        self.sessions: dict[str, Session] = {}
        self.stopping = False

    async def serve(
        self,
        listener: anyio.abc.SocketListener,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until the listener is closed; then wait for the open ones.

        Closing the listener (graceful shutdown) stops new connections but leaves the open
        ones serving until the daemon cancels them.
        """
        async with anyio.create_task_group() as connections:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    log.debug("listener closed")
                    break
                connections.start_soon(self._handle, stream)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        transport = "unix" if raw is not None and raw.family == socket.AF_UNIX else "tcp"
        session = Session(id=f"conn-{next(self._ids)}", stream=stream, transport=transport)
        if transport == "unix" and raw is not None:
            uid = peer_uid(raw)
            if uid is not None and uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                await session.send(_error(None, Unauthorized("peer runs as another user")))
                # Hang up once the peer has read why (or after a second): closing with its
                # hello unread would reset the connection, and the peer would never see it.
                with (
                    anyio.move_on_after(1),
                    contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
                ):
                    while await stream.receive():
                        pass
                await stream.aclose()
                return
        self.sessions[session.id] = session
        try:
            async with anyio.create_task_group() as tasks:
                await self._read_loop(session, tasks)
                # The peer hung up: whatever it started has no one to answer to.
                tasks.cancel_scope.cancel()
        finally:
            session.closed = True
            self.sessions.pop(session.id, None)
            if self._on_session_end is not None:
                with anyio.CancelScope(shield=True):
                    await self._on_session_end(session)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            log.debug("%s (%s) disconnected", session.id, session.client or "?")

    async def _read_loop(self, session: Session, tasks: anyio.abc.TaskGroup) -> None:
        splitter = FrameSplitter()
        while not session.closed:
            try:
                data = await session.stream.receive()
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                return
            for frame in splitter.feed(data):
                if isinstance(frame, FrameTooLarge):
                    await session.send(_error(None, _frame_too_large(frame.size)))
                    continue
                await self._on_frame(session, frame, tasks)

    async def _on_frame(self, session: Session, frame: bytes, tasks: anyio.abc.TaskGroup) -> None:
        try:
            message = msgspec.json.decode(frame, type=DecodedMessage)
        # ValidationError subclasses DecodeError: it must be caught first.
        except msgspec.ValidationError as exc:
            await session.send(_error(None, InvalidRequest(f"not a JSON-RPC message: {exc}")))
            return
        except msgspec.DecodeError as exc:
            await session.send(_error(None, ParseError(f"invalid JSON: {exc}")))
            return
        if message.jsonrpc != "2.0" or message.method is None:
            if message.method is None and (message.result or message.error is not None):
                return  # a response from the client: nothing here asked for one
            await session.send(
                _error(message.id, InvalidRequest('expected {"jsonrpc": "2.0", "method": ...}'))
            )
            return
        if message.id is None:
            return  # notifications from clients carry nothing the daemon acts on yet
        request_id = message.id
        if message.method == "hello":
            try:
                reply = self._hello(session, request_id, message.params)
            except Unauthorized as exc:
                # Answer first: a closed session sends nothing, and the peer must learn why.
                await session.send(_error(request_id, exc))
                session.closed = True  # nothing more is read from an unauthenticated peer
                return
            await session.send(reply)
            return
        if not session.handshaken:
            await session.send(
                _error(request_id, HandshakeRequired("send `hello` before any other request"))
            )
            return
        if message.method == "cancel":
            await session.send(self._cancel(session, request_id, message.params))
            return
        method = self._methods.get(message.method)
        if method is None:
            await session.send(
                _error(request_id, MethodNotFound(f"unknown method {message.method!r}"))
            )
            return
        try:
            params = msgspec.json.decode(message.params or b"{}", type=method.params)
        except msgspec.MsgspecError as exc:
            await session.send(
                _error(request_id, InvalidParams(f"invalid params for {message.method}: {exc}"))
            )
            return
        if request_id in session.inflight:
            await session.send(
                _error(request_id, InvalidRequest(f"request id {request_id!r} is already in use"))
            )
            return
        call = Call(session=session, request_id=request_id)
        if method.inline:
            await session.send(await self._run(call, method, params))
        else:
            scope = anyio.CancelScope()
            session.inflight[request_id] = scope
            tasks.start_soon(self._run_task, call, method, params, scope)

    def _hello(self, session: Session, request_id: int | str, raw: msgspec.Raw) -> bytes:
        try:
            params = msgspec.json.decode(raw or b"{}", type=HelloParams)
        except msgspec.MsgspecError as exc:
            return _error(request_id, InvalidParams(f"invalid hello: {exc}"))
        if params.protocol not in SUPPORTED_PROTOCOLS:
            return _error(
                request_id,
                UnsupportedProtocol(
                    f"this daemon speaks protocol {sorted(SUPPORTED_PROTOCOLS)}, the client asked "
                    f"for {params.protocol}; upgrade the older side",
                    supported=sorted(SUPPORTED_PROTOCOLS),
                ),
            )
        if session.transport == "tcp":
            expected = (self._token or "").encode()
            given = (params.token or "").encode()
            if not expected or not hmac.compare_digest(expected, given):
                log.warning("%s: wrong or missing token on TCP", session.id)
                raise Unauthorized("wrong or missing token")
        session.client = params.client
        session.protocol = params.protocol
        session.handshaken = True
        session.id = f"{params.client}:{session.id}"
        return encode(
            Response(
                id=request_id,
                result=HelloResult(
                    protocol=params.protocol, daemon_version=self._version, pid=os.getpid()
                ),
            )
        )

    def _cancel(self, session: Session, request_id: int | str, raw: msgspec.Raw) -> bytes:
        try:
            params = msgspec.json.decode(raw or b"{}", type=CancelParams)
        except msgspec.MsgspecError as exc:
            return _error(request_id, InvalidParams(f"invalid params for cancel: {exc}"))
        scope = session.inflight.get(params.request)
        if scope is not None:
            session.cancelled.add(params.request)
            scope.cancel()
        return encode(Response(id=request_id, result=CancelResult(cancelled=scope is not None)))

    async def _run(self, call: Call, method: Method, params: Any) -> bytes:
        try:
            result = await method.handler(call, params)
        except PyraError as exc:
            return _error(call.request_id, exc)
        except Exception:
            log.exception("%s failed", call.request_id)
            return _error(call.request_id, InternalError("internal error; see the daemon log"))
        return encode(Response(id=call.request_id, result=result))

    async def _run_task(
        self, call: Call, method: Method, params: Any, scope: anyio.CancelScope
    ) -> None:
        session = call.session
        try:
            reply: bytes | None = None
            with scope:
                reply = await self._run(call, method, params)
            if reply is None:  # the client's `cancel` reached it first
                reply = _error(call.request_id, Cancelled("cancelled"))
            # Shielded: an answer already computed is delivered even when the daemon starts
            # stopping in between (a turn that ends within the shutdown grace is not lost).
            # Session.send bounds the wait.
            with anyio.CancelScope(shield=True):
                await session.send(reply)
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside: the daemon is stopping or the client went away.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await session.send(
                    _error(call.request_id, ShuttingDown("the daemon is shutting down"))
                )
            raise
        finally:
            session.inflight.pop(call.request_id, None)
            session.cancelled.discard(call.request_id)


def _frame_too_large(size: int) -> PyraError:
    return FrameTooLargeError(
        f"frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit; it was skipped",
        size=size,
    )
