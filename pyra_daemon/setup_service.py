"""The ``setup*`` methods behind ``pyra setup``: choose the provider, list models, check.

``setup`` records the provider, model, base URL and key variable in the config (other settings
stay; the base URL and key variable stay too when the provider does not change and none is
given). ``setup.models`` lists the models a provider offers, so the wizard can show them:
``GET {base}/models`` for OpenAI-style APIs (OpenAI, OpenRouter, LM Studio, any compatible
server) and ``GET {base}/api/tags`` for Ollama; other providers answer ``supported=False``.
``setup.check`` asks the configured model for one token through the same path as ``ask``.

This is the only module that imports httpx, lazily, and it translates its errors into
:class:`~pyra_client.errors.ProviderError` subclasses whose messages never hold the key. The
key itself comes from the request (typed in the wizard, not stored yet) or from the vault.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Protocol

import anyio

from pyra_client.errors import (
    NotConfigured,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    UsageError,
    VaultLocked,
)
from pyra_client.protocol import (
    Empty,
    SetupCheckResult,
    SetupModelsParams,
    SetupModelsResult,
    SetupParams,
    SetupResult,
)
from pyra_client.providers import PROVIDERS, Provider
from pyra_daemon.config import Config, LLMConfig
from pyra_daemon.config_service import ConfigService
from pyra_daemon.llm import KeySource
from pyra_daemon.logs import redactor
from pyra_daemon.secret import Secret
from pyra_daemon.server import Call, Method, MethodTable

__all__ = ["Probe", "SetupHost", "SetupService"]

log = logging.getLogger(__name__)

#: Seconds for listing models and for the connectivity check (litellm's import not counted).
TIMEOUT: Final = 15.0
#: Where OpenAI-style providers without a configured base URL list their models.
_MODELS_BASE: Final = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}
#: litellm prefixes of the providers whose models can be listed.
_LISTABLE: Final = frozenset({"openai/", "openrouter/", "lm_studio/", "ollama_chat/"})
#: OpenAI lists every model it has; these are not chat models.
_NOT_CHAT: Final = (
    "embedding",
    "tts",
    "whisper",
    "dall-e",
    "moderation",
    "audio",
    "realtime",
    "transcribe",
    "image",
    "search",
    "davinci",
    "babbage",
)


class Probe(Protocol):
    """The LLM's one-token check (``LiteLLMClient.probe``)."""

    async def probe(self, within: float) -> str: ...


class SetupHost(Protocol):
    config: Config


class SetupService:
    """Serves ``setup``, ``setup.models`` and ``setup.check``; see the module docstring."""

    def __init__(
        self, host: SetupHost, settings: ConfigService, llm: Probe, key_source: KeySource
    ) -> None:
        self._host = host
        self._settings = settings
        self._llm = llm
        self._key_source = key_source

    def methods(self) -> MethodTable:
        return {
            "setup": Method(SetupParams, self.m_setup),
            "setup.models": Method(SetupModelsParams, self.m_models),
            "setup.check": Method(Empty, self.m_check),
        }

    async def m_setup(self, call: Call, params: SetupParams) -> SetupResult:
        provider = _provider(params.provider)
        current = self._host.config.llm
        same = current.provider == provider.id
        base_url = params.base_url or (current.base_url if same else None)
        if provider.needs_base_url and not base_url:
            raise UsageError(f"{provider.name} needs a base URL (--base-url)")
        await self._settings.update(
            {
                "llm.provider": provider.id,
                "llm.model": params.model,
                "llm.base_url": base_url,
                "llm.api_key_env": params.api_key_env or (current.api_key_env if same else None),
            }
        )
        log.info("provider set to %s, model %s", provider.id, params.model)
        return SetupResult(
            provider=provider.id, model=params.model, config_path=str(self._settings.path)
        )

    async def m_models(self, call: Call, params: SetupModelsParams) -> SetupModelsResult:
        provider = _provider(params.provider)
        current = self._host.config.llm
        same = current.provider == provider.id
        base = (
            params.base_url
            or (current.base_url if same else None)
            or provider.default_base_url
            or _MODELS_BASE.get(provider.id)
        )
        if provider.prefix not in _LISTABLE:
            return SetupModelsResult(models=[], supported=False)
        if base is None:
            raise UsageError(f"{provider.name} needs a base URL to list its models")
        if params.api_key:
            redactor.add(params.api_key)
            key: Secret | None = Secret(params.api_key)
        else:
            key = await self._stored_key(provider, current if same else LLMConfig())
        base = base.rstrip("/")
        if provider.id == "ollama":
            url = f"{base}/api/tags"
            data = await _get_json(url, provider, key)
            names = [str(m.get("name")) for m in _list(data, "models", url)]
        else:
            url = f"{base}/models"
            data = await _get_json(url, provider, key)
            names = [str(m.get("id")) for m in _list(data, "data", url)]
            if provider.id == "openai":
                names = [n for n in names if not any(word in n for word in _NOT_CHAT)]
        return SetupModelsResult(models=sorted(set(names)), source=url)

    async def _stored_key(self, provider: Provider, config: LLMConfig) -> Secret | None:
        try:
            return await self._key_source(provider, config)
        except (NotConfigured, VaultLocked):
            return None  # list anyway: many servers list their models without a key

    async def m_check(self, call: Call, params: Empty) -> SetupCheckResult:
        llm = self._host.config.llm
        if llm.provider is None or llm.model is None:
            raise NotConfigured("no model configured yet; run `pyra setup`")
        started = time.monotonic()
        await self._llm.probe(TIMEOUT)
        return SetupCheckResult(
            provider=llm.provider, model=llm.model, seconds=time.monotonic() - started
        )


def _provider(provider_id: str) -> Provider:
    try:
        return PROVIDERS[provider_id]
    except KeyError:
        known = ", ".join(PROVIDERS)
        raise UsageError(f"unknown provider {provider_id!r}; known: {known}") from None


def _list(data: Any, field: str, url: str) -> list[dict[str, Any]]:
    items = data.get(field) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProviderError(f"{url} did not answer with a list of models")
    return [item for item in items if isinstance(item, dict)]


async def _get_json(url: str, provider: Provider, key: Secret | None) -> Any:
    import httpx

    headers = {"Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    data: dict[str, Any] = {"provider": provider.id}
    try:
        with anyio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.get(url, headers=headers)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderTimeout(f"{url} did not answer within {TIMEOUT:g} s", **data) from exc
    except httpx.HTTPError as exc:
        # httpx's messages name the URL, never the headers; scrub anyway.
        detail = redactor.scrub(str(exc)) or type(exc).__name__
        raise ProviderUnavailable(f"cannot reach {url}: {detail}", **data) from exc
    status = response.status_code
    if status in (401, 403):
        raise ProviderAuthError(f"{provider.name} rejected the API key (HTTP {status})", **data)
    if status == 404:
        raise ProviderBadRequest(f"{url} does not exist (HTTP 404): check the base URL", **data)
    if status >= 400:
        raise ProviderUnavailable(f"{url} answered HTTP {status}", status=status, **data)
    try:
        return response.json()
    except ValueError as exc:
        raise ProviderError(f"{url} did not answer with JSON", **data) from exc
