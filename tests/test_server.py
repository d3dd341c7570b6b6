"""The IPC server over real sockets against a real daemon process.

Raw sockets send what a well-behaved client never would (bad JSON, oversized frames, requests
before the handshake); :class:`Connection` and :class:`AsyncConnection` cover the rest.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import tomli_w

from pyra_client.connection import AsyncConnection, Connection
from pyra_client.errors import Cancelled, Unauthorized
from pyra_client.paths import Layout, read_endpoint
from pyra_client.protocol import (
    MAX_FRAME_BYTES,
    AskParams,
    AskResult,
    ConversationIdParams,
    ConversationListParams,
    ConversationListResult,
    ConversationShowResult,
    Empty,
    ErrorCode,
    Event,
    FrameSplitter,
    FrameTooLarge,
    StatusResult,
    TextDelta,
    UnknownEvent,
)
from tests.conftest import DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer

HELLO: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "hello",
    "method": "hello",
    "params": {"protocol": 1, "client": "test"},
}


class RawClient:
    """A newline-JSON client on a bare socket: sends anything, reads frames one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(15)
        self._splitter = FrameSplitter()
        self._frames: list[bytes] = []

    @classmethod
    def unix(cls, path: str) -> RawClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def to(cls, layout: Layout) -> RawClient:
        endpoint = read_endpoint(layout)
        if endpoint.transport == "unix":
            return cls.unix(endpoint.path)
        return cls(socket.create_connection((endpoint.host, endpoint.port), timeout=15))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *messages: dict[str, Any]) -> None:
        """Send *messages* in one write (so the daemon sees them in one read, pipelined)."""
        self.sock.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    def request(self, request_id: int | str, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def receive(self) -> dict[str, Any]:
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the daemon closed the connection")
            for frame in self._splitter.feed(data):
                assert not isinstance(frame, FrameTooLarge)
                self._frames.append(frame)
        message: dict[str, Any] = json.loads(self._frames.pop(0))
        return message

    def response(self, request_id: int | str | None) -> dict[str, Any]:
        """Read until the response for *request_id*, skipping notifications."""
        while True:
            message = self.receive()
            assert message["jsonrpc"] == "2.0"
            if "method" in message:
                continue
            assert message.get("id") == request_id, message
            return message

    def hello(self, protocol: int = 1) -> dict[str, Any]:
        self.send({**HELLO, "params": {"protocol": protocol, "client": "test"}})
        return self.response("hello")

    def assert_serves_status(self) -> None:
        self.request("st", "status")
        reply = self.response("st")
        assert "error" not in reply, reply
        assert reply["result"]["pid"] > 0

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the daemon has closed its side (no bytes remain to read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if ready:
                try:
                    if self.sock.recv(65536) == b"":
                        return True
                except ConnectionResetError:
                    return True
        return False


def _error(reply: dict[str, Any]) -> dict[str, Any]:
    assert "result" not in reply, reply
    error: dict[str, Any] = reply["error"]
    return error


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """The shared home, without litellm's background warm-up: most tests here never ask, and a
    daemon stopping mid-import waits for it (seconds). Tests that ask import it on demand."""
    _set_daemon_option(pyra_home, "warm_up", False)
    return pyra_home


def _set_daemon_option(home: Path, key: str, value: object) -> None:
    config = home / "config.toml"
    data = tomllib.loads(config.read_text())
    data.setdefault("daemon", {})[key] = value
    config.write_text(tomli_w.dumps(data))


@pytest.fixture
def raw(daemon: DaemonHandle) -> Iterator[RawClient]:
    with RawClient.to(daemon.layout) as client:
        yield client


def _status(daemon: DaemonHandle) -> StatusResult:
    with daemon.connect() as conn:
        return conn.call("status", Empty(), StatusResult)


def _wait_turn_status(daemon: DaemonHandle, status: str, timeout: float = 15.0) -> str:
    """The id of the most recent conversation once its last turn has *status*."""
    deadline = time.monotonic() + timeout
    seen = None
    with daemon.connect() as conn:
        while time.monotonic() < deadline:
            listed = conn.call(
                "conversations.list", ConversationListParams(), ConversationListResult
            )
            if listed.conversations:
                conv = listed.conversations[0].id
                shown = conn.call(
                    "conversations.show", ConversationIdParams(id=conv), ConversationShowResult
                )
                seen = shown.messages[-1].status
                if seen == status:
                    return conv
            time.sleep(0.05)
    raise AssertionError(f"the last turn is {seen!r}, not {status!r}, after {timeout} s")


# --- Malformed input -------------------------------------------------------------------------


def test_malformed_json_gets_a_parse_error_and_the_connection_survives(raw: RawClient) -> None:
    raw.send_bytes(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    error = _error(raw.response(None))
    assert error["code"] == ErrorCode.PARSE_ERROR == -32700
    assert "invalid JSON" in error["message"]
    raw.send_bytes(b"\xff\xfe not even utf-8\n")
    assert _error(raw.response(None))["code"] == -32700
    assert "result" in raw.hello()
    raw.assert_serves_status()


@pytest.mark.parametrize(
    ("frame", "reply_id"),
    [
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b"42", None),
        (b'{"hello": "world"}', None),
        (b'{"jsonrpc": "1.0", "id": 5, "method": "status"}', 5),
        (b'{"id": 6, "method": "status"}', 6),
        (b'{"jsonrpc": "2.0", "id": {"nested": true}, "method": "status"}', None),
        (b'{"jsonrpc": "2.0", "id": 7, "method": 12}', None),
    ],
)
def test_json_that_is_not_json_rpc_is_an_invalid_request(
    raw: RawClient, frame: bytes, reply_id: int | None
) -> None:
    assert "result" in raw.hello()
    raw.send_bytes(frame + b"\n")
    reply = raw.response(reply_id)
    assert _error(reply)["code"] == ErrorCode.INVALID_REQUEST == -32600
    raw.assert_serves_status()


def test_an_oversized_frame_is_refused_and_the_connection_survives(raw: RawClient) -> None:
    assert "result" in raw.hello()
    big = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ask", "params": {"prompt": ""}})
    big = big.replace('""', '"' + "x" * (MAX_FRAME_BYTES + 10) + '"')
    # Sent in pieces, the way a real client's large write arrives.
    payload = big.encode() + b"\n"
    for start in range(0, len(payload), 256 * 1024):
        raw.send_bytes(payload[start : start + 256 * 1024])
    error = _error(raw.response(None))
    assert error["code"] == ErrorCode.FRAME_TOO_LARGE == -32001
    assert error["data"]["size"] == len(payload)
    assert str(MAX_FRAME_BYTES) in error["message"]
    raw.assert_serves_status()
    # Exactly one error for the big frame: the next frame read is the answer to a new request.
    raw.request(10, "status")
    assert raw.receive()["id"] == 10


def test_unknown_method(raw: RawClient) -> None:
    raw.hello()
    raw.request(3, "no.such.method", {})
    error = _error(raw.response(3))
    assert error["code"] == ErrorCode.METHOD_NOT_FOUND == -32601
    assert "no.such.method" in error["message"]
    raw.assert_serves_status()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"prompt": 5}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "hi", "stream": "yes"}, "stream"),
        ({"prompt": "hi", "conversation": ["a"]}, "conversation"),
        ([1, 2], "object"),
    ],
)
def test_wrong_params_are_invalid_params_naming_the_field(
    raw: RawClient, params: Any, field: str
) -> None:
    raw.hello()
    raw.request(4, "ask", params)
    error = _error(raw.response(4))
    assert error["code"] == ErrorCode.INVALID_PARAMS == -32602
    assert field in error["message"]
    assert "ask" in error["message"]
    raw.assert_serves_status()


