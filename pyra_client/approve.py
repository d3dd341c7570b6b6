"""Showing an approval request to a person on a terminal, and reading the decision.

Shared by ``pyra ask`` (inline approvals for its own turn) and ``pyra approvals watch``. The
person must see exactly what would run: the tool and the *full* arguments, pretty-printed when
they are JSON, with every control, bidirectional and invisible character turned into a visible
escape (``pyra_client.visible.make_visible``, the one rule shared with the daemon's previews
and the bots).
Arguments longer than a screen are cut in the prompt with an offer to read them in a pager.

What this module deliberately does not do: talk to the daemon (callers send
``interactions.answer``), or decide anything by itself: end of input means "deny".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Protocol

import msgspec

from pyra_client.errors import ApprovalRefused
from pyra_client.protocol import (
    PERMISSION_DECISIONS,
    Event,
    Interaction,
    InteractionAnswerParams,
    InteractionAnswerResult,
    InteractionResolved,
    UnknownEvent,
)
from pyra_client.visible import make_visible

if TYPE_CHECKING:
    from pyra_client.connection import Connection

__all__ = [
    "ANSWER_KEYS",
    "MAX_SHOWN_LINES",
    "InlineApprover",
    "TurnView",
    "ask_person",
    "describe_resolution",
    "make_visible",
    "parse_answer",
    "prompt_line",
    "render",
    "render_arguments",
    "take_line",
]

#: What the person may type, and the decision each stands for.
ANSWER_KEYS = {
    "a": "allow",
    "allow": "allow",
    "y": "allow",
    "yes": "allow",
    "w": "always",
    "always": "always",
    "d": "deny",
    "deny": "deny",
    "n": "deny",
    "no": "deny",
}
#: Lines of arguments shown in the prompt itself; the rest through ``[v]iew``.
MAX_SHOWN_LINES = 40


def render_arguments(arguments: str) -> str:
    """The full arguments, pretty-printed JSON when they parse, made visible (multi-line)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return make_visible(arguments, multiline=True)
    # JSON escapes C0 controls inside strings already; bidi and invisible characters are kept
    # by ensure_ascii=False and then shown as <U+XXXX> escapes.
    return make_visible(json.dumps(value, indent=2, ensure_ascii=False), multiline=True)


def _when(expires_at: float, now: float) -> str:
    left = max(0, round(expires_at - now))
    clock = dt.datetime.fromtimestamp(expires_at).astimezone().strftime("%H:%M:%S")
    return f"expires in {left}s (at {clock})"


def render(request: Interaction, *, now: float | None = None, full: bool = False) -> str:
    """The text of a request as a person reads it (several lines, no trailing newline)."""
    now = time.time() if now is None else now
    head = f"Approval needed: {make_visible(request.tool or request.kind)}"
    lines = [head, "─" * min(len(head), 72)]
    if request.conversation:
        lines.append(f"conversation: {make_visible(request.conversation)}")
    if request.origin:
        lines.append(f"started by:   {make_visible(request.origin)}")
    if request.expires_at:
        lines.append(f"request:      {make_visible(request.id)} · {_when(request.expires_at, now)}")
    if request.flags:
        lines.append(f"⚠ flags:      {', '.join(make_visible(f) for f in request.flags)}")
        if any(f == "tainted" for f in request.flags):
            lines.append(
                "  this conversation holds untrusted content (a web page, command output): "
                "check the arguments closely"
            )
        if any(f.startswith("injection") for f in request.flags):
            lines.append("  the arguments look like a prompt-injection attempt")
    if request.kind == "permission":
        body = render_arguments(request.arguments) if request.arguments else "(no arguments)"
        shown = body.splitlines() or [""]
        lines.append("arguments:")
        cut = not full and len(shown) > MAX_SHOWN_LINES
        lines.extend(f"  {line}" for line in (shown[:MAX_SHOWN_LINES] if cut else shown))
        if cut:
            lines.append(f"  … {len(shown) - MAX_SHOWN_LINES} more lines: [v]iew shows them all")
    else:
        lines.append(make_visible(request.prompt, multiline=True))
        if request.options:
            lines.append("options: " + ", ".join(request.options))
    return "\n".join(lines)


def parse_answer(text: str, options: Iterable[str]) -> str | None:
    """The decision typed in ``text`` if it is among ``options`` (``None`` otherwise)."""
    decision = ANSWER_KEYS.get(text.strip().lower())
    return decision if decision in set(options) else None


def _choices(options: Iterable[str]) -> str:
    labels = {"allow": "[a]llow once", "always": "al[w]ays allow", "deny": "[d]eny"}
    return " / ".join(labels[o] for o in options if o in labels)


