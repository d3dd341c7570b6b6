"""``pyra config show|get|set|edit|reload``: the daemon's configuration file.

The daemon owns ``config.toml``: it validates every change (errors name the key), writes the
file atomically with mode 0600 and applies it at once. ``edit`` works like ``visudo``: it opens
``$VISUAL``/``$EDITOR`` on a private copy and hands the result to the daemon, so an invalid
edit never reaches the file (on a terminal you may edit again; otherwise the copy is kept and
its path printed). Secrets never belong in this file: they go in the vault.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import typer

from pyra_client.cli.common import call, print_json
from pyra_client.errors import ConfigError, PyraError
from pyra_client.protocol import (
    ConfigFileResult,
    ConfigGetResult,
    ConfigKeyParams,
    ConfigSetParams,
    ConfigSetResult,
    ConfigShowResult,
    ConfigWriteParams,
    ConfigWriteResult,
    Empty,
)

__all__ = ["app"]

app = typer.Typer(
    name="config", help="Show, get, set and edit the configuration.", no_args_is_help=True
)

_RESTART = "takes effect after `pyra daemon restart`"


def _format(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


@app.command()
def show(json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The effective configuration, defaults included."""
    result = call("config.show", Empty(), ConfigShowResult)
    if json:
        print_json(result.values)
        return
    typer.echo(f"# {result.path}")
    typer.echo(result.toml.rstrip("\n"))


@app.command()
def get(
    key: str = typer.Argument(..., help="section.key, e.g. llm.model (or a whole section)."),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One value (nothing is printed for an unset one)."""
    result = call("config.get", ConfigKeyParams(key=key), ConfigGetResult)
    if json:
        print_json(result.value)
    elif result.value is not None:
        typer.echo(_format(result.value))


# Unknown options pass through so that a negative number is a value, not an option.
@app.command("set", context_settings={"ignore_unknown_options": True})
def set_value(
    key: str = typer.Argument(..., help="section.key, e.g. llm.timeout."),
    value: str = typer.Argument(..., help='The value; lists as TOML, e.g. \'["a", "b"]\'.'),
) -> None:
    """Change one value; it is validated, saved and applied at once."""
    result = call("config.set", ConfigSetParams(key=key, value=value), ConfigSetResult)
    note = f" ({_RESTART})" if result.restart_needed else ""
    typer.echo(f"{result.key} = {_format(result.value)}{note}")


@app.command()
def reload() -> None:
    """Re-read the file after editing it by hand; an invalid file is reported, not applied."""
    result = call("config.reload", Empty(), ConfigWriteResult)
    note = f"; some changes {_RESTART}" if result.restart_needed else ""
    typer.echo(f"config reloaded from {result.path}{note}")


def _seed(current: ConfigFileResult) -> str:
    """The text to edit: the file, or for a new file every setting, commented out."""
    if current.text:
        return current.text
    shown = call("config.show", Empty(), ConfigShowResult).toml
    commented = "\n".join(f"# {line}" if line else "" for line in shown.splitlines())
    return (
        "# Pyra configuration. Uncomment and change what you need; secrets belong in the\n"
        "# vault (`pyra vault set`), never in this file. The defaults:\n#\n" + commented + "\n"
    )


def _run_editor(path: Path) -> None:
    import shlex

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        # The user's own $VISUAL/$EDITOR, split like a shell would, as git and crontab do.
        argv = [*shlex.split(editor), str(path)]
        status = subprocess.run(argv, check=False).returncode  # noqa: S603
    except OSError as exc:
        raise PyraError(f"cannot run the editor {editor!r}: {exc.strerror}") from exc
    if status != 0:
        raise PyraError(f"the editor exited with status {status}; the config was not changed")


@app.command()
def edit() -> None:
    """Edit the file in $VISUAL/$EDITOR; the daemon checks it before it is saved and applied."""
    import tempfile

    current = call("config.file", Empty(), ConfigFileResult)
    original = _seed(current)
    fd, name = tempfile.mkstemp(prefix="pyra-config-", suffix=".toml")
    copy = Path(name)
    keep = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(original)
        while True:
            _run_editor(copy)
            text = copy.read_text(encoding="utf-8")
            if text == original:
                typer.echo("no changes")
                return
            try:
                result = call(
                    "config.write",
                    ConfigWriteParams(text=text, expected=current.text),
                    ConfigWriteResult,
                )
            except ConfigError as exc:
                typer.echo(f"pyra: {exc}", err=True)
                retry = sys.stdin.isatty() and not exc.data.get("conflict")
                if retry and typer.confirm("Edit again?", default=True):
                    continue
                keep = True
                typer.echo(f"the config was not changed; your edit is kept in {copy}", err=True)
                raise typer.Exit(int(exc.exit_code)) from None
            note = f"; some changes {_RESTART}" if result.restart_needed else ""
            typer.echo(f"config saved to {result.path} and applied{note}")
            return
    finally:
        if not keep:
            copy.unlink(missing_ok=True)
