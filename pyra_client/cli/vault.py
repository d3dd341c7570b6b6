"""``pyra vault status|unlock|lock|set|list|rm|passwd|rotate|restore-backup``.

Values and passphrases come from a hidden prompt on the terminal or from stdin (``--stdin``),
never from the command line, where they would land in the shell history and in ``ps``. They go
to the daemon, which alone opens the vault; nothing here can read a value back out.
"""

from __future__ import annotations

import re
import sys

import msgspec
import typer

from pyra_client.cli.common import call, print_json
from pyra_client.errors import UsageError
from pyra_client.protocol import (
    SECRET_NAME_PATTERN,
    Empty,
    OkResult,
    VaultListResult,
    VaultNameParams,
    VaultPasswdParams,
    VaultRotateParams,
    VaultSetParams,
    VaultStatusResult,
    VaultUnlockParams,
)

__all__ = ["app", "check_name", "prompt_secret", "read_stdin_lines", "read_stdin_secret"]

app = typer.Typer(
    name="vault",
    help="The encrypted vault: API keys and plugin credentials (values go in, never out).",
    no_args_is_help=True,
)

_NAME_HELP = "provider:<id> (e.g. provider:openai) or plugin:<name>:<key>"


def check_name(name: str) -> str:
    """Refuse a malformed secret name before anyone types a value for it."""
    if re.fullmatch(SECRET_NAME_PATTERN, name) is None:
        # The name is not echoed: a value pasted where the name belongs is a secret.
        raise UsageError(f"invalid secret name; use {_NAME_HELP}")
    return name


def _terminal() -> bool:
    return sys.stdin.isatty()


def prompt_secret(prompt: str, *, confirm: bool = False) -> str:
    """Ask on the terminal without echo (twice with ``confirm``); empty input is refused."""
    if not _terminal():
        raise UsageError("no terminal to ask on; pipe the value in with --stdin")
    import getpass  # only here: it costs ~10 ms at start-up

    value = getpass.getpass(f"{prompt}: ")
    if not value:
        raise UsageError("nothing was entered")
    if confirm and getpass.getpass("Again, to confirm: ") != value:
        raise UsageError("the two entries differ; nothing was changed")
    return value


def read_stdin_lines(count: int) -> list[str]:
    """``count`` lines from stdin, line endings removed; missing or empty lines are refused."""
    lines = sys.stdin.read().splitlines()
    if len(lines) < count or not all(lines[:count]):
        wanted = "one line" if count == 1 else f"{count} lines"
        raise UsageError(f"expected {wanted} on stdin, none of them empty")
    return lines[:count]


def read_stdin_secret() -> str:
    """A value from stdin: all of it, without the trailing line break."""
    value = sys.stdin.read().rstrip("\r\n")
    if not value:
        raise UsageError("stdin was empty; nothing was stored")
    return value


def _status() -> VaultStatusResult:
    return call("vault.status", Empty(), VaultStatusResult)


def _describe(status: VaultStatusResult) -> str:
    if status.damaged:
        return f"DAMAGED: {status.problem}"
    if not status.initialized:
        return "not created yet"
    if status.mode == "passphrase":
        mode = "passphrase mode"
    else:
        mode = "identity-file mode: unlocks by itself"
    if status.locked:
        return f"locked ({mode})"
    plural = "" if status.count == 1 else "s"
    return f"unlocked ({mode}), {status.count} secret{plural}"


def _echo_status(status: VaultStatusResult) -> None:
    typer.echo(f"vault      {_describe(status)}")
    typer.echo(f"location   {status.path}")
    if status.hardened is not None:
        state = "core dumps and ptrace disabled" if status.hardened else "NOT hardened"
        typer.echo(f"daemon     {state}")
    if status.hint:
        typer.echo(f"hint       {status.hint}")


