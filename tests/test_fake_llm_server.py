"""The fake LLM server speaks enough OpenAI for httpx and for litellm, over real loopback HTTP.

The litellm tests are the compatibility proof: they pin which litellm exception each scripted
failure becomes and which retry knobs litellm honours, so a litellm upgrade that changes either
fails here first.
"""

from __future__ import annotations

import os

# Before litellm is imported: no network fetch of the model cost map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import base64
import json
import math
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import litellm
import pytest
from litellm.exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    MidStreamFallbackError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
)

from tests.fakes.llm_server import FakeLLMServer, embed

litellm.suppress_debug_info = True  # it prints "Give Feedback" banners on every error

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def srv() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server
    assert server.errors == []


def chat(srv: FakeLLMServer, **body: Any) -> httpx.Response:
    payload = {"model": "fake-model", "messages": MESSAGES, **body}
    return httpx.post(f"{srv.base_url}/chat/completions", json=payload, timeout=5)


def stream_events(srv: FakeLLMServer, **body: Any) -> list[Any]:
    """The decoded ``data:`` payloads of a streamed reply, ``[DONE]`` kept as a string."""
    payload = {"model": "fake-model", "messages": MESSAGES, "stream": True, **body}
    events: list[Any] = []
    with httpx.stream(
        "POST", f"{srv.base_url}/chat/completions", json=payload, timeout=5
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e["choices"]]


def streamed_text(events: list[Any]) -> str:
    return "".join(d.get("content") or "" for d in deltas(events))


async def litellm_stream(srv: FakeLLMServer, api_key: str = "sk-test", **kwargs: Any) -> list[Any]:
    response = await litellm.acompletion(
        model="openai/fake-model",
        api_base=srv.base_url,
        api_key=api_key,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    return [chunk async for chunk in response]


# Plain HTTP (httpx) -------------------------------------------------------------------------


def test_models_lists_the_configured_models() -> None:
    with FakeLLMServer(models=["a", "b"]) as srv:
        response = httpx.get(f"{srv.base_url}/models")
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["a", "b"]
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"


def test_plain_text_reply_is_a_chat_completion_with_usage(srv: FakeLLMServer) -> None:
    srv.enqueue_text("Hello there", usage=(7, 3))
    body = chat(srv).json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-model"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_streamed_text_arrives_in_chunks_then_finish_then_done(srv: FakeLLMServer) -> None:
    srv.enqueue_text("Hello there, world", chunk_size=5)
    events = stream_events(srv)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert deltas(chunks)[0] == {"role": "assistant", "content": ""}
    assert [d["content"] for d in deltas(chunks)[1:-1]] == ["Hello", " ther", "e, wo", "rld"]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in c for c in chunks)  # not asked for


def test_text_is_streamed_word_by_word_by_default(srv: FakeLLMServer) -> None:
    srv.enqueue_text("one two  three ")
    contents = [d["content"] for d in deltas(stream_events(srv))[1:-1]]
    assert contents == ["one", " two", "  three", " "]


def test_usage_chunk_follows_the_finish_chunk_when_asked(srv: FakeLLMServer) -> None:
    srv.enqueue_text("abcdefgh")
    srv.enqueue_text("x", usage=(100, 1))
    for expected in (None, {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}):
        events = stream_events(srv, stream_options={"include_usage": True})
        usage_chunk = events[-2]
        assert usage_chunk["choices"] == []
        assert events[-3]["choices"][0]["finish_reason"] == "stop"
        if expected is None:  # estimated from lengths
            assert usage_chunk["usage"]["completion_tokens"] == 2
            assert usage_chunk["usage"]["total_tokens"] == (
                usage_chunk["usage"]["prompt_tokens"] + 2
            )
        else:
            assert usage_chunk["usage"] == expected


