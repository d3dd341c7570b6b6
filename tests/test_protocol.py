"""The wire protocol without I/O: framing, envelopes, events, error codes and the schema file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from pyra_client import errors
from pyra_client.errors import PyraError, from_wire
from pyra_client.protocol import (
    MAX_FRAME_BYTES,
    AskParams,
    AskResult,
    ErrorCode,
    ErrorObject,
    FrameSplitter,
    FrameTooLarge,
    HelloParams,
    Notification,
    Request,
    Response,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnUsage,
    UnknownEvent,
    decode_event,
    decode_message,
    encode,
)

ROOT = Path(__file__).resolve().parent.parent

# --- FrameSplitter ---------------------------------------------------------------------------


def test_whole_frames_in_one_chunk() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    assert splitter.pending == 0


def test_a_frame_split_across_chunks_is_reassembled() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b'{"a"') == []
    assert splitter.pending == 4
    assert splitter.feed(b":1") == []
    assert splitter.feed(b'}\n{"b":') == [b'{"a":1}']
    assert splitter.feed(b"2}\n") == [b'{"b":2}']
    assert splitter.pending == 0


def test_byte_by_byte_feeding_gives_the_same_frames() -> None:
    stream = b'{"x":"\xc3\xa9t\xc3\xa9"}\n{"y":[1,2]}\n'
    splitter = FrameSplitter()
    frames: list[bytes | FrameTooLarge] = []
    for i in range(len(stream)):
        frames += splitter.feed(stream[i : i + 1])
    assert frames == [b'{"x":"\xc3\xa9t\xc3\xa9"}', b'{"y":[1,2]}']


def test_blank_lines_are_skipped() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"\n\n   \n\t\n{}\n\n") == [b"{}"]
    assert splitter.pending == 0


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    splitter = FrameSplitter(max_bytes=16)
    body = b"x" * 15  # 15 bytes + newline = the limit
    assert splitter.feed(body + b"\n") == [body]


def test_an_oversized_frame_is_reported_once_and_skipped_to_its_newline() -> None:
    splitter = FrameSplitter(max_bytes=16)
    frames: list[bytes | FrameTooLarge] = []
    frames += splitter.feed(b'{"ok":1}\n' + b"y" * 10)
    frames += splitter.feed(b"y" * 30)  # the frame goes over the limit here
    frames += splitter.feed(b"y" * 50)  # ...and keeps going: not reported again
    assert len(splitter._buffer) == 0  # the big frame is counted, not buffered
    frames += splitter.feed(b'yy\n{"after":1}\n{"and":2}\n')
    assert frames == [b'{"ok":1}', FrameTooLarge(size=93), b'{"after":1}', b'{"and":2}']
    assert splitter.pending == 0


def test_an_oversized_frame_never_grows_the_buffer() -> None:
    splitter = FrameSplitter(max_bytes=1024)
    for _ in range(100):
        assert splitter.feed(b"z" * 4096) == []
    # Nothing held in memory: only the number of skipped bytes is kept.
    assert len(splitter._buffer) == 0
    assert splitter.feed(b"\n{}\n") == [FrameTooLarge(size=409_601), b"{}"]


def test_the_default_limit_is_one_mebibyte() -> None:
    splitter = FrameSplitter()
    big = b'"' + b"a" * (MAX_FRAME_BYTES - 3) + b'"'  # newline included: exactly the limit
    assert splitter.feed(big + b"\n") == [big]
    assert splitter.feed(b"a" * MAX_FRAME_BYTES + b"\n") == [
        FrameTooLarge(size=MAX_FRAME_BYTES + 1)
    ]


def test_pending_reports_a_truncated_frame_at_eof() -> None:
    splitter = FrameSplitter()
    splitter.feed(b'{"a":1}\n{"unfinished"')
    assert splitter.pending == len(b'{"unfinished"')


# --- Encoding and decoding -------------------------------------------------------------------


def test_request_round_trip() -> None:
    frame = encode(Request(id=7, method="ask", params=AskParams(prompt="hi")))
    assert frame.endswith(b"\n")
    assert frame.count(b"\n") == 1
    message = decode_message(frame.rstrip(b"\n"))
    assert message.jsonrpc == "2.0"
    assert message.id == 7
    assert message.method == "ask"
    assert message.is_request
    assert not message.is_notification
    # Defaults are omitted on the wire; decoding fills them back in.
    assert json.loads(frame) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "ask",
        "params": {"prompt": "hi"},
    }
    assert msgspec.json.decode(message.params, type=AskParams) == AskParams(prompt="hi")


def test_notification_round_trip() -> None:
    event = TextDelta(request="r-1", text="Hel")
    frame = encode(Notification(method="stream", params=event))
    message = decode_message(frame)
    assert message.is_notification
    assert message.id is None
    assert decode_event(message.params) == event


def test_response_round_trip_with_result() -> None:
    result = AskResult(
        conversation="cli:1", text="Hello", model="m", usage=TurnUsage(prompt_tokens=3), turn=1
    )
    message = decode_message(encode(Response(id=2, result=result)))
    assert message.error is None
    assert msgspec.json.decode(message.result, type=AskResult) == result


def test_response_round_trip_with_error() -> None:
    error = ErrorObject(code=ErrorCode.NOT_FOUND, message="no such thing", data={"id": "x"})
    message = decode_message(encode(Response(id="a", error=error)))
    assert message.id == "a"
    assert message.error == error
    assert not message.result


def test_unicode_survives_and_stays_one_line() -> None:
    prompt = "line one\nline two \u2028 \u00e9\u00e8 \U0001f600 \x00"
    frame = encode(Request(id=1, method="ask", params=AskParams(prompt=prompt)))
    assert frame.count(b"\n") == 1  # newlines inside strings are escaped
    decoded = msgspec.json.decode(decode_message(frame).params, type=AskParams)
    assert decoded.prompt == prompt


@pytest.mark.parametrize(
    "message",
    [
        Request(id=1, method="status"),
        Request(id="x", method="ask", params=AskParams(prompt="p")),
        Notification(method="stream", params=TextDelta(request=1, text="t")),
        Response(id=1, result={"ok": True}),
        Response(id=1, result=None),
        Response(id=None, error=ErrorObject(code=-32700, message="bad")),
        Response(id=3, error=ErrorObject(code=1001, message="cancelled")),
    ],
)
def test_envelopes_carry_jsonrpc_2_and_never_both_result_and_error(
    message: Request | Response | Notification,
) -> None:
    data = json.loads(encode(message))
    assert data["jsonrpc"] == "2.0"
    assert not ("result" in data and "error" in data)
    if isinstance(message, Response):
        assert "id" in data  # JSON-RPC: a response always has an id, null if unknown
        assert ("result" in data) != ("error" in data)


def test_a_null_result_is_still_a_result() -> None:
    data = json.loads(encode(Response(id=1, result=None)))
    assert data == {"jsonrpc": "2.0", "id": 1, "result": None}


def test_decode_rejects_bad_json_and_non_objects() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(b"{not json")
    with pytest.raises(msgspec.ValidationError):
        decode_message(b"[1, 2, 3]")
    with pytest.raises(msgspec.ValidationError):
        decode_message(b'{"jsonrpc": "2.0", "id": {"nested": 1}, "method": "x"}')


def test_unknown_fields_are_ignored_on_decode() -> None:
    frame = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,"client":"cli",'
    frame += b'"from_the_future":[1,2]},"extension":true}'
    message = decode_message(frame)
    hello = msgspec.json.decode(message.params, type=HelloParams)
    assert hello == HelloParams(protocol=1, client="cli")


# --- Stream events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        TextDelta(request=1, text="abc"),
        ToolCallEvent(request="r", call_id="c1", tool="shell", arguments='{"cmd": "ls"}'),
        ToolResultEvent(request=2, call_id="c1", tool="shell", ok=False, preview="denied"),
    ],
)
def test_known_events_round_trip(event: TextDelta | ToolCallEvent | ToolResultEvent) -> None:
    raw = msgspec.Raw(msgspec.json.encode(event))
    assert json.loads(bytes(raw))["type"] in {"text", "tool_call", "tool_result"}
    assert decode_event(raw) == event


def test_unknown_event_types_decode_to_unknown_event() -> None:
    raw = msgspec.Raw(b'{"type":"thinking","request":5,"text":"hmm","depth":3}')
    event = decode_event(raw)
    assert isinstance(event, UnknownEvent)
    assert event.type == "thinking"
    assert event.request == 5
    assert event.raw == {"type": "thinking", "request": 5, "text": "hmm", "depth": 3}


def test_an_event_without_a_type_degrades_too() -> None:
    event = decode_event(msgspec.Raw(b'{"request":"r"}'))
    assert isinstance(event, UnknownEvent)
    assert event.request == "r"


def test_event_params_that_are_not_an_object_are_an_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(msgspec.Raw(b"[1]"))


# --- Error codes -----------------------------------------------------------------------------


def _error_classes() -> list[type[PyraError]]:
    return [
        value
        for name in errors.__all__
        if isinstance(value := getattr(errors, name), type) and issubclass(value, PyraError)
    ]


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_maps_to_a_class_that_carries_it(code: ErrorCode) -> None:
    exc = from_wire(int(code), "something happened", {"detail": 1})
    assert type(exc) is not PyraError, f"{code.name} has no error class"
    assert type(exc).code == code
    assert exc.message == "something happened"
    assert str(exc) == "something happened"
    assert exc.data == {"detail": 1}


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_error_classes_round_trip_through_the_wire(cls: type[PyraError]) -> None:
    sent = cls("boom", key="value")
    # What the server does (pyra_daemon.server._error) and what the client does.
    wire = encode(
        Response(id=1, error=ErrorObject(code=int(sent.code), message=sent.message, data=sent.data))
    )
    received = decode_message(wire).error
    assert received is not None
    back = from_wire(received.code, received.message, received.data)
    assert back.code == sent.code
    assert back.message == "boom"
    assert back.data == {"key": "value"}
    # A class that owns its code comes back as itself; classes sharing a code with another
    # (e.g. UsageError and InvalidParams) come back as the one a peer actually raises.
    assert isinstance(back, PyraError)
    if sum(1 for other in _error_classes() if other.code == cls.code) == 1:
        assert type(back) is cls


def test_shared_codes_come_back_as_the_class_a_daemon_raises() -> None:
    assert type(from_wire(ErrorCode.INTERNAL_ERROR, "x")) is errors.InternalError
    assert type(from_wire(ErrorCode.INVALID_PARAMS, "x")) is errors.InvalidParams
    assert type(from_wire(ErrorCode.INVALID_REQUEST, "x")) is errors.InvalidRequest


def test_an_unknown_error_code_becomes_the_base_error() -> None:
    exc = from_wire(987_654, "from a newer daemon", None)
    assert type(exc) is PyraError
    assert exc.message == "from a newer daemon"
    assert exc.data == {}


def test_error_codes_are_unique() -> None:
    values = [int(code) for code in ErrorCode]
    assert len(values) == len(set(values))


# --- Generated JSON Schema -------------------------------------------------------------------


def _schema_script() -> ModuleType:
    path = ROOT / "scripts" / "gen_protocol_schema.py"
    spec = importlib.util.spec_from_file_location("gen_protocol_schema", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_protocol_schema_is_up_to_date() -> None:
    script = _schema_script()
    schema_file: Path = script.SCHEMA_FILE
    expected = script.render()
    current = schema_file.read_text(encoding="utf-8") if schema_file.exists() else ""
    assert current == expected, (
        f"{schema_file.relative_to(ROOT)} is out of date with pyra_client/protocol.py; "
        f"regenerate it with `{script.REGENERATE}` and commit the result"
    )


def test_the_schema_covers_methods_events_and_error_codes() -> None:
    schema = _schema_script().build()
    definitions = schema["$defs"]
    for name in ("Request", "Response", "Notification", "HelloParams", "AskParams", "AskResult"):
        assert name in definitions
    methods = schema["x-methods"]
    for method in ("hello", "cancel", "ask", "status", "shutdown", "conversations.list"):
        assert method in methods, method
    for method in methods.values():
        for ref in (method["params"]["$ref"], method["result"]["$ref"]):
            assert ref.removeprefix("#/$defs/") in definitions, ref
    tags = set(definitions["StreamEvent"]["discriminator"]["mapping"])
    assert tags == {"text", "tool_call", "tool_result"}
    assert schema["x-error-codes"] == {code.name: int(code) for code in ErrorCode}
    assert definitions["Response"]["properties"]["jsonrpc"]["enum"] == ["2.0"]
