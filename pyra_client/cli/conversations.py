"""``pyra conversations list|show|delete|export|search``."""

from __future__ import annotations

import datetime as dt
import sys
from enum import StrEnum

import typer

from pyra_client.cli.common import call, print_json
from pyra_client.protocol import (
    ConversationExportParams,
    ConversationExportResult,
    ConversationIdParams,
    ConversationListParams,
    ConversationListResult,
    ConversationSearchParams,
    ConversationSearchResult,
    ConversationShowResult,
    ConversationSummary,
    OkResult,
)

__all__ = ["app"]

app = typer.Typer(
    name="conversations", help="List, show, delete and export conversations.", no_args_is_help=True
)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _usage(summary: ConversationSummary) -> str:
    cost = f", ${summary.cost:.4f}" if summary.cost is not None else ""
    return f"{summary.prompt_tokens}+{summary.completion_tokens} tokens{cost}"


@app.command("list")
def list_(
    limit: int = typer.Option(50, "--limit", "-n", help="How many, most recent first."),
    kind: str | None = typer.Option(None, help="Only this frontend: cli, telegram, ..."),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List conversations, most recent first."""
    result = call(
        "conversations.list", ConversationListParams(limit=limit, kind=kind), ConversationListResult
    )
    if json:
        print_json(result.conversations)
        return
    if not result.conversations:
        typer.echo("no conversations yet")
        return
    for c in result.conversations:
        typer.echo(f"{c.id}  {_when(c.updated_at)}  {c.turns} turn(s)  {c.title}")


@app.command()
def show(
    conversation: str = typer.Argument(..., help="The conversation id."),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a conversation's messages, usage and cost."""
    result = call(
        "conversations.show", ConversationIdParams(id=conversation), ConversationShowResult
    )
    if json:
        print_json(result)
        return
    summary = result.conversation
    typer.echo(f"{summary.id} — {summary.title}")
    typer.echo(f"started {_when(summary.created_at)}, {summary.turns} turn(s), {_usage(summary)}")
    for message in result.messages:
        marker = "" if message.status == "complete" else f" [{message.status}]"
        who = {"user": "you", "assistant": "pyra", "tool": f"tool {message.tool_name}"}.get(
            message.role, message.role
        )
        typer.echo(f"\n{who}{marker}:\n{message.content}")


@app.command()
def delete(
    conversation: str = typer.Argument(..., help="The conversation id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a conversation and all its messages."""
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete {conversation}?", abort=True)
    call("conversations.delete", ConversationIdParams(id=conversation), OkResult)
    typer.echo(f"deleted {conversation}")


class Format(StrEnum):
    markdown = "markdown"
    json = "json"


@app.command()
def export(
    conversation: str = typer.Argument(..., help="The conversation id."),
    format: Format = typer.Option(Format.markdown, "--format", "-f", help="markdown or json."),  # noqa: A002
) -> None:
    """Export a conversation as markdown or JSON to stdout."""
    result = call(
        "conversations.export",
        ConversationExportParams(id=conversation, format=format.value),
        ConversationExportResult,
    )
    sys.stdout.write(result.content)


@app.command()
def search(
    text: list[str] = typer.Argument(..., help="Words to find; a message must contain all."),
    limit: int = typer.Option(20, "--limit", "-n", help="At most this many, newest first."),
    json: bool = typer.Option(False, "--json", help="Print a JSON array of results."),
) -> None:
    """Search past messages of every conversation, newest first."""
    result = call(
        "conversations.search",
        ConversationSearchParams(text=" ".join(text), limit=limit),
        ConversationSearchResult,
    )
    if json:
        print_json(result.hits)
        return
    if not result.hits:
        typer.echo("no matches", err=True)
        raise typer.Exit(1)
    for hit in result.hits:
        typer.echo(f"{hit.conversation}  {_when(hit.created_at)}  turn {hit.turn}  {hit.role}")
        typer.echo(f"    {hit.snippet}")
