"""``pyra approvals watch|list|answer|rules``: answering tool approvals from any terminal or script.

``watch`` subscribes this connection as an approver and answers, interactively, the requests of
every conversation (a request answered elsewhere meanwhile is withdrawn from the prompt);
``watch --json`` streams requests and resolutions as NDJSON and never prompts. ``list --json``
and ``answer ID allow|always|deny`` are for scripts; ``answer`` subscribes and answers on one
connection, since the daemon accepts answers only from approvers a request was delivered to.
A refused answer (expired, unknown, already answered, replayed) exits non-zero with the reason.
``rules`` lists, adds and revokes the remembered "allow always" rules.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec
import typer

from pyra_client.autostart import connect_or_start
from pyra_client.cli.common import call, print_json
from pyra_client.errors import ApprovalRefused, PyraError
from pyra_client.paths import Layout
from pyra_client.protocol import (
    ApprovalRule,
    ApprovalRuleAddParams,
    ApprovalRuleIdParams,
    ApprovalRuleListResult,
    Empty,
    Interaction,
    InteractionAnswerParams,
    InteractionAnswerResult,
    InteractionListResult,
    InteractionResolved,
    InteractionSubscribeResult,
    OkResult,
)

if TYPE_CHECKING:
    from pyra_client.connection import AsyncConnection

__all__ = ["app", "interaction_json"]

app = typer.Typer(
    name="approvals",
    help="Answer tool approvals from this terminal or a script; manage always-rules.",
    no_args_is_help=True,
)
rules_app = typer.Typer(
    name="rules",
    help="List, add and revoke the remembered 'allow always' rules.",
    invoke_without_command=True,
)
app.add_typer(rules_app)


class Answer(StrEnum):
    allow = "allow"
    always = "always"
    deny = "deny"


def interaction_json(request: Interaction) -> dict[str, Any]:
    """Every field of a request, defaults included (scripts rely on the keys being there)."""
    return {field: getattr(request, field) for field in request.__struct_fields__}


def _write_line(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


@app.command("list")
def list_(json: bool = typer.Option(False, "--json", help="Print a JSON array.")) -> None:
    """List the requests waiting for an answer, oldest first."""
    result = call("interactions.list", Empty(), InteractionListResult)
    if json:
        print_json([interaction_json(r) for r in result.requests])
        return
    if not result.requests:
        typer.echo("no pending approval requests")
        return
    from pyra_client.approve import make_visible

    for request in result.requests:
        preview = make_visible(request.preview)
        flags = f"  [{', '.join(request.flags)}]" if request.flags else ""
        typer.echo(f"{request.id}  {request.tool or request.kind}  {preview}{flags}")


@app.command()
def answer(
    request_id: str = typer.Argument(..., metavar="ID", help="The request id (see `list`)."),
    decision: Answer = typer.Argument(..., help="allow (once), always (remember), or deny."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Answer one pending request; exits non-zero with the reason when it is refused."""
    with connect_or_start(Layout.default(), autostart=False) as conn:
        subscribed = conn.send("interactions.subscribe", Empty())
        answered = conn.send(
            "interactions.answer",
            InteractionAnswerParams(id=request_id, decision=decision.value),
        )
        conn.wait(subscribed, InteractionSubscribeResult)
        try:
            result = conn.wait(answered, InteractionAnswerResult)
        except ApprovalRefused as exc:
            if exc.data.get("reason") != "not asked to this approver":
                raise
            # We subscribed first, so every pending request was ours to answer: this one was
            # already decided before we connected (or it is an inline ask's own request).
            raise ApprovalRefused(
                f"{exc.message}: the request is no longer pending, or only the terminal that "
                "started it may answer it (see `pyra approvals list`)",
                **exc.data,
            ) from None
    if json:
        print_json(result)
    else:
        typer.echo(f"{result.id}: {result.decision}")


@app.command()
def watch(
    json: bool = typer.Option(
        False, "--json", help="Stream requests and resolutions as NDJSON; never prompt."
    ),
) -> None:
    """Subscribe as an approver and answer requests from every conversation (Ctrl-C stops)."""
    import anyio

    try:
        anyio.run(_watch, json, backend="asyncio")
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _watch(json_mode: bool) -> None:
    import anyio

    from pyra_client.connection import AsyncConnection

    layout = Layout.default()
    connect_or_start(layout, autostart=True).close()  # start the daemon if it is not running
    async with await AsyncConnection.open(layout) as conn:
        subscribed = await conn.request(
            "interactions.subscribe", Empty(), InteractionSubscribeResult
        )
        if json_mode:
            _write_line({"type": "subscribed", "approver": subscribed.approver})
            async for method, raw in conn.notifications():
                if method == "interaction.request":
                    request = msgspec.json.decode(raw, type=Interaction)
                    _write_line({"type": "request", **interaction_json(request)})
                elif method == "interaction.resolved":
                    resolved = msgspec.json.decode(raw, type=InteractionResolved)
                    _write_line({"type": "resolved", **msgspec.structs.asdict(resolved)})
            return
        sys.stderr.write(
            f"watching for approval requests as {subscribed.approver} (Ctrl-C to stop)\n"
        )
        watcher = _Watcher(conn, subscribed.approver)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watcher.prompts)
            await watcher.receive()
            tasks.cancel_scope.cancel()


