"""``pyra ask``: one prompt, one streamed answer, from a shell or a pipe.

Parsed with argparse rather than typer to keep process start-up small (this is the command
people put in scripts and loops). The prompt comes from the arguments, from stdin when there
are none (or ``-``), or from both when stdin is piped alongside a prompt
(``git diff | pyra ask "review this"``). Output: rendered markdown on a terminal, plain text
when piped, NDJSON events with ``--json``. Ctrl-C cancels the turn in the daemon.

On a terminal (stdin and stdout both ttys) the ask also approves its own tool calls inline: it
sends ``approve: true`` and answers the ``interaction.request`` notifications of its turn,
showing the full arguments (see :mod:`pyra_client.approve`). Otherwise the turn's requests go to
other approvers (``pyra approvals watch``) and wait for them until they expire.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
from typing import IO, TYPE_CHECKING, Any

import msgspec

from pyra_client.autostart import connect_or_start
from pyra_client.errors import Cancelled, PyraError, UsageError
from pyra_client.paths import Layout
from pyra_client.protocol import (
    AskParams,
    AskResult,
    CancelParams,
    Event,
    TextDelta,
    UnknownEvent,
)

if TYPE_CHECKING:
    from pyra_client.connection import Connection

__all__ = ["main"]

_json = msgspec.json.Encoder()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyra ask",
        description="Ask Pyra one question; the answer streams to stdout.",
        epilog="Exit codes: 2 usage, 3 daemon unreachable, 4 provider auth, 5 rate limited, "
        "6 provider timeout, 7 other provider error, 8 not configured, 130 cancelled.",
    )
    parser.add_argument("prompt", nargs="*", help="the prompt; '-' or nothing reads stdin")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-c",
        "--continue",
        dest="continue_last",
        action="store_true",
        help="continue the most recent CLI conversation",
    )
    where.add_argument("--conversation", metavar="ID", help="continue conversation ID")
    parser.add_argument("--json", action="store_true", help="print NDJSON events")
    parser.add_argument(
        "--no-stream", action="store_true", help="print the answer once it is complete"
    )
    parser.add_argument(
        "--usage", action="store_true", help="print tokens and cost to stderr afterwards"
    )
    parser.add_argument(
        "--no-autostart", action="store_true", help="fail instead of starting the daemon"
    )
    parser.add_argument(
        "--no-approve",
        action="store_true",
        help="do not answer tool approvals here, even on a terminal (leave them to "
        "`pyra approvals watch` or another frontend)",
    )
    return parser


def _stdin_has_data(stream: IO[str]) -> bool:
    """True for a pipe or a redirected file; never wait on a terminal or an inherited socket."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def read_prompt(words: list[str], stdin: IO[str]) -> str:
    if words == ["-"] or not words:
        if stdin.isatty() or not _stdin_has_data(stdin):
            raise UsageError('no prompt: give one (pyra ask "...") or pipe text into pyra ask')
        prompt = stdin.read()
    else:
        prompt = " ".join(words)
        if not stdin.isatty() and _stdin_has_data(stdin):
            piped = stdin.read()
            if piped.strip():
                prompt = f"{prompt}\n\n{piped}"
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


class _Output:
    """Where the answer goes: markdown on a terminal, plain text in a pipe, or NDJSON."""

    def __init__(self, *, json_mode: bool, tty: bool) -> None:
        self.json_mode = json_mode
        self._live: Any = None
        self._text: list[str] = []
        self._paused = False
        if tty and not json_mode:
            from rich.console import Console

            self._console = Console()
            self._start_live()

    def _start_live(self) -> None:
        from rich.live import Live

        self._live = Live(console=self._console, refresh_per_second=12, transient=False)
        self._live.start()

    def pause(self) -> None:
        """Stop live rendering (what is shown stays) so a prompt can use the terminal."""
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._text.clear()
            self._paused = True

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def event(self, event: Event | UnknownEvent) -> None:
        if self.json_mode:
            if isinstance(event, UnknownEvent):
                sys.stdout.write(_json.encode(event.raw).decode() + "\n")
            else:
                sys.stdout.write(_json.encode(event).decode() + "\n")
            sys.stdout.flush()
            return
        if isinstance(event, TextDelta):
            self.text(event.text)

    def text(self, text: str) -> None:
        if self._paused:
            self._paused = False
            self._start_live()
        self._text.append(text)
        if self._live is not None:
            from rich.markdown import Markdown

            self._live.update(Markdown("".join(self._text)))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def finish(self, result: AskResult | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self.json_mode and result is not None:
            payload = {"type": "result", **msgspec.structs.asdict(result)}
            payload["usage"] = msgspec.structs.asdict(result.usage)
            sys.stdout.write(_json.encode(payload).decode() + "\n")
        elif self._text and not "".join(self._text).endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def _usage_line(result: AskResult) -> str:
    usage = result.usage
    cost = f" · ${usage.cost:.6f}" if usage.cost is not None else ""
    return (
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens{cost}"
        f" · {result.model} · {result.conversation}"
    )


def _run(conn: Connection, params: AskParams, out: _Output) -> AskResult:
    request_id = conn.send("ask", params)
    approver = None
    if params.approve:  # only on a terminal: keep the approval module off the scripted path
        from pyra_client.approve import InlineApprover

        approver = InlineApprover(conn, out, read_line=sys.stdin.readline)
    try:
        return conn.wait(request_id, AskResult, on_event=out.event, on_notification=approver)
    except KeyboardInterrupt:
        # Cancel in the daemon, then wait (briefly) for it to confirm; a second Ctrl-C quits.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        conn.send("cancel", CancelParams(request=request_id))
        with contextlib.suppress(PyraError):
            conn.wait(request_id, AskResult)
        raise Cancelled("cancelled") from None


def main(argv: list[str]) -> int:
    options = _parser().parse_args(argv)
    prompt = read_prompt(options.prompt, sys.stdin)
    params = AskParams(
        prompt=prompt,
        conversation=options.conversation,
        continue_last=options.continue_last,
        stream=not options.no_stream,
        approve=not options.no_approve and sys.stdin.isatty() and sys.stdout.isatty(),
    )
    layout = Layout.default()
    out = _Output(json_mode=options.json, tty=sys.stdout.isatty())
    result: AskResult | None = None
    try:
        with connect_or_start(layout, autostart=not options.no_autostart) as conn:
            result = _run(conn, params, out)
        if options.no_stream and not options.json:
            out.text(result.text)
    except PyraError as exc:
        out.finish(None)
        if options.json:
            error = {"type": "error", "code": int(exc.code), "message": exc.message}
            sys.stdout.write(_json.encode(error).decode() + "\n")
            sys.stdout.flush()
        raise
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    out.finish(result)
    if options.usage:
        print(_usage_line(result), file=sys.stderr)
    return 0
