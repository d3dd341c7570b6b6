"""``pyra setup telegram`` and ``pyra setup passphrase``, mounted next to ``pyra setup``.

``pyra setup`` stays what it was (the provider wizard, or ``--provider ...``); :func:`mount`
turns it into a group whose callback runs that same command when no subcommand is given, with
the options read from :func:`pyra_client.cli.setup.setup` itself, so the two never drift.

* ``pyra setup telegram``: a short wizard (how to make a bot with @BotFather, the token into
  the vault as ``plugin:telegram:token``, the allowed user ids, the approver chat, the shared
  passphrase when none is set), or non-interactive with ``--allow``, ``--approver-chat``,
  ``--api-base-url`` (the token then comes from ``pyra vault set plugin:telegram:token``).
  The bot is (re)started when its token or server changed.
* ``pyra setup passphrase``: the passphrase every allowed sender must give before talking to a
  bot (a hidden prompt, twice, or ``--stdin``). The daemon keeps only its bcrypt hash.

Values travel to the daemon only; nothing here reads one back.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from typing import Any

import typer

from pyra_client.cli import setup as provider_setup
from pyra_client.cli.common import call
from pyra_client.cli.vault import prompt_secret, read_stdin_lines
from pyra_client.errors import UsageError
from pyra_client.protocol import (
    Empty,
    GateInfoResult,
    GatePassphraseParams,
    GatePlatformParams,
    GateSenderParams,
    GateSetupParams,
    GateSetupResult,
    OkResult,
    PluginNameParams,
    PluginView,
    VaultListResult,
    VaultSetParams,
)

__all__ = ["mount", "passphrase", "telegram"]

TOKEN_SECRET = "plugin:telegram:token"  # noqa: S105 - a vault name, not a secret
_TOKEN = re.compile(r"\d{5,16}:[A-Za-z0-9_-]{30,}")
_ID = re.compile(r"-?\d{1,20}")

BOTFATHER = """\
Pyra talks to Telegram through a bot that you own:

  1. In Telegram, open a chat with @BotFather and send /newbot.
  2. Choose a name and a username ending in "bot"; BotFather answers with a token
     like 123456789:AA... Keep it secret: whoever has it controls the bot.
  3. Find your numeric user id: send any message to @userinfobot. Pyra allows
     people by this number, never by username (usernames can change hands).
  4. Open a chat with your new bot and press Start, so it may write to you.
