"""Connections to the daemon: a blocking one for the CLI and an anyio one for long-lived frontends.

Both find the daemon through :func:`pyra_client.paths.read_endpoint`, authenticate with the
``hello`` handshake (sending the TCP token where the transport needs one), correlate responses
with requests by id, and hand ``stream`` notifications to a callback as typed events.

The blocking :class:`Connection` pipelines ``hello`` with the first request, so a one-shot
``pyra ask`` costs a single round trip. It deliberately does not import anyio: the CLI's start-up
time is a feature. :class:`AsyncConnection` supports many requests in flight at once and a
stream of other notifications (approval requests) for bots and watchers.

Neither retries, reconnects or starts a daemon; :mod:`pyra_client.autostart` does that.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from pyra_client import __version__
from pyra_client.errors import DaemonUnreachable, ProtocolError, PyraError, from_wire
from pyra_client.paths import Endpoint, Layout, read_endpoint
from pyra_client.protocol import (
    PROTOCOL_VERSION,
    CancelParams,
    DecodedMessage,
    Event,
    FrameSplitter,
    FrameTooLarge,
    HelloParams,
    HelloResult,
    Notification,
    Request,
    UnknownEvent,
    decode_event,
    decode_message,
    encode,
)

if TYPE_CHECKING:
    import anyio.abc

__all__ = ["AsyncConnection", "Connection", "EventHandler", "NotificationHandler"]

T = TypeVar("T")
EventHandler = Callable[[Event | UnknownEvent], None]
NotificationHandler = Callable[[str, msgspec.Raw], None]


def _hello(endpoint: Endpoint, client: str) -> HelloParams:
    token = None
    if endpoint.transport == "tcp":
        try:
            token = Path(endpoint.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DaemonUnreachable(
                f"cannot read the daemon's token file {endpoint.token_file}: {exc.strerror}"
            ) from exc
    return HelloParams(
        protocol=PROTOCOL_VERSION, client=client, client_version=__version__, token=token
    )


def _unreachable(endpoint: Endpoint, exc: OSError) -> DaemonUnreachable:
    return DaemonUnreachable(
        f"no Pyra daemon answers at {endpoint.describe()} ({exc.strerror or exc}); "
        "start one with `pyra daemon start`",
        endpoint=endpoint.describe(),
    )


def _raise_error(message: DecodedMessage) -> None:
    if message.error is not None:
        err = message.error
        raise from_wire(err.code, err.message, err.data)


class Connection:
    """A blocking connection, used by the CLI. Not thread-safe; one request at a time."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, client: str) -> None:
        self._sock = sock
        self._endpoint = endpoint
        self._splitter = FrameSplitter()
        self._frames: list[DecodedMessage] = []
        self._ids = itertools.count(1)
        # Requests sent and not yet waited for, and responses that arrived while waiting for
        # another one (an approval answered inline while an ``ask`` streams).
        self._outstanding: set[int | str] = set()
        self._early: dict[int | str, DecodedMessage] = {}
        self.hello: HelloResult | None = None
        self._hello_id: int | None = next(self._ids)
        self._sock.sendall(
            encode(Request(id=self._hello_id, method="hello", params=_hello(endpoint, client)))
        )

    @classmethod
    def open(
        cls,
        layout: Layout | None = None,
        *,
        client: str = "cli",
        endpoint: Endpoint | None = None,
        timeout: float | None = 10.0,
    ) -> Connection:
        """Connect and send ``hello`` (its answer is read with the first response)."""
        endpoint = endpoint or read_endpoint(layout or Layout.default())
        try:
            if endpoint.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise _unreachable(endpoint, exc) from exc
        sock.settimeout(None)
        return cls(sock, endpoint, client)

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def close(self) -> None:
        self._sock.close()

    def set_timeout(self, seconds: float | None) -> None:
        """Give up on a response after *seconds* with :class:`DaemonUnreachable` (a hung
        daemon); ``None``, the default, waits as long as the daemon takes."""
        self._sock.settimeout(seconds)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: object = None) -> int:
        """Send a request without waiting; returns its id."""
        request_id = next(self._ids)
        self._sock.sendall(encode(Request(id=request_id, method=method, params=params)))
        if method != "cancel":  # fire-and-forget: nobody waits for a cancel's answer
            self._outstanding.add(request_id)
        return request_id

    def notify(self, method: str, params: object = None) -> None:
        self._sock.sendall(encode(Notification(method=method, params=params)))

    def _next_message(self) -> DecodedMessage:
        while not self._frames:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise _unreachable(self._endpoint, exc) from exc
            if not data:
                raise DaemonUnreachable(
                    "the daemon closed the connection", endpoint=self._endpoint.describe()
                )
            for frame in self._splitter.feed(data):
                if isinstance(frame, FrameTooLarge):
                    raise ProtocolError(f"the daemon sent a frame of {frame.size} bytes")
                try:
                    self._frames.append(decode_message(frame))
                except msgspec.MsgspecError as exc:
                    raise ProtocolError(f"the daemon sent an invalid frame: {exc}") from exc
        return self._frames.pop(0)

    def wait(
        self,
        request_id: int,
        result_type: type[T],
        *,
        on_event: EventHandler | None = None,
        on_notification: NotificationHandler | None = None,
    ) -> T:
        """Read until the response to *request_id*; stream events go to *on_event*.

        Handlers may send and wait for other requests (nested): a response that arrives for
        another request still awaited is kept for its own ``wait``; responses to requests
        nobody waits for any more are dropped.
        """
        while True:
            early = self._early.pop(request_id, None)
            if early is not None:
                self._outstanding.discard(request_id)
                _raise_error(early)
                return msgspec.json.decode(early.result or b"null", type=result_type)
            message = self._next_message()
            if message.method is not None:
                if message.method == "stream" and message.params:
                    if on_event is not None:
                        on_event(decode_event(message.params))
                elif on_notification is not None:
                    on_notification(message.method, message.params)
                continue
            if message.id == self._hello_id:
                self._hello_id = None
                _raise_error(message)
                if message.result:
                    self.hello = msgspec.json.decode(message.result, type=HelloResult)
                continue
            if message.id is None:
                _raise_error(message)  # an error the daemon could not tie to a request
                continue
            if message.id != request_id:
                if message.id in self._outstanding:
                    self._early[message.id] = message
                continue  # otherwise the answer to a request we gave up on (e.g. a cancel)
            self._outstanding.discard(request_id)
            _raise_error(message)
            return msgspec.json.decode(message.result or b"null", type=result_type)

    def forget(self, request_id: int) -> None:
        """Stop keeping the response of *request_id* (a request given up on)."""
        self._outstanding.discard(request_id)
        self._early.pop(request_id, None)

    def call(
        self,
        method: str,
        params: object,
        result_type: type[T],
        *,
        on_event: EventHandler | None = None,
    ) -> T:
        return self.wait(self.send(method, params), result_type, on_event=on_event)