def _page(text: str, out: IO[str]) -> None:
    pager = os.environ.get("PAGER") or ("less" if shutil.which("less") else "")
    if not pager:
        out.write(text + "\n")
        return
    command = [*pager.split(), *(["-R"] if pager == "less" else [])]
    try:
        subprocess.run(command, input=text, text=True, check=False)  # noqa: S603 - the user's pager
    except OSError:
        out.write(text + "\n")


def prompt_line(request: Interaction) -> str:
    """The question under a rendered request, e.g. ``[a]llow once / al[w]ays allow / ...? ``."""
    view = " / [v]iew" if request.arguments else ""
    return f"{_choices(request.options or PERMISSION_DECISIONS)}{view}? "


def take_line(line: str, request: Interaction, out: IO[str]) -> str | None:
    """Handle one typed line: the decision, or ``None`` to ask again (after showing the full
    arguments for ``v``, or a hint for anything else). End of input ("") denies."""
    if not line:
        out.write("\n(no answer: denied)\n")
        return "deny"
    if line.strip().lower() in ("v", "view"):
        _page(render(request, full=True), out)
        return None
    options = request.options or PERMISSION_DECISIONS
    decision = parse_answer(line, options)
    if decision is None:
        out.write(f"please answer with one of: {_choices(options)}\n")
    return decision


def ask_person(request: Interaction, *, out: IO[str], read_line: Callable[[], str]) -> str:
    """Show ``request`` and read the decision: ``allow``, ``always`` or ``deny``.

    ``read_line`` returns one line typed by the person ("" at end of input, which denies).
    """
    out.write("\n" + render(request) + "\n")
    while True:
        out.write(prompt_line(request))
        out.flush()
        decision = take_line(read_line(), request, out)
        if decision is not None:
            return decision


def describe_resolution(resolved: InteractionResolved, me: str | None = None) -> str:
    """One line saying how a request ended (``by you`` when ``me`` decided it)."""
    who = "you" if me is not None and resolved.by == me else resolved.by
    verdict = {"allow": "allowed", "always": "allowed always", "deny": "denied"}.get(
        resolved.decision, resolved.decision
    )
    reason = f" ({make_visible(resolved.reason)})" if resolved.reason and who == "system" else ""
    return f"request {make_visible(resolved.id)} {verdict} by {who}{reason}"


class TurnView(Protocol):
    """Where a turn is being shown: paused while the person answers, notes printed under it."""

    def pause(self) -> None: ...

    def note(self, text: str) -> None: ...

    def event(self, event: Event | UnknownEvent) -> None: ...


class InlineApprover:
    """Answers the approval requests of the caller's own turn, on a blocking connection.

    Pass it as ``on_notification`` to :meth:`Connection.wait`. With ``answer=False`` (no
    terminal to ask on) it only points the person to ``pyra approvals watch``. Without ``out``
    it writes to whatever ``sys.stderr`` is when a request arrives: rich's live display swaps
    in a markup-rendering proxy while it runs, which would eat the ``[a]llow`` prompt.
    """

    def __init__(
        self,
        conn: Connection,
        view: TurnView,
        *,
        read_line: Callable[[], str],
        out: IO[str] | None = None,
        answer: bool = True,
    ) -> None:
        self._conn = conn
        self._view = view
        self._read_line = read_line
        self._out = out
        self._answer = answer
        self._answered: set[str] = set()

    def __call__(self, method: str, raw: msgspec.Raw) -> None:
        if method == "interaction.resolved":
            resolved = msgspec.json.decode(raw, type=InteractionResolved)
            if resolved.id not in self._answered:
                self._view.note(describe_resolution(resolved))
            return
        if method != "interaction.request":
            return
        request = msgspec.json.decode(raw, type=Interaction)
        if not self._answer:
            self._view.note(
                f"⚠ {request.tool or request.kind} waits for approval: answer it with "
                "`pyra approvals watch` in another terminal"
            )
            return
        self._view.pause()
        out = self._out or sys.stderr
        decision = ask_person(request, out=out, read_line=self._read_line)
        self._answered.add(request.id)
        answer = self._conn.send(
            "interactions.answer", InteractionAnswerParams(id=request.id, decision=decision)
        )
        try:
            # Nested: stream events and further requests keep flowing while we wait.
            self._conn.wait(
                answer, InteractionAnswerResult, on_event=self._view.event, on_notification=self
            )
        except ApprovalRefused as exc:
            self._view.note(f"your answer was refused: {exc}")
        else:
            self._view.note(f"{decision}: {request.tool or request.kind}")