@app.command()
def status(json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Whether the vault exists, its mode, whether it is locked, how many secrets it holds."""
    result = _status()
    if json:
        print_json(msgspec.structs.asdict(result))  # every field, defaults included
    else:
        _echo_status(result)
    if result.damaged:
        raise typer.Exit(1)


@app.command()
def unlock(
    stdin: bool = typer.Option(False, "--stdin", help="Read the passphrase from stdin."),
) -> None:
    """Give the daemon the vault's passphrase (passphrase mode)."""
    current = _status()
    if current.initialized and not current.damaged and current.mode == "identity":
        typer.echo("the vault has no passphrase (identity file mode): it unlocks by itself")
        return
    passphrase = read_stdin_lines(1)[0] if stdin else prompt_secret("Vault passphrase")
    result = call("vault.unlock", VaultUnlockParams(passphrase=passphrase), VaultStatusResult)
    typer.echo(f"vault {_describe(result)}")


@app.command()
def lock() -> None:
    """Drop the vault's keys from the daemon's memory."""
    result = call("vault.lock", Empty(), VaultStatusResult)
    if result.mode == "identity":
        typer.echo("vault locked; in identity file mode it unlocks again when a key is needed")
    else:
        typer.echo("vault locked; `pyra vault unlock` opens it again")


@app.command("set")
def set_secret(
    name: str = typer.Argument(..., help=_NAME_HELP),
    value: str | None = typer.Argument(None, hidden=True),
    stdin: bool = typer.Option(False, "--stdin", help="Read the value from stdin."),
) -> None:
    """Store a secret; the value is asked for without echo, or read from stdin."""
    if value is not None:
        raise UsageError(
            "secret values are never taken from the command line (shell history, ps); "
            f"run `pyra vault set {check_name(name)}` and type it, or pipe it with --stdin "
            "(a real key typed here is in your shell history now: consider replacing it)"
        )
    check_name(name)
    secret = read_stdin_secret() if stdin else prompt_secret(f"Value for {name}", confirm=True)
    call("vault.set", VaultSetParams(name=name, value=secret), OkResult)
    typer.echo(f"stored {name}")


@app.command("list")
def list_names(json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The names of the stored secrets (never their values)."""
    result = call("vault.list", Empty(), VaultListResult)
    if json:
        print_json(result.names)
        return
    for name in result.names:
        typer.echo(name)


@app.command("rm")
def remove(name: str = typer.Argument(..., help=_NAME_HELP)) -> None:
    """Delete a secret (the previous vault version stays as the backup)."""
    call("vault.delete", VaultNameParams(name=check_name(name)), OkResult)
    typer.echo(f"removed {name}")


@app.command()
def passwd(
    remove_passphrase: bool = typer.Option(
        False, "--remove", help="Go back to an identity file readable by you only (no passphrase)."
    ),
    stdin: bool = typer.Option(
        False, "--stdin", help="Read the current passphrase (if any), then the new one, from stdin."
    ),
) -> None:
    """Set or change the vault's passphrase, or remove it with --remove."""
    current = _status()
    has_passphrase = current.mode == "passphrase"
    if not has_passphrase and remove_passphrase:
        raise UsageError("the vault has no passphrase to remove")
    wanted = int(has_passphrase) + int(not remove_passphrase)
    if stdin:
        answers = read_stdin_lines(wanted)
    else:
        answers = []
        if has_passphrase:
            answers.append(prompt_secret("Current passphrase"))
        if not remove_passphrase:
            answers.append(prompt_secret("New passphrase", confirm=True))
    old = answers[0] if has_passphrase else None
    new = None if remove_passphrase else answers[-1]
    result = call("vault.passwd", VaultPasswdParams(old=old, new=new), VaultStatusResult)
    if new is None:
        typer.echo("passphrase removed: the vault unlocks from its identity file again")
    elif has_passphrase:
        typer.echo("passphrase changed")
    else:
        typer.echo(
            "passphrase set: the daemon now starts locked (`pyra vault unlock`). Copies of the "
            "old identity file (backups) still decrypt old copies of the vault: run "
            "`pyra vault rotate` to retire it."
        )
    if result.locked:
        typer.echo("the vault is locked")


@app.command()
def rotate(
    stdin: bool = typer.Option(False, "--stdin", help="Read the passphrase from stdin."),
) -> None:
    """Re-encrypt every secret to a new identity; the old identity stops working."""
    current = _status()
    passphrase = None
    if current.mode == "passphrase":
        passphrase = read_stdin_lines(1)[0] if stdin else prompt_secret("Vault passphrase")
    result = call("vault.rotate", VaultRotateParams(passphrase=passphrase), VaultStatusResult)
    typer.echo(f"vault identity rotated; {_describe(result)}")


@app.command("restore-backup")
def restore_backup() -> None:
    """Replace a damaged secrets file with the previous version (the damaged one is kept)."""
    result = call("vault.restore_backup", Empty(), VaultStatusResult)
    typer.echo(f"restored the previous version; vault {_describe(result)}")