"""


def _ids(values: list[str], what: str) -> list[str]:
    for value in values:
        if not _ID.fullmatch(value):
            raise UsageError(f"{what} must be numeric Telegram ids, not {value!r}")
    return values


def _token_stored() -> bool:
    return TOKEN_SECRET in call("vault.list", Empty(), VaultListResult).names


def _ask_token() -> str | None:
    if _token_stored() and not typer.confirm("A bot token is stored. Replace it?", default=False):
        return None
    token = prompt_secret("Bot token from @BotFather").strip()
    if not _TOKEN.fullmatch(token):
        raise UsageError("that does not look like a bot token (digits, a colon, then 30+ chars)")
    return token


def _restart_bot() -> None:
    """Restart the plugin so it reads the new token or server (a live change)."""
    call("plugins.disable", PluginNameParams(name="telegram"), PluginView)
    view = call("plugins.enable", PluginNameParams(name="telegram"), PluginView)
    if view.state == "error":
        typer.echo(f"the telegram plugin failed to start: {view.error}", err=True)
        raise typer.Exit(1)
    typer.echo("The Telegram bot (re)started.")


def _set_passphrase(value: str) -> None:
    call("gate.set_passphrase", GatePassphraseParams(passphrase=value), OkResult)
    typer.echo("The passphrase is set; every allowed sender is asked for it again.")


def _wizard(info: GateInfoResult) -> tuple[GateSetupParams, str | None]:
    typer.echo(BOTFATHER)
    token = _ask_token()
    current = " ".join(info.allowed)
    raw = typer.prompt(
        "Allowed user ids (numbers, separated by spaces)", default=current or None, type=str
    )
    allow = _ids(raw.split(), "allowed users")
    if not allow:
        raise UsageError("allow at least one user id")
    approver = typer.prompt(
        "Chat that receives approval requests of other frontends (your user id for a private "
        "chat; 0 for none)",
        default=info.approver_chat or allow[0],
        type=str,
    ).strip()
    _ids([approver], "the approver chat")
    params = GateSetupParams(
        platform="telegram",
        allow=allow,
        approver_chat=None if approver == "0" else approver,
        clear_approver_chat=approver == "0",
    )
    return params, token


def telegram(
    allow: list[str] | None = typer.Option(
        None, "--allow", help="A numeric Telegram user id that may talk to Pyra (repeatable)."
    ),
    approver_chat: str | None = typer.Option(
        None, "--approver-chat", help="Chat id that receives approval requests of other frontends."
    ),
    api_base_url: str | None = typer.Option(
        None, "--api-base-url", help="Bot API server, for a self-hosted one (default: Telegram's)."
    ),
    unlock: str | None = typer.Option(
        None, "--unlock", help="Lift the lockout of this user id (after wrong passphrases)."
    ),
) -> None:
    """Set up the Telegram bot: token, who may talk, approver chat (a wizard without options)."""
    if unlock is not None:
        _ids([unlock], "--unlock")
        call("gate.unlock", GateSenderParams(platform="telegram", sender=unlock), OkResult)
        typer.echo(f"User {unlock} is unlocked; they are asked for the passphrase again.")
        if allow is None and approver_chat is None and api_base_url is None:
            return
    info = call("gate.info", GatePlatformParams(platform="telegram"), GateInfoResult)
    token: str | None = None
    if allow is None and approver_chat is None and api_base_url is None:
        if not sys.stdin.isatty():
            raise UsageError(
                "no terminal for the wizard: pass --allow ID [--approver-chat ID] and store the "
                f"token with `pyra vault set {TOKEN_SECRET}`"
            )
        params, token = _wizard(info)
    else:
        if api_base_url is not None and not api_base_url.startswith(("http://", "https://")):
            raise UsageError("--api-base-url must start with http:// or https://")
        params = GateSetupParams(
            platform="telegram",
            allow=_ids(allow, "--allow") if allow else None,
            approver_chat=_ids([approver_chat], "--approver-chat")[0] if approver_chat else None,
            api_base_url=api_base_url,
        )
    if token is not None:
        call("vault.set", VaultSetParams(name=TOKEN_SECRET, value=token), OkResult)
        typer.echo(f"The token is stored in the vault as {TOKEN_SECRET}.")
    result = call("gate.setup", params, GateSetupResult)
    done = result.info
    typer.echo(f"Allowed Telegram users: {', '.join(done.allowed) or 'nobody yet'}")
    typer.echo(f"Approver chat: {done.approver_chat or 'none'}")
    typer.echo(f"Saved in {result.config_path}.")
    if token is not None and not done.passphrase_set and sys.stdin.isatty():
        typer.echo("\nEveryone allowed must also give a shared passphrase before talking.")
        _set_passphrase(prompt_secret("New passphrase", confirm=True))
    elif not done.passphrase_set:
        typer.echo("Set the shared passphrase with `pyra setup passphrase` (the bot asks for it).")
    if token is not None or api_base_url is not None:
        if token is None and not _token_stored():
            typer.echo(f"Store the bot token with `pyra vault set {TOKEN_SECRET}`.")
            return
        _restart_bot()


def passphrase(
    stdin: bool = typer.Option(False, "--stdin", help="Read the passphrase from stdin."),
) -> None:
    """Set the passphrase every allowed sender gives before talking to a bot."""
    value = read_stdin_lines(1)[0] if stdin else prompt_secret("New passphrase", confirm=True)
    _set_passphrase(value)


def _provider_callback() -> Any:
    """``pyra setup``'s own command as the group callback, run when no subcommand is given."""
    signature = inspect.signature(provider_setup.setup, eval_str=True)
    hints = typing.get_type_hints(provider_setup.setup)

    def callback(ctx: typer.Context, **options: Any) -> None:
        if ctx.invoked_subcommand is None:
            provider_setup.setup(**options)

    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    callback.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[context, *signature.parameters.values()]
    )
    callback.__annotations__ = {**hints, "ctx": typer.Context}
    callback.__doc__ = provider_setup.setup.__doc__
    return callback


def mount(app: typer.Typer) -> None:
    """Add ``pyra setup`` (provider wizard), ``setup telegram`` and ``setup passphrase``."""
    group = typer.Typer(
        name="setup",
        invoke_without_command=True,
        no_args_is_help=False,
        help=provider_setup.setup.__doc__,
    )
    group.callback(invoke_without_command=True)(_provider_callback())
    group.command("telegram")(telegram)
    group.command("passphrase")(passphrase)
    app.add_typer(group)
