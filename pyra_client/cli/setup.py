"""``pyra setup``: choose the provider, model and key, with a short wizard or with flags.

The wizard asks for the provider, the base URL of a local or compatible server, the API key
(hidden; stored in the vault as ``provider:<id>``) and the model, listed from the provider
where it can be (the daemon fetches the list: the client stays light), then checks the
connection with a one-token request. The flags do the same without questions; the key then
comes from stdin (``--api-key-stdin``), never from the command line.

Running it again is safe: the daemon keeps every other setting, and the stored key is replaced
only when a new one is given. The daemon validates and writes the config; this command only
collects the answers.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from pyra_client.cli.common import call
from pyra_client.cli.vault import prompt_secret, read_stdin_secret
from pyra_client.errors import PyraError, UsageError, VaultLocked
from pyra_client.protocol import (
    ConfigShowResult,
    Empty,
    OkResult,
    SetupCheckResult,
    SetupModelsParams,
    SetupModelsResult,
    SetupParams,
    SetupResult,
    VaultListResult,
    VaultSetParams,
    VaultStatusResult,
    VaultUnlockParams,
)
from pyra_client.providers import PROVIDERS, Provider

__all__ = ["setup"]

#: Models listed by number in the wizard; any other name can still be typed.
_SHOWN_MODELS = 30


def _secret_name(provider: Provider) -> str:
    return f"provider:{provider.id}"


def _choose_provider(current: dict[str, Any]) -> Provider:
    ids = list(PROVIDERS)
    typer.echo("Which provider should Pyra use?")
    for number, pid in enumerate(ids, start=1):
        provider = PROVIDERS[pid]
        typer.echo(f"  {number}. {provider.name:30} {provider.hint}")
    default = str(ids.index(current["provider"]) + 1) if current.get("provider") in ids else "1"
    choice = typer.prompt("Provider", default=default).strip()
    if choice.isdigit() and 0 < int(choice) <= len(ids):
        choice = ids[int(choice) - 1]
    if choice not in PROVIDERS:
        raise UsageError(f"unknown provider {choice!r}")
    return PROVIDERS[choice]


def _stored_names() -> list[str]:
    """The vault's names, unlocking it first if it is locked (the wizard is interactive)."""
    try:
        return call("vault.list", Empty(), VaultListResult).names
    except VaultLocked:
        typer.echo("The vault is locked.")
        passphrase = prompt_secret("Vault passphrase")
        call("vault.unlock", VaultUnlockParams(passphrase=passphrase), VaultStatusResult)
        return call("vault.list", Empty(), VaultListResult).names


def _ask_key(provider: Provider) -> str | None:
    """A new key typed without echo, or None to keep the stored one (or go without)."""
    if not provider.needs_key and provider.api_key_env is None:
        return None  # a local server that takes no key
    stored = _secret_name(provider) in _stored_names()
    if stored:
        hint = "Enter keeps the stored key"
    elif provider.needs_key:
        hint = f"Enter to use ${provider.api_key_env} from the daemon's environment instead"
    else:
        hint = "Enter if the server needs none"
    import getpass

    key = getpass.getpass(f"API key for {provider.name} (hidden; {hint}): ").strip()
    return key or None


def _choose_model(
    provider: Provider, base_url: str | None, key: str | None, current: dict[str, Any]
) -> str:
    default = current.get("model") if current.get("provider") == provider.id else None
    default = default or provider.default_model
    models: list[str] = []
    try:
        listed = call(
            "setup.models",
            SetupModelsParams(provider=provider.id, base_url=base_url, api_key=key),
            SetupModelsResult,
        )
        models = listed.models
    except PyraError as exc:
        typer.echo(f"(could not list the models: {exc})")
    if models:
        if default not in models:
            default = models[0]
        typer.echo(f"Models offered by {provider.name}:")
        for number, name in enumerate(models[:_SHOWN_MODELS], start=1):
            typer.echo(f"  {number:2}. {name}")
        if len(models) > _SHOWN_MODELS:
            typer.echo(f"  ... and {len(models) - _SHOWN_MODELS} more (type any name)")
    choice = str(typer.prompt("Model (number or name)", default=default)).strip()
    if choice.isdigit() and 0 < int(choice) <= min(len(models), _SHOWN_MODELS):
        return models[int(choice) - 1]
    return choice


def _wizard() -> tuple[SetupParams, str | None]:
    current = call("config.show", Empty(), ConfigShowResult).values.get("llm", {})
    provider = _choose_provider(current)
    base_url = None
    if provider.needs_base_url or provider.default_base_url:
        same = current.get("provider") == provider.id
        base_url = typer.prompt(
            "Base URL of the server",
            default=(current.get("base_url") if same else None)
            or provider.default_base_url
            or "http://127.0.0.1:8000/v1",
        ).strip()
    key = _ask_key(provider)
    model = _choose_model(provider, base_url, key, current)
    return SetupParams(provider=provider.id, model=model, base_url=base_url), key


def _connection_check() -> None:
    typer.echo("Checking the connection...")
    try:
        result = call("setup.check", Empty(), SetupCheckResult)
    except PyraError as exc:
        typer.echo(f"✗ connection check failed: {exc}", err=True)
        typer.echo(
            "  The settings are saved; fix the problem and run `pyra setup` again "
            "(`pyra doctor` looks at everything).",
            err=True,
        )
        raise typer.Exit(int(exc.exit_code)) from None
    typer.echo(f"✓ {result.model} answered in {result.seconds:.1f} s: Pyra is ready.")


def setup(
    *,
    provider: str | None = typer.Option(
        None, "--provider", help=f"One of: {', '.join(PROVIDERS)}."
    ),
    model: str | None = typer.Option(None, "--model", help="Model name (default: the provider's)."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Server URL for local or compatible servers."
    ),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Environment variable of the daemon with the key (used when the vault has none).",
    ),
    api_key_stdin: bool = typer.Option(
        False, "--api-key-stdin", help="Read the API key from stdin and store it in the vault."
    ),
    check: bool | None = typer.Option(
        None,
        "--check/--no-check",
        help="Check the connection with a one-token request (default: in the wizard only).",
    ),
) -> None:
    """Choose the LLM provider, model and API key (a wizard without --provider)."""
    if provider is None:
        if api_key_stdin:
            raise UsageError("--api-key-stdin needs --provider (the wizard asks for the key)")
        if not sys.stdin.isatty():
            raise UsageError("no --provider given and no terminal for the wizard")
        params, key = _wizard()
        check = True if check is None else check
    else:
        if provider not in PROVIDERS:
            raise UsageError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
        key = read_stdin_secret() if api_key_stdin else None
        params = SetupParams(
            provider=provider,
            model=model or PROVIDERS[provider].default_model,
            base_url=base_url,
            api_key_env=api_key_env,
        )
    result = call("setup", params, SetupResult)
    typer.echo(f"Pyra now uses {result.provider} / {result.model} (saved in {result.config_path}).")
    if key is not None:
        name = _secret_name(PROVIDERS[result.provider])
        call("vault.set", VaultSetParams(name=name, value=key), OkResult)
        typer.echo(f"The API key is stored in the vault as {name}.")
    if check:
        _connection_check()
