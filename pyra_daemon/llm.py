"""Talking to language models: the :class:`LLM` protocol and its litellm adapter.

This is the only module that imports litellm, and it does so lazily (``import litellm`` costs
seconds and ~165 MB), so the daemon answers ``status`` before the import and warms it up in a
worker thread afterwards. litellm's exceptions are translated here, once, into
:class:`~pyra_client.errors.ProviderError` subclasses whose messages never contain the key.

The adapter streams one completion: it reports text as it arrives and assembles streamed
tool-call fragments into whole calls. It does not loop over tool rounds, trim history or
persist anything; :mod:`pyra_daemon.engine` does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import anyio
import msgspec

from pyra_client.errors import (
    NotConfigured,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from pyra_client.protocol import TurnUsage
from pyra_client.providers import PROVIDERS, Provider, litellm_model
from pyra_daemon.config import LLMConfig
from pyra_daemon.secret import Secret

__all__ = [
    "LLM",
    "ChatMessage",
    "Completion",
    "KeySource",
    "LiteLLMClient",
    "ToolCallRequest",
    "ToolSpec",
]

log = logging.getLogger(__name__)


class ToolCallRequest(msgspec.Struct):
    id: str
    name: str
    #: The JSON text the model produced (may be invalid: the executor checks).
    arguments: str


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None = None
    tool_calls: list[ToolCallRequest] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            message["name"] = self.name
        return message


class ToolSpec(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class Completion(msgspec.Struct):
    text: str
    tool_calls: list[ToolCallRequest]
    usage: TurnUsage
    model: str
    finish_reason: str | None = None


TextSink = Callable[[str], Awaitable[None]]
#: Returns the provider key at call time (from the vault, or the configured environment
#: variable); ``None`` when the provider needs none.
KeySource = Callable[[Provider, LLMConfig], Awaitable[Secret | None]]


class LLM(Protocol):
    """A chat model that streams.

    ``complete`` streams text to ``on_text`` as it arrives and returns the whole completion,
    tool calls assembled. It raises :class:`ProviderError` subclasses, never a library's own.
    """

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        on_text: TextSink,
    ) -> Completion: ...

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int: ...

    @property
    def ready(self) -> bool: ...


async def _consume(stream: Any, model: str, on_text: TextSink) -> Completion:
    """Read a litellm stream: text to *on_text*, tool-call fragments joined by index."""
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    usage = TurnUsage()
    finish_reason: str | None = None
    async for chunk in stream:
        chunk_usage = getattr(chunk, "usage", None)
        if chunk_usage is not None and getattr(chunk_usage, "prompt_tokens", None):
            usage = TurnUsage(
                prompt_tokens=int(chunk_usage.prompt_tokens or 0),
                completion_tokens=int(chunk_usage.completion_tokens or 0),
            )
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish_reason = choice.finish_reason or finish_reason
        delta = choice.delta
        if delta is None:
            continue
        if delta.content:
            text.append(delta.content)
            await on_text(delta.content)
        for fragment in getattr(delta, "tool_calls", None) or ():
            slot = calls.setdefault(fragment.index or 0, {"id": "", "name": "", "arguments": ""})
            slot["id"] = fragment.id or slot["id"]
            function = fragment.function
            if function is not None:
                slot["name"] += function.name or ""
                slot["arguments"] += function.arguments or ""
    return Completion(
        text="".join(text),
        tool_calls=[
            ToolCallRequest(
                id=slot["id"] or f"call_{index}", name=slot["name"], arguments=slot["arguments"]
            )
            for index, slot in sorted(calls.items())
        ],
        usage=usage,
        model=model,
        finish_reason=finish_reason,
    )


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    module: Any = importlib.import_module("litellm")
    module.telemetry = False
    module.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    return module


_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+\S+|key=[^&\s]+)")


def _scrub(text: str, key: Secret | None) -> str:
    if key is not None and key.reveal():
        text = text.replace(key.reveal(), "***")
    return _SECRETISH.sub("***", text)[:300]


class LiteLLMClient:
    """The :class:`LLM` over litellm; the provider and model come from the live config."""

    def __init__(self, config: Callable[[], LLMConfig], key_source: KeySource) -> None:
        self._config = config
        self._key_source = key_source
        self._module: Any = None

    @property
    def ready(self) -> bool:
        return self._module is not None

    async def warm_up(self) -> None:
        """Import litellm in a worker thread (once); safe to call concurrently."""
        if self._module is None:
            self._module = await anyio.to_thread.run_sync(_litellm)
            log.info("litellm %s loaded", getattr(self._module, "__version__", "?"))

    def _resolve(self) -> tuple[Provider, LLMConfig, str]:
        config = self._config()
        if config.provider is None or config.model is None:
            raise NotConfigured(
                "no model configured yet; run `pyra setup` "
                "(or `pyra setup --provider ID --model NAME`)"
            )
        provider = PROVIDERS[config.provider]
        return provider, config, litellm_model(provider, config.model)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self._module is None:
            # Before litellm is loaded: ~4 characters a token is close enough for trimming.
            return sum(len(m.content or "") + 16 for m in messages) // 4
        try:
            _, _, model = self._resolve()
            return int(
                self._module.token_counter(model=model, messages=[m.to_openai() for m in messages])
            )
        except Exception:  # noqa: BLE001 - an unknown tokenizer must not fail a turn
            return sum(len(m.content or "") + 16 for m in messages) // 4

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        on_text: TextSink,
    ) -> Completion:
        provider, config, model = self._resolve()
        await self.warm_up()
        key = await self._key_source(provider, config)
        kwargs = self._request(provider, config, model, key, messages, timeout=config.timeout)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        if tools:
            kwargs["tools"] = [tool.to_openai() for tool in tools]
            # With tools, litellm (1.106) imports its MCP-gateway module, which needs the
            # optional `mcp` package and fails without it; our tools are never MCP tools.
            kwargs["_skip_mcp_handler"] = True
        if config.temperature is not None:
            kwargs["temperature"] = config.temperature

        with self._translated(provider, key, config.timeout):
            with anyio.fail_after(config.timeout):
                stream = await self._module.acompletion(**kwargs)
            # Later chunks are bounded by the HTTP client's read timeout (same value).
            completion = await _consume(stream, model, on_text)
        completion.usage.cost = self._cost(model, completion.usage)
        return completion

    async def probe(self, within: float) -> str:
        """Ask the configured model for one token, without retries, within *within* seconds.

        Proves that the provider answers, accepts the key and knows the model, for
        ``pyra doctor``; loading litellm is not counted in *within* (so no ``fail_after``
        around the call). Returns the model name;
        raises :class:`ProviderError` subclasses (and :class:`NotConfigured`) like
        :meth:`complete`.
        """
        provider, config, model = self._resolve()
        await self.warm_up()
        key = await self._key_source(provider, config)
        ping = [ChatMessage(role="user", content="ping")]
        kwargs = self._request(provider, config, model, key, ping, timeout=within)
        kwargs.update(max_tokens=1, num_retries=0)
        with self._translated(provider, key, within), anyio.fail_after(within):
            await self._module.acompletion(**kwargs)
        return model

    def _request(
        self,
        provider: Provider,
        config: LLMConfig,
        model: str,
        key: Secret | None,
        messages: Sequence[ChatMessage],
        *,
        timeout: float,
    ) -> dict[str, Any]:
        """The keyword arguments of ``litellm.acompletion`` every call shares."""
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [m.to_openai() for m in messages],
            "timeout": timeout,
            "num_retries": config.retries,
            "max_retries": 0,  # the OpenAI SDK's own retries: litellm's num_retries govern
        }
        base_url = config.base_url or provider.default_base_url
        if base_url:
            kwargs["api_base"] = base_url
        if key is not None:
            kwargs["api_key"] = key.reveal()
        elif provider.prefix == "openai/":
            kwargs["api_key"] = "no-key"  # OpenAI-compatible local servers ignore it
        return kwargs

    @contextlib.contextmanager
    def _translated(self, provider: Provider, key: Secret | None, timeout: float) -> Iterator[None]:
        """Turn whatever litellm raises inside the block into a :class:`ProviderError`."""
        try:
            yield
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{provider.name} did not answer within {timeout:g} s", provider=provider.id
            ) from exc
        except Exception as exc:
            raise self._translate(exc, provider, key) from exc

    def _cost(self, model: str, usage: TurnUsage) -> float | None:
        try:
            prompt, completion = self._module.cost_per_token(
                model=model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
            return float(prompt) + float(completion)
        except Exception:  # noqa: BLE001 - litellm raises for models it has no price for
            return None

    def _translate(self, exc: Exception, provider: Provider, key: Secret | None) -> ProviderError:
        errors = self._module.exceptions
        detail = _scrub(str(getattr(exc, "message", exc)), key)
        name = provider.name
        status = getattr(exc, "status_code", None)
        data: dict[str, Any] = {"provider": provider.id, "status": status}
        # The HTTP status first: litellm classifies some 401s by body text as BadRequestError.
        if status in (401, 403) or isinstance(
            exc, errors.AuthenticationError | errors.PermissionDeniedError
        ):
            return ProviderAuthError(
                f"{name} rejected the API key (HTTP {status}); check it with `pyra setup`", **data
            )
        if status == 429 or isinstance(exc, errors.RateLimitError):
            return ProviderRateLimited(f"{name} is rate limiting requests (HTTP 429)", **data)
        if isinstance(exc, errors.Timeout):
            return ProviderTimeout(f"{name} timed out: {detail}", **data)
        if isinstance(
            exc,
            errors.BadRequestError | errors.NotFoundError | errors.UnprocessableEntityError,
        ):
            return ProviderBadRequest(f"{name} refused the request: {detail}", **data)
        if isinstance(
            exc,
            errors.APIConnectionError
            | errors.ServiceUnavailableError
            | errors.InternalServerError
            | errors.APIError,
        ):
            return ProviderUnavailable(f"{name} is unavailable: {detail}", **data)
        log.warning("unexpected error from litellm: %s", type(exc).__name__)
        return ProviderError(f"{name} failed: {type(exc).__name__}: {detail}", **data)