def test_a_request_before_hello_is_refused(raw: RawClient) -> None:
    raw.request(1, "status")
    error = _error(raw.response(1))
    assert error["code"] == ErrorCode.HANDSHAKE_REQUIRED == -32002
    assert "hello" in error["message"]
    assert "result" in raw.hello()
    raw.assert_serves_status()


def test_an_unsupported_protocol_gets_a_clear_error_and_the_daemon_carries_on(
    daemon: DaemonHandle, raw: RawClient
) -> None:
    error = _error(raw.hello(protocol=99))
    assert error["code"] == ErrorCode.UNSUPPORTED_PROTOCOL == -32003
    assert "99" in error["message"]
    assert "upgrade" in error["message"]
    assert error["data"] == {"supported": [1]}
    # Not handshaken: the connection still refuses work...
    raw.request(2, "status")
    assert _error(raw.response(2))["code"] == ErrorCode.HANDSHAKE_REQUIRED
    # ...until a hello the daemon speaks.
    assert raw.hello(protocol=1)["result"]["protocol"] == 1
    raw.assert_serves_status()
    assert _status(daemon).pid == daemon.pid


def test_ids_are_echoed_as_given_and_duplicates_in_flight_refused(
    daemon: DaemonHandle, fake_llm: FakeLLMServer, raw: RawClient
) -> None:
    raw.hello()
    raw.request("a string id", "status")
    assert raw.response("a string id")["result"]["pid"] == daemon.pid
    fake_llm.enqueue_text("slow " * 40, chunk_size=5, delay=0.05)
    raw.request(77, "ask", {"prompt": "long"})
    raw.request(77, "ask", {"prompt": "again"})
    first = raw.response(77)
    assert _error(first)["code"] == ErrorCode.INVALID_REQUEST
    assert "already in use" in first["error"]["message"]
    assert raw.response(77)["result"]["text"] == "slow " * 40