class AsyncConnection:
    """An anyio connection with many requests in flight; for bots, watchers and tests.

    Use as ``async with await AsyncConnection.open(client="telegram") as conn:``. Notifications
    other than ``stream`` (e.g. ``interaction.request``) arrive on :meth:`notifications`.
    """

    def __init__(self, stream: anyio.abc.ByteStream, endpoint: Endpoint, client: str) -> None:
        import anyio

        self._anyio = anyio
        self._stream = stream
        self._endpoint = endpoint
        self._client = client
        self._ids = itertools.count(1)
        self._waiters: dict[int, tuple[anyio.Event, list[DecodedMessage]]] = {}
        self._event_handlers: dict[int, Callable[[Event | UnknownEvent], Any]] = {}
        self._send_lock = anyio.Lock()
        send, receive = anyio.create_memory_object_stream[tuple[str, msgspec.Raw]](1000)
        self._note_send = send
        self._note_receive = receive
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed: PyraError | None = None
        self.hello: HelloResult | None = None

    @classmethod
    async def open(
        cls,
        layout: Layout | None = None,
        *,
        client: str = "cli",
        endpoint: Endpoint | None = None,
        connect_timeout: float = 10.0,
    ) -> AsyncConnection:
        import anyio

        endpoint = endpoint or read_endpoint(layout or Layout.default())
        try:
            with anyio.fail_after(connect_timeout):
                stream: anyio.abc.ByteStream
                if endpoint.transport == "unix":
                    stream = await anyio.connect_unix(endpoint.path)
                else:
                    stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
        except OSError as exc:
            raise _unreachable(endpoint, exc) from exc
        except TimeoutError as exc:
            raise DaemonUnreachable(f"timed out connecting to {endpoint.describe()}") from exc
        return cls(stream, endpoint, client)

    async def __aenter__(self) -> AsyncConnection:
        self._task_group = self._anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._reader)
        self.hello = await self.request("hello", _hello(self._endpoint, self._client), HelloResult)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task_group is not None:
            task_group, self._task_group = self._task_group, None
            # The group's scope must be exited as the innermost one (a CancelScope wrapped
            # around __aexit__ breaks anyio's nesting); shielding it keeps an outer
            # cancellation from cutting the clean-up short.
            task_group.cancel_scope.shield = True
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        await self._stream.aclose()

    async def _reader(self) -> None:
        splitter = FrameSplitter()
        try:
            while True:
                try:
                    data = await self._stream.receive()
                except (self._anyio.EndOfStream, self._anyio.BrokenResourceError, OSError):
                    break
                for frame in splitter.feed(data):
                    if isinstance(frame, FrameTooLarge):
                        continue
                    await self._dispatch(decode_message(frame))
        finally:
            self._closed = DaemonUnreachable("the daemon closed the connection")
            for event, _ in self._waiters.values():
                event.set()
            self._note_send.close()

    async def _dispatch(self, message: DecodedMessage) -> None:
        if message.method == "stream" and message.params:
            event = decode_event(message.params)
            handler = self._event_handlers.get(event.request)  # type: ignore[arg-type]
            if handler is not None:
                result = handler(event)
                if hasattr(result, "__await__"):
                    await result
            return
        if message.method is not None:
            # Never block the reader on a slow consumer; the buffer is generous.
            with self._anyio.move_on_after(5):
                await self._note_send.send((message.method, message.params))
            return
        if isinstance(message.id, int) and message.id in self._waiters:
            done, slot = self._waiters[message.id]
            slot.append(message)
            done.set()

    async def send(
        self, method: str, params: object = None, *, request_id: int | None = None
    ) -> int:
        """Send a request without waiting for it; returns its id (see :meth:`wait`)."""
        request_id = next(self._ids) if request_id is None else request_id
        self._waiters[request_id] = (self._anyio.Event(), [])
        async with self._send_lock:
            try:
                await self._stream.send(
                    encode(Request(id=request_id, method=method, params=params))
                )
            except (self._anyio.BrokenResourceError, self._anyio.ClosedResourceError) as exc:
                self._waiters.pop(request_id, None)
                raise DaemonUnreachable("the daemon closed the connection") from exc
        return request_id

    async def wait(self, request_id: int, result_type: type[T]) -> T:
        event, slot = self._waiters[request_id]
        try:
            await event.wait()
        finally:
            self._waiters.pop(request_id, None)
            self._event_handlers.pop(request_id, None)
        if not slot:
            raise self._closed or DaemonUnreachable("the daemon closed the connection")
        _raise_error(slot[0])
        return msgspec.json.decode(slot[0].result or b"null", type=result_type)

    async def request(
        self,
        method: str,
        params: object,
        result_type: type[T],
        *,
        on_event: Callable[[Event | UnknownEvent], Any] | None = None,
    ) -> T:
        """Send a request and wait for its response; stream events go to *on_event*.

        Cancelling the waiting task sends ``cancel`` for the request, so the daemon stops too.
        """
        request_id = next(self._ids)
        if on_event is not None:
            self._event_handlers[request_id] = on_event
        await self.send(method, params, request_id=request_id)
        try:
            return await self.wait(request_id, result_type)
        except self._anyio.get_cancelled_exc_class():
            with self._anyio.CancelScope(shield=True), self._anyio.move_on_after(2):
                await self.send("cancel", CancelParams(request=request_id))
            raise

    async def notifications(self) -> AsyncIterator[tuple[str, msgspec.Raw]]:
        """Notifications other than ``stream``, in arrival order, until the connection ends."""
        async for item in self._note_receive:
            yield item
