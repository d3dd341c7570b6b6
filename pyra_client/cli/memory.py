"""``pyra memory list|show|search|write|append|edit|rm|reindex``.

Every command goes through the daemon, which owns the memory folder and its index; this module
never opens a memory file. ``edit`` therefore works on a private temporary copy: it fetches the
note (and its hash), runs ``$VISUAL``/``$EDITOR`` on the copy, and sends the result back with
``memory.write`` and ``if_hash``, so the daemon still validates, writes atomically and
re-indexes, and an edit that raced another change (an approved write by the model, another
editor) is refused instead of silently overwriting it; the copy is then kept for the person.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import typer

from pyra_client.cli.common import call, print_json
from pyra_client.errors import Busy, NotFound, PyraError, UsageError
from pyra_client.protocol import (
    MemoryAppendParams,
    MemoryListParams,
    MemoryListResult,
    MemoryNameParams,
    MemoryReindexParams,
    MemoryReindexResult,
    MemorySearchParams,
    MemorySearchResult,
    MemoryShowResult,
    MemoryWriteParams,
    MemoryWriteResult,
    OkResult,
)

__all__ = ["app"]

app = typer.Typer(
    name="memory",
    help="Your notes for Pyra: markdown files in $PYRA_HOME/memory, searchable instantly.",
    no_args_is_help=True,
)

_NAME_HELP = "category/slug, e.g. user/preferences (categories: user, context, knowledge)."


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _text_or_stdin(text: str | None) -> str:
    if text is not None and text != "-":
        return text
    if sys.stdin.isatty():
        typer.echo("Type the text, then Ctrl-D on an empty line:", err=True)
    return sys.stdin.read()


@app.command("list")
def list_(
    category: str | None = typer.Option(
        None, "--category", "-c", help="user, context or knowledge."
    ),
    limit: int = typer.Option(500, "--limit", "-n", help="At most this many (up to 2000)."),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List saved notes: user notes first, then context, then knowledge."""
    result = call("memory.list", MemoryListParams(category=category, limit=limit), MemoryListResult)
    if json:
        print_json(result.entries)
        return
    if not result.entries:
        typer.echo("no saved notes yet (`pyra memory write user/about` to start)")
        return
    width = max(len(e.name) for e in result.entries)
    for entry in result.entries:
        typer.echo(f"{entry.name:<{width}}  {_when(entry.updated_at)}  {entry.title}")
    if result.total > len(result.entries):
        typer.echo(f"… and {result.total - len(result.entries)} more (--limit)", err=True)


@app.command()
def show(
    name: str = typer.Argument(..., help=_NAME_HELP),
    json: bool = typer.Option(False, "--json", help="Print JSON (with the hash and mtime)."),
) -> None:
    """Print a note."""
    result = call("memory.show", MemoryNameParams(name=name), MemoryShowResult)
    if json:
        print_json(result)
        return
    sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")


@app.command()
def search(
    query: list[str] = typer.Argument(..., help="Words to find (all of them, else any)."),
    limit: int = typer.Option(10, "--limit", "-n", help="At most this many results."),
    category: str | None = typer.Option(None, "--category", "-c", help="Only this category."),
    json: bool = typer.Option(False, "--json", help="Print a JSON array of results."),
) -> None:
    """Search your notes, best match first."""
    result = call(
        "memory.search",
        MemorySearchParams(query=" ".join(query), limit=limit, category=category),
        MemorySearchResult,
    )
    if json:
        print_json(result.hits)
        return
    if not result.hits:
        typer.echo("no matches", err=True)
        raise typer.Exit(1)
    for hit in result.hits:
        typer.echo(f"{hit.name}  {hit.title}  (score {hit.score:.2f})")
        typer.echo(f"    {hit.snippet}")


def _saved(result: MemoryWriteResult, verb: str) -> None:
    typer.echo(f"{verb} {result.name} ({result.size} bytes)")


@app.command()
def write(
    name: str = typer.Argument(..., help=_NAME_HELP),
    text: str | None = typer.Argument(None, help="The note; read from stdin when omitted or -."),
) -> None:
    """Create or replace a note."""
    result = call(
        "memory.write", MemoryWriteParams(name=name, text=_text_or_stdin(text)), MemoryWriteResult
    )
    _saved(result, "created" if result.created else "saved")


@app.command()
def append(
    name: str = typer.Argument(..., help=_NAME_HELP),
    text: str | None = typer.Argument(None, help="Text to add; read from stdin when omitted or -."),
) -> None:
    """Add text at the end of a note (on a new line), creating it if needed."""
    result = call(
        "memory.append", MemoryAppendParams(name=name, text=_text_or_stdin(text)), MemoryWriteResult
    )
    _saved(result, "appended to")


@app.command()
def edit(name: str = typer.Argument(..., help=_NAME_HELP)) -> None:
    """Edit a note in $VISUAL or $EDITOR (a new name starts a new note)."""
    try:
        shown = call("memory.show", MemoryNameParams(name=name), MemoryShowResult)
        original, base, canonical = shown.text, shown.hash, shown.name
    except NotFound:
        # "" as if_hash: create it only if nobody else did meanwhile.
        slug = name.rsplit("/", 1)[-1].removesuffix(".md")
        original, base, canonical = f"# {slug}\n\n", "", name
    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    folder = Path(tempfile.mkdtemp(prefix="pyra-memory-"))  # 0700, private to the person
    path = folder / (re.sub(r"[^\w.-]+", "-", canonical.removesuffix(".md")) + ".md")
    path.write_text(original, encoding="utf-8")
    path.chmod(0o600)
    keep = False
    try:
        status = subprocess.run([*editor, str(path)], check=False).returncode  # noqa: S603
        if status != 0:
            keep = True
            raise UsageError(f"the editor exited with status {status}; nothing saved ({path})")
        edited = path.read_text(encoding="utf-8")
        if edited == original:
            typer.echo(f"no changes to {canonical}")
            return
        try:
            result = call(
                "memory.write",
                MemoryWriteParams(name=canonical, text=edited, if_hash=base),
                MemoryWriteResult,
            )
        except Busy as exc:
            keep = True
            raise Busy(
                f"{canonical} changed while you edited it; nothing saved. Your version is in "
                f"{path} (`pyra memory write {canonical} < {path}` to keep it)"
            ) from exc
        except PyraError as exc:
            keep = True
            raise type(exc)(f"{exc.message} (your version is in {path})", **exc.data) from exc
        _saved(result, "created" if result.created else "saved")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


@app.command("rm")
def rm(
    name: str = typer.Argument(..., help=_NAME_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a note (its file and its index entry)."""
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete {name}?", abort=True)
    call("memory.delete", MemoryNameParams(name=name), OkResult)
    typer.echo(f"deleted {name}")


@app.command()
def reindex(
    full: bool = typer.Option(False, "--full", help="Re-read every file, not only changed ones."),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Pick up notes added, edited or deleted outside Pyra (and repair a damaged index)."""
    result = call("memory.reindex", MemoryReindexParams(full=full), MemoryReindexResult)
    if json:
        print_json(result)
        return
    rebuilt = "index rebuilt from the files; " if result.rebuilt else ""
    skipped = f", {result.skipped} skipped (see the daemon log)" if result.skipped else ""
    typer.echo(
        f"{rebuilt}{result.added} added, {result.updated} updated, {result.removed} removed, "
        f"{result.unchanged} unchanged{skipped} in {result.seconds:.2f} s"
    )