def test_streamed_tool_calls_carry_ids_names_and_split_arguments(srv: FakeLLMServer) -> None:
    ids = srv.enqueue_tool_calls(
        [("get_time", '{"tz": "Europe/Paris"}'), {"name": "add", "arguments": {"a": 1, "b": 2}}],
        text="Let me check.",
    )
    assert ids == ["call_1", "call_2"]
    events = stream_events(srv)
    assert streamed_text(events) == "Let me check."
    calls: dict[int, dict[str, str]] = {}
    pieces: dict[int, int] = {}
    for delta in deltas(events):
        for call in delta.get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            if "id" in call:
                entry["id"] = call["id"]
                assert call["type"] == "function"
                entry["name"] = call["function"]["name"]
            entry["arguments"] += call["function"]["arguments"]
            pieces[call["index"]] = pieces.get(call["index"], 0) + 1
    assert calls == {
        0: {"id": "call_1", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
        1: {"id": "call_2", "name": "add", "arguments": '{"a": 1, "b": 2}'},
    }
    assert min(pieces.values()) >= 3  # the head plus arguments in several pieces
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_plain_tool_calls_reply(srv: FakeLLMServer) -> None:
    srv.enqueue_tool_calls([{"id": "mine", "name": "noop", "arguments": "{}"}])
    choice = chat(srv).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "mine", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
    ]


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (401, "invalid_request_error", "invalid_api_key"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (418, "invalid_request_error", None),
    ],
)
def test_scripted_error_has_status_and_openai_body(
    srv: FakeLLMServer, status: int, error_type: str, code: str | None
) -> None:
    srv.enqueue_error(status)
    for _ in range(2):
        srv.enqueue_error(status, "boom", retry_after=1.5)
    plain = chat(srv)
    assert plain.status_code == status
    assert "retry-after" not in plain.headers
    error = plain.json()["error"]
    assert (error["type"], error["code"]) == (error_type, code)
    for stream in (False, True):  # streaming requests fail before the stream starts
        response = chat(srv, stream=stream)
        assert response.status_code == status
        assert response.headers["retry-after"] == "1.5"
        assert response.json()["error"]["message"] == "boom"


def test_cut_stream_breaks_off_without_done(srv: FakeLLMServer) -> None:
    srv.enqueue_cut("one two three four", after_chunks=2)
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{srv.base_url}/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        received.extend(line for line in response.iter_lines() if line)
    texts = [json.loads(line.removeprefix("data: ")) for line in received]
    assert streamed_text(texts) == "one two"
    assert "data: [DONE]" not in received


def test_cut_plain_reply_sends_half_a_body(srv: FakeLLMServer) -> None:
    srv.enqueue_cut("hello")
    with pytest.raises(httpx.RemoteProtocolError):
        chat(srv)


def test_hang_outlasts_the_client_timeout(srv: FakeLLMServer) -> None:
    srv.enqueue_hang(30)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.base_url}/chat/completions", json={"messages": []}, timeout=0.3)
    assert time.monotonic() - started < 2


def test_hang_ends_by_closing_the_connection(srv: FakeLLMServer) -> None:
    srv.enqueue_hang(0.2)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(srv)


def test_delay_spaces_the_chunks(srv: FakeLLMServer) -> None:
    srv.enqueue_text("a b c", delay=0.1)
    started = time.monotonic()
    assert streamed_text(stream_events(srv)) == "a b c"
    # role, three words, finish: four gaps
    assert time.monotonic() - started >= 0.4


def test_replies_are_consumed_in_order_then_default_reply(srv: FakeLLMServer) -> None:
    srv.enqueue_text("first")
    srv.enqueue_error(500)
    srv.enqueue_text("third")
    assert srv.pending == 3
    assert chat(srv).json()["choices"][0]["message"]["content"] == "first"
    assert chat(srv).status_code == 500
    assert streamed_text(stream_events(srv)) == "third"
    assert srv.pending == 0
    assert streamed_text(stream_events(srv)) == "ok"
    srv.default_reply = "fine"
    assert chat(srv).json()["choices"][0]["message"]["content"] == "fine"