class _Lines:
    """Lines typed on stdin, read without blocking the event loop (so a prompt can be
    withdrawn when its request is answered elsewhere)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    async def read(self) -> str:
        import anyio

        while b"\n" not in self._buffer and not self._eof:
            await anyio.wait_readable(self._fd)
            chunk = os.read(self._fd, 4096)
            self._eof = not chunk
            self._buffer += chunk
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return (line + newline).decode("utf-8", errors="replace")


class _Watcher:
    """Interactive watch: requests are prompted one at a time, in arrival order; a request
    resolved elsewhere (or expired) while it is prompted is withdrawn from the prompt."""

    def __init__(self, conn: AsyncConnection, me: str) -> None:
        import anyio

        self._conn = conn
        self._me = me
        self._queue: list[Interaction] = []
        self._arrived = anyio.Event()
        self._done: set[str] = set()
        self._current: tuple[str, anyio.CancelScope] | None = None
        self._lines = _Lines(sys.stdin.fileno())

    async def receive(self) -> None:
        from pyra_client.approve import describe_resolution

        async for method, raw in self._conn.notifications():
            if method == "interaction.request":
                self._queue.append(msgspec.json.decode(raw, type=Interaction))
                self._arrived.set()
            elif method == "interaction.resolved":
                resolved = msgspec.json.decode(raw, type=InteractionResolved)
                self._done.add(resolved.id)
                if self._current is not None and self._current[0] == resolved.id:
                    self._current[1].cancel()
                sys.stderr.write(describe_resolution(resolved, self._me) + "\n")
                sys.stderr.flush()
        sys.stderr.write("the daemon closed the connection\n")

    async def _ask(self, request: Interaction) -> str:
        from pyra_client.approve import prompt_line, render, take_line

        sys.stderr.write("\n" + render(request) + "\n")
        while True:
            sys.stderr.write(prompt_line(request))
            sys.stderr.flush()
            decision = take_line(await self._lines.read(), request, sys.stderr)
            if decision is not None:
                return decision

    async def prompts(self) -> None:
        import anyio

        while True:
            if not self._queue:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            request = self._queue.pop(0)
            if request.id in self._done:
                continue
            decision = None
            with anyio.CancelScope() as scope:
                self._current = (request.id, scope)
                decision = await self._ask(request)
            self._current = None
            if decision is None:
                sys.stderr.write("\n")
                continue
            try:
                await self._conn.request(
                    "interactions.answer",
                    InteractionAnswerParams(id=request.id, decision=decision),
                    InteractionAnswerResult,
                )
            except ApprovalRefused as exc:
                sys.stderr.write(f"pyra: your answer was refused: {exc}\n")
            except PyraError as exc:
                sys.stderr.write(f"pyra: {exc}\n")


@rules_app.callback()
def rules(
    ctx: typer.Context, json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the always-rules (the default), or `add` / `rm` one."""
    if ctx.invoked_subcommand is None:
        _list_rules(json)


def _list_rules(json: bool) -> None:
    result = call("approvals.rules.list", Empty(), ApprovalRuleListResult)
    if json:
        print_json(result.rules)
        return
    if not result.rules:
        typer.echo("no always-rules: every risky tool call is asked about")
        return
    for rule in result.rules:
        typer.echo(_describe_rule(rule))


def _describe_rule(rule: ApprovalRule) -> str:
    scope = f"arguments matching {rule.pattern}" if rule.pattern else "any arguments"
    return f"{rule.id}  {rule.tool}  ({scope})"


@rules_app.command("list")
def rules_list(json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the always-rules."""
    _list_rules(json)


@rules_app.command("add")
def rules_add(
    tool: str = typer.Argument(..., help="The tool the rule allows."),
    pattern: str | None = typer.Option(
        None,
        "--pattern",
        help='A glob over the arguments as canonical JSON, e.g. \'{"command":"ls *"}\' '
        "(note: * also matches quotes and ;).",
    ),
) -> None:
    """Remember to allow TOOL without asking (in conversations that are not tainted)."""
    rule = call(
        "approvals.rules.add", ApprovalRuleAddParams(tool=tool, pattern=pattern), ApprovalRule
    )
    typer.echo(f"added rule {_describe_rule(rule)}")


@rules_app.command("rm")
def rules_rm(rule_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Revoke a rule: its tool is asked about again."""
    call("approvals.rules.remove", ApprovalRuleIdParams(id=rule_id), OkResult)
    typer.echo(f"revoked rule {rule_id}")