def test_responses_and_notifications_from_a_client_are_ignored(raw: RawClient) -> None:
    raw.hello()
    raw.send(
        {"jsonrpc": "2.0", "id": 99, "result": {"ok": True}},
        {"jsonrpc": "2.0", "method": "stream", "params": {"request": 1, "type": "text"}},
    )
    raw.request(5, "status")
    assert raw.receive()["id"] == 5  # nothing was answered to the two above


# --- Streaming, disconnects and cancellation ------------------------------------------------


def test_a_client_disconnecting_mid_stream_cancels_its_turn_only(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("slow " * 200, chunk_size=5, delay=0.05)
    with RawClient.to(daemon.layout) as quitter:
        quitter.hello()
        quitter.request(2, "ask", {"prompt": "a long story"})
        first = quitter.receive()
        assert first["method"] == "stream"
        assert first["params"]["request"] == 2
    # Gone mid-stream. The daemon keeps serving others at once...
    status = _status(daemon)
    assert status.pid == daemon.pid
    # ...records the orphaned turn as cancelled, and answers the next ask.
    conv = _wait_turn_status(daemon, "cancelled")
    with daemon.connect() as conn:
        shown = conn.call(
            "conversations.show", ConversationIdParams(id=conv), ConversationShowResult
        )
        assert [m.role for m in shown.messages] == ["user", "assistant"]
        assert shown.messages[1].content.startswith("slow")
        assert len(shown.messages[1].content) < len("slow " * 200)
        fake_llm.enqueue_text("still here")
        result = conn.call("ask", AskParams(prompt="are you there?"), AskResult)
    assert result.text == "still here"
    assert _status(daemon).active_turns == 0


async def test_two_clients_stream_concurrently(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("alpha " * 12, chunk_size=6, delay=0.05)
    fake_llm.enqueue_text("bravo " * 12, chunk_size=6, delay=0.05)
    seen: dict[str, list[tuple[float, str]]] = {"one": [], "two": []}
    results: dict[str, AskResult] = {}

    async def client(name: str) -> None:
        def on_event(event: Event | UnknownEvent) -> None:
            assert isinstance(event, TextDelta)
            seen[name].append((time.monotonic(), event.text))

        async with await AsyncConnection.open(daemon.layout, client="test") as conn:
            results[name] = await conn.request(
                "ask", AskParams(prompt=f"client {name}"), AskResult, on_event=on_event
            )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client, "one")
            tasks.start_soon(client, "two")

    texts = {results["one"].text, results["two"].text}
    assert texts == {"alpha " * 12, "bravo " * 12}
    for name in ("one", "two"):
        # Each client got exactly its own answer's events, in order.
        assert "".join(text for _, text in seen[name]) == results[name].text
    assert results["one"].conversation != results["two"].conversation
    # The streams overlapped in time: neither waited for the other to finish.
    one, two = seen["one"], seen["two"]
    assert one[0][0] < two[-1][0]
    assert two[0][0] < one[-1][0]


def test_cancel_of_an_in_flight_ask(daemon: DaemonHandle, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue_text("slow " * 200, chunk_size=5, delay=0.05)
    with RawClient.to(daemon.layout) as client:
        client.hello()
        client.request(2, "ask", {"prompt": "go on and on"})
        assert client.receive()["method"] == "stream"
        client.request(3, "cancel", {"request": 2})
        replies: dict[Any, dict[str, Any]] = {}
        while len(replies) < 2:
            message = client.receive()
            if "method" not in message:
                replies[message["id"]] = message
        assert replies[3]["result"] == {"cancelled": True}
        error = _error(replies[2])
        assert error["code"] == ErrorCode.CANCELLED == 1001
        # Cancelling what is no longer running says so, and is not an error.
        client.request(4, "cancel", {"request": 2})
        assert client.response(4)["result"] == {"cancelled": False}
        client.assert_serves_status()
    _wait_turn_status(daemon, "cancelled", timeout=5)


async def test_cancelling_an_async_request_cancels_the_turn(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("slow " * 200, chunk_size=5, delay=0.05)
    started = anyio.Event()
    async with await AsyncConnection.open(daemon.layout, client="test") as conn:
        with anyio.fail_after(20), anyio.CancelScope() as scope:

            def on_event(event: Event | UnknownEvent) -> None:
                started.set()

            async def ask() -> None:
                await conn.request("ask", AskParams(prompt="long"), AskResult, on_event=on_event)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ask)
                await started.wait()
                scope.cancel()
        # The connection is still usable, and the daemon saw the cancel.
        status = await conn.request("status", Empty(), StatusResult)
        assert status.pid == daemon.pid
    await anyio.to_thread.run_sync(_wait_turn_status, daemon, "cancelled")


def test_a_sync_connection_raises_cancelled_for_a_cancelled_request(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue_text("slow " * 200, chunk_size=5, delay=0.05)
    with daemon.connect() as conn, daemon.connect() as other:
        request_id = conn.send("ask", AskParams(prompt="long"))
        fake_llm.wait_for_requests(1, timeout=20)
        # A cancel names a request on its own connection: another connection cannot reach it.
        assert other.call("cancel", {"request": request_id}, msgspec.Raw) == msgspec.Raw(
            b'{"cancelled":false}'
        )
        conn.send("cancel", {"request": request_id})
        with pytest.raises(Cancelled):
            conn.wait(request_id, AskResult)


# --- Who may connect -------------------------------------------------------------------------


def _widen_for_other_users(daemon: DaemonHandle, sock_path: Path) -> None:
    """Let another user reach the socket, so that only the daemon's own check stands."""
    path = sock_path.parent
    while True:
        path.chmod(path.stat().st_mode | stat.S_IXOTH)
        if path == daemon.home.parent:
            break
        path = path.parent
    sock_path.chmod(0o666)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_a_peer_running_as_another_user_is_refused(daemon: DaemonHandle) -> None:
    endpoint = read_endpoint(daemon.layout)
    sock_path = Path(endpoint.path)
    assert sock_path.is_relative_to(daemon.home.parent)
    _widen_for_other_users(daemon, sock_path)
    nobody = 65534
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, connect twice, report what the daemon said
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody)
            os.setuid(nobody)
            report: dict[str, Any] = {}
            # 1. A raw client: its hello, then everything the daemon sends until it hangs up.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(sock_path))
                sock.sendall(json.dumps(HELLO).encode() + b"\n")
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                report["raw"] = received.decode()
            # 2. What a real client makes of it.
            try:
                with Connection.open(endpoint=endpoint) as conn:
                    conn.call("status", Empty(), StatusResult)
            except Exception as exc:  # reported to the parent, checked there
                report["client"] = [type(exc).__name__, str(exc)]
            os.write(write_end, json.dumps(report).encode())
            code = 0
        except BaseException as exc:  # anything, reported to the parent
            os.write(write_end, f"child failed: {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    report = json.loads(output)
    lines = report["raw"].splitlines()
    assert len(lines) == 1, report  # one error, then the daemon closed the connection
    reply = json.loads(lines[0])
    assert reply["id"] is None
    assert reply["error"]["code"] == ErrorCode.UNAUTHORIZED == -32004
    assert "another user" in reply["error"]["message"]
    assert report["client"] == ["Unauthorized", "peer runs as another user"]
    # The daemon carries on for its own user.
    assert _status(daemon).pid == daemon.pid


# --- Loopback TCP -----------------------------------------------------------------------------


@pytest.fixture
def tcp_daemon(pyra_home: Path, fake_llm: FakeLLMServer) -> Iterator[DaemonHandle]:
    _set_daemon_option(pyra_home, "transport", "tcp")
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()
    handle.configure(fake_llm.base_url)
    try:
        yield handle
    finally:
        handle.stop()


def test_tcp_endpoint_and_token_file(tcp_daemon: DaemonHandle) -> None:
    layout = tcp_daemon.layout
    announced = json.loads(layout.endpoint_file.read_text())
    assert announced["transport"] == "tcp"
    assert announced["host"] == "127.0.0.1"
    assert 0 < announced["port"] < 65536
    assert announced["token_file"] == str(layout.token_file)
    assert stat.S_IMODE(layout.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.endpoint_file.stat().st_mode) == 0o600
    token = layout.token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in layout.endpoint_file.read_text()
    assert _status(tcp_daemon).endpoint == f"tcp:127.0.0.1:{announced['port']}"
    # No Unix socket is bound in TCP mode.
    assert not (layout.run_dir / "pyra.sock").exists()


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_tcp_hello_without_the_right_token_is_refused_and_closed(
    tcp_daemon: DaemonHandle, token: str | None
) -> None:
    params: dict[str, Any] = {"protocol": 1, "client": "test"}
    if token is not None:
        params["token"] = token
    with RawClient.to(tcp_daemon.layout) as client:
        # A request pipelined behind the bad hello must not be served either.
        client.send(
            {**HELLO, "params": params},
            {"jsonrpc": "2.0", "id": 2, "method": "status"},
        )
        error = _error(client.response("hello"))
        assert error["code"] == ErrorCode.UNAUTHORIZED == -32004
        assert "token" in error["message"]
        assert client.at_eof(), "the daemon left an unauthenticated connection open"
    assert _status(tcp_daemon).pid == tcp_daemon.pid


def test_tcp_requests_before_hello_are_refused(tcp_daemon: DaemonHandle) -> None:
    with RawClient.to(tcp_daemon.layout) as client:
        client.request(1, "status")
        assert _error(client.response(1))["code"] == ErrorCode.HANDSHAKE_REQUIRED


def test_tcp_with_the_right_token_works_end_to_end(
    tcp_daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    with RawClient.to(tcp_daemon.layout) as client:
        token = tcp_daemon.layout.token_file.read_text().strip()
        client.send({**HELLO, "params": {"protocol": 1, "client": "test", "token": token}})
        assert client.response("hello")["result"]["pid"] == tcp_daemon.pid
        client.assert_serves_status()
    # Connection reads the token file by itself; so does the CLI.
    with tcp_daemon.connect() as conn:
        assert conn.call("status", Empty(), StatusResult).pid == tcp_daemon.pid
        assert conn.hello is not None
    fake_llm.enqueue_text("over tcp")
    result = tcp_daemon.cli("ask", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "over tcp\n"


async def test_tcp_async_connection_with_a_stale_token_is_unauthorized(
    tcp_daemon: DaemonHandle,
) -> None:
    layout = tcp_daemon.layout
    good = layout.token_file.read_text()
    layout.token_file.write_text("not-the-token\n")
    try:
        with pytest.raises(Unauthorized):
            async with await AsyncConnection.open(layout, client="test"):
                pass
    finally:
        layout.token_file.write_text(good)
    async with await AsyncConnection.open(layout, client="test") as conn:
        status = await conn.request("status", Empty(), StatusResult)
    assert status.pid == tcp_daemon.pid


def test_a_sync_connection_surfaces_the_unauthorized_error(tcp_daemon: DaemonHandle) -> None:
    layout = tcp_daemon.layout
    good = layout.token_file.read_text()
    layout.token_file.write_text("stale\n")
    try:
        with Connection.open(layout) as conn, pytest.raises(Unauthorized):
            conn.call("status", Empty(), StatusResult)
    finally:
        layout.token_file.write_text(good)
