"""The LLM providers Pyra knows: pure data, shared by the setup wizard and the daemon.

A provider maps to a litellm model prefix, the environment variable its key is usually in, a
default model and, for local servers, a default base URL. Adding a provider is adding an entry;
nothing here performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROVIDERS", "Provider", "litellm_model"]


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    #: litellm's routing prefix (``openai/``, ``anthropic/``...).
    prefix: str
    default_model: str
    api_key_env: str | None
    #: Where the server listens when it is local or self-hosted.
    default_base_url: str | None = None
    needs_key: bool = True
    #: The base URL is mandatory (any OpenAI-compatible server).
    needs_base_url: bool = False
    hint: str = ""


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider(
            "openai",
            "OpenAI",
            "openai/",
            "gpt-4.1-mini",
            "OPENAI_API_KEY",
            hint="keys at platform.openai.com/api-keys",
        ),
        Provider(
            "anthropic",
            "Anthropic",
            "anthropic/",
            "claude-sonnet-4-5",
            "ANTHROPIC_API_KEY",
            hint="keys at console.anthropic.com",
        ),
        Provider(
            "gemini",
            "Google Gemini",
            "gemini/",
            "gemini-2.5-flash",
            "GEMINI_API_KEY",
            hint="keys at aistudio.google.com",
        ),
        Provider(
            "openrouter",
            "OpenRouter",
            "openrouter/",
            "anthropic/claude-sonnet-4.5",
            "OPENROUTER_API_KEY",
            hint="one key for many models, at openrouter.ai/keys",
        ),
        Provider(
            "ollama",
            "Ollama (local)",
            "ollama_chat/",
            "llama3.2",
            None,
            default_base_url="http://127.0.0.1:11434",
            needs_key=False,
            hint="runs models on this machine; `ollama pull llama3.2` first",
        ),
        Provider(
            "lmstudio",
            "LM Studio (local)",
            "lm_studio/",
            "local-model",
            None,
            default_base_url="http://127.0.0.1:1234/v1",
            needs_key=False,
            hint="start LM Studio's local server first",
        ),
        Provider(
            "openai-compatible",
            "Any OpenAI-compatible server",
            "openai/",
            "default",
            "OPENAI_COMPATIBLE_API_KEY",
            needs_key=False,
            needs_base_url=True,
            hint="vLLM, llama.cpp server, LocalAI, a gateway...: give its /v1 base URL",
        ),
    )
}


def litellm_model(provider: Provider, model: str) -> str:
    """The model name litellm routes: ``<prefix><model>`` unless already prefixed."""
    return model if model.startswith(provider.prefix) else provider.prefix + model