def test_many_unscripted_turns_reuse_one_connection(srv: FakeLLMServer) -> None:
    with httpx.Client(base_url=srv.base_url) as client:
        started = time.monotonic()
        for _ in range(200):
            request = {"messages": MESSAGES, "stream": True}
            with client.stream("POST", "/chat/completions", json=request) as response:
                assert response.read().endswith(b"data: [DONE]\n\n")
        elapsed = time.monotonic() - started
    assert len({r.client_port for r in srv.requests}) == 1
    assert elapsed < 5


def test_requests_are_recorded_in_order(srv: FakeLLMServer) -> None:
    chat(srv, temperature=0)
    httpx.get(f"{srv.base_url}/models", headers={"X-Trace": "42"})
    first, second = srv.wait_for_requests(2, timeout=1)
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.body["temperature"] == 0
    assert json.loads(first.raw) == first.body
    assert first.headers["content-type"] == "application/json"
    assert (second.method, second.path, second.body, second.raw) == ("GET", "/v1/models", None, b"")
    assert second.headers["x-trace"] == "42"
    assert srv.last_request() == second
    with pytest.raises(TimeoutError):
        srv.wait_for_requests(3, timeout=0.05)
    srv.enqueue_text("never sent")
    srv.reset()
    assert (srv.requests, srv.pending) == ([], 0)
    with pytest.raises(LookupError):
        srv.last_request()


def test_wait_for_requests_wakes_when_a_request_arrives(srv: FakeLLMServer) -> None:
    thread = threading.Timer(0.1, chat, args=(srv,))
    thread.start()
    try:
        assert len(srv.wait_for_requests(1, timeout=5)) == 1
    finally:
        thread.join()


