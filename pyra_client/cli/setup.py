"""``pyra setup``: choose the provider and model, non-interactively or with a short wizard.

The daemon validates and writes the config (it owns it), so this command only collects the
answers and sends them with the ``setup`` method.
"""

from __future__ import annotations

import sys

import typer

from pyra_client.cli.common import call
from pyra_client.errors import UsageError
from pyra_client.protocol import SetupParams, SetupResult
from pyra_client.providers import PROVIDERS, Provider

__all__ = ["setup"]


def _wizard() -> SetupParams:
    ids = list(PROVIDERS)
    typer.echo("Which provider should Pyra use?")
    for number, pid in enumerate(ids, start=1):
        provider = PROVIDERS[pid]
        typer.echo(f"  {number}. {provider.name:30} {provider.hint}")
    choice = typer.prompt("Provider", default="1")
    if choice.isdigit() and 0 < int(choice) <= len(ids):
        choice = ids[int(choice) - 1]
    if choice not in PROVIDERS:
        raise UsageError(f"unknown provider {choice!r}")
    provider = PROVIDERS[choice]
    model = typer.prompt("Model", default=provider.default_model)
    base_url = None
    if provider.needs_base_url or provider.default_base_url:
        base_url = typer.prompt(
            "Base URL", default=provider.default_base_url or "http://127.0.0.1:8000/v1"
        )
    key_env = None
    if provider.api_key_env:
        key_env = typer.prompt(
            "Environment variable holding the API key", default=provider.api_key_env
        )
    return SetupParams(provider=provider.id, model=model, base_url=base_url, api_key_env=key_env)


def _check(provider: Provider, base_url: str | None) -> None:
    if provider.needs_base_url and not base_url:
        raise UsageError(f"--base-url is required for {provider.id}")


def setup(
    provider: str | None = typer.Option(
        None, "--provider", help=f"One of: {', '.join(PROVIDERS)}."
    ),
    model: str | None = typer.Option(None, "--model", help="Model name (default: the provider's)."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Server URL for local or compatible servers."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable with the key."
    ),
) -> None:
    """Choose the LLM provider and model (interactive without flags)."""
    if provider is None:
        if not sys.stdin.isatty():
            raise UsageError("no --provider given and no terminal for the wizard")
        params = _wizard()
    else:
        if provider not in PROVIDERS:
            raise UsageError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
        spec = PROVIDERS[provider]
        _check(spec, base_url)
        params = SetupParams(
            provider=provider,
            model=model or spec.default_model,
            base_url=base_url,
            api_key_env=api_key_env,
        )
    result = call("setup", params, SetupResult)
    typer.echo(f"Pyra now uses {result.provider} / {result.model} (saved in {result.config_path}).")