def test_require_key_rejects_a_wrong_or_missing_bearer_without_consuming_replies() -> None:
    with FakeLLMServer(require_key="sk-right") as srv:
        srv.enqueue_text("secret reply")
        url = f"{srv.base_url}/chat/completions"
        missing = httpx.post(url, json={"messages": []})
        wrong = httpx.post(url, json={"messages": []}, headers={"Authorization": "Bearer sk-no"})
        right = httpx.post(url, json={"messages": []}, headers={"Authorization": "Bearer sk-right"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert right.json()["choices"][0]["message"]["content"] == "secret reply"


def test_unknown_route_and_bad_body_are_answered(srv: FakeLLMServer) -> None:
    assert httpx.get(f"{srv.base_url}/nope").status_code == 404
    bad = httpx.post(f"{srv.base_url}/chat/completions", content=b"not json")
    assert bad.status_code == 400
    assert srv.pending == 0


def test_embeddings_are_deterministic_unit_vectors(srv: FakeLLMServer) -> None:
    url = f"{srv.base_url}/embeddings"
    texts = ["the cat sat", "The cat sat!", "stock market report"]
    data = httpx.post(url, json={"model": "e", "input": texts}).json()["data"]
    vectors = [d["embedding"] for d in data]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(len(v) == 8 for v in vectors)
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0)
    assert vectors[0] == vectors[1] == embed("the cat sat", 8)  # words, not punctuation
    assert vectors[0] != vectors[2]

    single = httpx.post(url, json={"input": "cat", "dimensions": 16}).json()["data"]
    assert len(single[0]["embedding"]) == 16

    encoded = httpx.post(url, json={"input": "cat", "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack("<8f", raw)
    assert all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(decoded, embed("cat", 8), strict=True)
    )


def test_shared_words_make_embeddings_closer() -> None:
    def cosine(a: str, b: str) -> float:
        return sum(x * y for x, y in zip(embed(a, 64), embed(b, 64), strict=True))

    assert cosine("rent due friday", "when is the rent due") > cosine(
        "rent due friday", "play some jazz music"
    )


async def test_async_client_streams_and_await_requests(srv: FakeLLMServer) -> None:
    srv.enqueue_text("async works", chunk_size=3)
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        request = {"messages": MESSAGES, "stream": True}
        async with client.stream("POST", "/chat/completions", json=request) as response:
            body = (await response.aread()).decode()
    with anyio.fail_after(2):
        await srv.await_requests(1)
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in body.split("\n\n")
        if line.startswith("data: {")
    ]
    assert streamed_text(chunks) == "async works"


# Through litellm (the compatibility proof) --------------------------------------------------


async def test_litellm_assembles_streamed_text_and_usage(srv: FakeLLMServer) -> None:
    srv.enqueue_text("Hello from the fake", chunk_size=4, usage=(12, 5))
    chunks = await litellm_stream(srv)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake"
    usages = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usages
    assert (usages[-1].prompt_tokens, usages[-1].completion_tokens) == (12, 5)
    assert usages[-1].total_tokens == 17
    sent = srv.last_request()
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["messages"] == MESSAGES
    assert sent.body["stream_options"] == {"include_usage": True}


async def test_litellm_assembles_two_parallel_streamed_tool_calls(srv: FakeLLMServer) -> None:
    srv.enqueue_tool_calls(
        [("get_weather", '{"city": "Lyon", "unit": "C"}'), ("get_time", '{"tz": "UTC"}')]
    )
    chunks = await litellm_stream(srv)
    rebuilt: Any = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    message = rebuilt.choices[0].message
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert calls == [
        ("call_1", "get_weather", '{"city": "Lyon", "unit": "C"}'),
        ("call_2", "get_time", '{"tz": "UTC"}'),
    ]
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert chunks[-1].usage.total_tokens > 0  # litellm gives the usage chunk an empty choice


async def test_litellm_plain_completion(srv: FakeLLMServer) -> None:
    srv.enqueue_tool_calls([("noop", "{}")], text="Calling.")
    response = await litellm.acompletion(
        model="openai/fake-model", api_base=srv.base_url, api_key="sk-test", messages=MESSAGES
    )
    message = response.choices[0].message
    assert message.content == "Calling."
    assert message.tool_calls[0].function.name == "noop"
    assert response.usage.total_tokens > 0


async def test_litellm_reuses_the_connection_across_turns(srv: FakeLLMServer) -> None:
    for _ in range(3):
        await litellm_stream(srv)
    assert len({r.client_port for r in srv.requests}) == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, AuthenticationError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, ServiceUnavailableError),
    ],
)
@pytest.mark.parametrize("no_retry", [{"max_retries": 0}, {"num_retries": 0}])
async def test_litellm_maps_statuses_and_honours_either_retry_knob(
    srv: FakeLLMServer, status: int, expected: type[Exception], no_retry: dict[str, Any]
) -> None:
    for _ in range(3):
        srv.enqueue_error(status, retry_after=0.01)
    with pytest.raises(expected) as caught:
        await litellm_stream(srv, **no_retry)
    assert type(caught.value) is expected
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert len(srv.requests) == 1


async def test_litellm_retries_twice_by_default(srv: FakeLLMServer) -> None:
    for _ in range(3):
        srv.enqueue_error(429, retry_after=0.01)
    with pytest.raises(RateLimitError):
        await litellm_stream(srv)
    assert len(srv.requests) == 3  # the openai SDK's own max_retries=2


async def test_litellm_reads_a_401_without_openais_wording_as_bad_request(
    srv: FakeLLMServer,
) -> None:
    # litellm classifies by body text before status: the adapter must look at status_code.
    srv.enqueue_error(401, "no key for you")
    with pytest.raises(BadRequestError) as caught:
        await litellm_stream(srv, max_retries=0)
    status: int = caught.value.status_code  # typed Literal[400], but the real status is kept
    assert status == 401


async def test_litellm_require_key_gives_authentication_error() -> None:
    with FakeLLMServer(require_key="sk-right") as srv:
        with pytest.raises(AuthenticationError):
            await litellm_stream(srv, max_retries=0)
        assert streamed_text_from(await litellm_stream(srv, api_key="sk-right")) == "ok"


def streamed_text_from(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def read_into(response: Any, received: list[str]) -> None:
    async for chunk in response:
        # A loop, not a comprehension: what arrived before a failure must be kept.
        received.append(chunk.choices[0].delta.content or "")  # noqa: PERF401


async def test_litellm_cut_stream_raises_mid_stream_fallback_error(srv: FakeLLMServer) -> None:
    srv.enqueue_cut("partial answer here", after_chunks=2)
    received: list[str] = []
    response = await litellm.acompletion(
        model="openai/fake-model",
        api_base=srv.base_url,
        api_key="sk-test",
        messages=MESSAGES,
        stream=True,
        max_retries=0,
    )
    with pytest.raises(MidStreamFallbackError) as caught:
        await read_into(response, received)
    assert isinstance(caught.value, ServiceUnavailableError)
    assert isinstance(caught.value.original_exception, APIConnectionError)
    assert "".join(received) == "partial answer"
    assert caught.value.generated_content == "partial answer"
    assert len(srv.requests) == 1


async def test_litellm_cut_plain_reply_raises_internal_server_error(
    srv: FakeLLMServer,
) -> None:
    srv.enqueue_cut("partial")
    with pytest.raises(InternalServerError):
        await litellm.acompletion(
            model="openai/fake-model",
            api_base=srv.base_url,
            api_key="sk-test",
            messages=MESSAGES,
            max_retries=0,
        )
    assert len(srv.requests) == 1


async def test_litellm_hang_raises_timeout(srv: FakeLLMServer) -> None:
    srv.enqueue_hang(30)
    started = time.monotonic()
    with pytest.raises(Timeout):
        await litellm_stream(srv, timeout=0.5, max_retries=0)
    assert time.monotonic() - started < 2
    assert len(srv.requests) == 1


async def test_litellm_embeddings(srv: FakeLLMServer) -> None:
    response = await litellm.aembedding(
        model="openai/fake-embedding",
        api_base=srv.base_url,
        api_key="sk-test",
        input=["the cat sat", "stock market"],
    )
    vectors = [item["embedding"] for item in response.data]
    assert len(vectors) == 2
    assert all(
        math.isclose(a, b, rel_tol=1e-6)
        for a, b in zip(vectors[0], embed("the cat sat", 8), strict=True)
    )


# Stopping ------------------------------------------------------------------------------------


def _in_background(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


@pytest.mark.parametrize("script", ["hang", "slow stream", "idle keep-alive"])
def test_stop_returns_promptly_with_a_request_in_flight(script: str) -> None:
    srv = FakeLLMServer().start()
    client = httpx.Client(base_url=srv.base_url, timeout=30)
    request = {"messages": MESSAGES, "stream": True}
    if script == "hang":
        srv.enqueue_hang(60)
        thread, failures = _in_background(lambda: client.post("/chat/completions", json=request))
    elif script == "slow stream":
        srv.enqueue_text("a b c d e f", delay=60)

        def read_stream() -> None:
            with client.stream("POST", "/chat/completions", json=request) as response:
                response.read()

        thread, failures = _in_background(read_stream)
    else:
        client.get("/models")  # leaves a kept-alive connection open on the server
        thread, failures = _in_background(lambda: None)
    srv.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    thread.join(timeout=2)
    assert not thread.is_alive()
    if script != "idle keep-alive":
        assert len(failures) == 1
        assert isinstance(failures[0], httpx.TransportError)
    client.close()
    srv.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{srv.port}/v1/models", timeout=1)


async def test_stop_during_a_litellm_stream_ends_it_promptly() -> None:
    srv = FakeLLMServer().start()
    srv.enqueue_text("x y z", delay=60)

    async def consume() -> None:
        await litellm_stream(srv, max_retries=0)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def guarded() -> None:
                try:
                    await consume()
                except Exception as exc:
                    outcome.append(exc)

            tg.start_soon(guarded)
            await srv.await_requests(1)
            await anyio.sleep(0.1)  # the role chunk is out, the next one is 60 s away
            started = time.monotonic()
            await anyio.to_thread.run_sync(srv.stop)
            assert time.monotonic() - started < 2
    assert len(outcome) == 1
    assert isinstance(outcome[0], MidStreamFallbackError)
