"""``pyra chat``: a conversation in the terminal, one turn after another.

Input is read with the stdlib ``readline`` (history in ``$PYRA_HOME/chat_history``, mode 0600,
1000 lines). A message spans several lines when a line ends with a backslash, or when it is
pasted between two lines holding only ``\"\"\"``. Lines starting with ``/`` are commands:
``/new``, ``/history``, ``/tools``, ``/help``, ``/quit``, and every slash command a plugin
provides (run in the daemon through ``commands.run``); ``//text`` sends ``/text`` as a message.

Answers stream as markdown (rich, imported on first use) on a terminal and as plain text
otherwise (or with ``--plain``). Ctrl-C during a turn cancels that turn in the daemon and
returns to the prompt; Ctrl-C at the prompt clears the line; Ctrl-D quits.

Approvals: on a terminal the chat answers its own turns' approval requests inline (it sends
``approve: true``; :mod:`pyra_client.approve` shows the tool and its full arguments and reads
allow / always / deny). With ``--no-approve``, or without a terminal, requests go to other
approvers (``pyra approvals watch``) and the chat says so.

This module holds no state beyond the current conversation id: everything lives in the daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

import typer

from pyra_client.approve import InlineApprover
from pyra_client.autostart import connect_or_start
from pyra_client.errors import (
    DaemonUnreachable,
    NotFound,
    ProtocolError,
    PyraError,
)
from pyra_client.paths import Layout
from pyra_client.protocol import (
    AskParams,
    AskResult,
    CancelParams,
    CommandListResult,
    CommandRunParams,
    CommandRunResult,
    ConversationIdParams,
    ConversationShowResult,
    Empty,
    Event,
    PluginListResult,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    UnknownEvent,
)

if TYPE_CHECKING:
    from pyra_client.connection import Connection

__all__ = ["Repl", "chat"]

PROMPT = "you> "
CONTINUATION = "...> "
PASTE_FENCE = '"""'
HISTORY_FILE = "chat_history"
HISTORY_LENGTH = 1000
BUILTIN_HELP = [
    ("/new", "start a new conversation"),
    ("/history", "show this conversation so far"),
    ("/tools", "list the tools the model may use"),
    ("/help", "show this help"),
    ("/quit", "leave (Ctrl-D works too)"),
]
INPUT_HELP = (
    'End a line with \\ to continue on the next one, or paste between two lines of """. '
    "Ctrl-C cancels a running answer; //text sends a message starting with /."
)


def _visible(text: str, limit: int = 200) -> str:
    """One line, control characters shown as escapes, cut at *limit*."""
    shown = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class _Turn:
    """Renders one streaming answer: markdown in a rich Live view, or plain text."""

    def __init__(self, out: IO[str], *, markdown: bool) -> None:
        #: The ask this turn renders; events of any other request are ignored.
        self.request: int | None = None
        self._out = out
        self._text: list[str] = []
        self._live: Any = None
        self._console: Any = None
        self._paused = False
        if markdown:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=out)
            self._live = Live(console=self._console, refresh_per_second=12, transient=False)
            self._live.start()

    def _line(self, text: str, style: str = "dim") -> None:
        if self._console is not None:
            self._console.print(text, style=style, markup=False, highlight=False)
        else:
            self._out.write(("\n" if self._text else "") + text + "\n")
            self._out.flush()
            self._text.clear()

    def event(self, event: Event | UnknownEvent) -> None:
        if getattr(event, "request", None) != self.request:
            return  # a late event of a turn that was cancelled
        if isinstance(event, TextDelta):
            self._resume()
            self._text.append(event.text)
            if self._live is not None:
                from rich.markdown import Markdown

                self._live.update(Markdown("".join(self._text)))
            else:
                self._out.write(event.text)
                self._out.flush()
        elif isinstance(event, ToolCallEvent):
            self._line(f"⚙ {event.tool} {_visible(event.arguments)}")
        elif isinstance(event, ToolResultEvent):
            mark = "✓" if event.ok else "✗"
            self._line(f"{mark} {event.tool}: {_visible(event.preview)}")

    def note(self, text: str) -> None:
        self._line(text, style="yellow")

    def pause(self) -> None:
        """Stop live rendering (what is shown stays) so a prompt can use the terminal."""
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._text.clear()
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self._console is not None:
            from rich.live import Live

            self._paused = False
            self._live = Live(console=self._console, refresh_per_second=12, transient=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._text and not "".join(self._text).endswith("\n"):
            self._out.write("\n")
        self._out.flush()


class Repl:
    """The chat loop; ``run()`` returns the exit status."""

    def __init__(
        self,
        layout: Layout,
        *,
        conversation: str | None = None,
        continue_last: bool = False,
        autostart: bool = True,
        markdown: bool = True,
        approve: bool = True,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
    ) -> None:
        self.layout = layout
        self.conversation = conversation
        self._continue_last = continue_last and conversation is None
        self._autostart = autostart
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self._markdown = markdown and self._out.isatty()
        self._approve = approve and self._in.isatty() and self._out.isatty()
        self._conn: Connection | None = None
        self._history: str | None = None

    # --- plumbing --------------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect_or_start(self.layout, autostart=self._autostart)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def _call(self, method: str, params: object, result_type: type[Any]) -> Any:
        try:
            return self._connection().call(method, params, result_type)
        except (DaemonUnreachable, ProtocolError):
            # The daemon restarted or a frame was torn by Ctrl-C: try once more, afresh.
            self._drop_connection()
            return self._connection().call(method, params, result_type)

    def print(self, text: str = "") -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def _error(self, text: str) -> None:
        self.print(f"pyra: {text}")

    # --- input -----------------------------------------------------------------------------

    def _setup_history(self) -> None:
        if not self._in.isatty():
            return
        try:
            import readline
        except ImportError:  # pragma: no cover - Python built without readline
            return
        path = str(self.layout.home / HISTORY_FILE)
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            readline.read_history_file(path)
        readline.set_history_length(HISTORY_LENGTH)
        self._history = path

    def _save_history(self) -> None:
        if self._history is None:
            return
        import readline

        # readline may write a new file and rename it over the old one: keep it private.
        previous = os.umask(0o077)
        try:
            with contextlib.suppress(OSError):
                readline.write_history_file(self._history)
                os.chmod(self._history, 0o600)
        finally:
            os.umask(previous)

    def _input(self, prompt: str) -> str:
        if self._in is sys.stdin:
            return input(prompt)
        self._out.write(prompt)
        self._out.flush()
        line = self._in.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def read_message(self) -> str:
        """One message: a line, lines joined by a trailing backslash, or a pasted block."""
        first = self._input(PROMPT)
        if first.strip() == PASTE_FENCE:
            block: list[str] = []
            while (line := self._input(CONTINUATION)).strip() != PASTE_FENCE:
                block.append(line)
            return "\n".join(block)
        lines: list[str] = []
        line = first
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = self._input(CONTINUATION)
        lines.append(line)
        return "\n".join(lines)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        self._setup_history()
        self.print("Pyra chat. /help for commands, Ctrl-D to leave.")
        if self.conversation:
            self.print(f"continuing {self.conversation}")
        try:
            while True:
                try:
                    message = self.read_message()
                except KeyboardInterrupt:
                    self.print()
                    continue
                except EOFError:
                    self.print()
                    return 0
                if not message.strip():
                    continue
                if message.startswith("/") and not message.startswith("//"):
                    if not self.command(message):
                        return 0
                    continue
                self.ask(message.removeprefix("/") if message.startswith("//") else message)
        finally:
            self._save_history()
            self._drop_connection()

    def ask(self, prompt: str) -> AskResult | None:
        """Run one turn, streaming it; errors are printed and the REPL carries on."""
        params = AskParams(
            prompt=prompt,
            conversation=self.conversation,
            continue_last=self._continue_last,
            stream=True,
            approve=self._approve,
        )
        turn: _Turn | None = None
        conn: Connection | None = None
        request: int | None = None
        try:
            # The renderer first (it may import rich): a Ctrl-C before the ask is sent has
            # nothing to cancel in the daemon.
            turn = _Turn(self._out, markdown=self._markdown)
            conn, request = self._send_ask(params)
            turn.request = request
            approver = InlineApprover(
                conn, turn, read_line=self._in.readline, out=self._out, answer=self._approve
            )
            result = conn.wait(request, AskResult, on_event=turn.event, on_notification=approver)
        except KeyboardInterrupt:
            if turn is not None:
                turn.stop()
            if conn is not None and request is not None:
                self._cancel(conn, request)
            self.print("(cancelled)")
            return None
        except (DaemonUnreachable, ProtocolError, OSError) as exc:
            if turn is not None:
                turn.stop()
            self._drop_connection()
            self._error(str(exc))
            return None
        except PyraError as exc:
            if turn is not None:
                turn.stop()
            self._error(str(exc))
            return None
        turn.stop()
        self.conversation = result.conversation
        self._continue_last = False
        return result

    def _send_ask(self, params: AskParams) -> tuple[Connection, int]:
        try:
            conn = self._connection()
            return conn, conn.send("ask", params)
        except (DaemonUnreachable, ProtocolError, OSError):
            # The daemon restarted since the last turn: one fresh connection (or autostart).
            self._drop_connection()
            conn = self._connection()
            return conn, conn.send("ask", params)

    def _cancel(self, conn: Connection, request: int) -> None:
        """Cancel the turn in the daemon and wait briefly for it to confirm."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            conn.send("cancel", CancelParams(request=request))
            with contextlib.suppress(PyraError):
                conn.wait(request, AskResult)
        except OSError:
            self._drop_connection()
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- commands --------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Handle ``/name args``; returns False to leave the REPL."""
        name, _, args = line[1:].partition(" ")
        name = name.strip().lower()
        args = args.strip()
        try:
            if name in ("quit", "exit"):
                return False
            if name == "help":
                self._help()
            elif name == "new":
                self.conversation = None
                self._continue_last = False
                self.print("(new conversation)")
            elif name == "history":
                self._show_history()
            elif name == "tools":
                self._tools()
            else:
                self._plugin_command(name, args)
        except NotFound as exc:
            self._error(str(exc))
        except PyraError as exc:
            self._error(str(exc))
        return True

    def _help(self) -> None:
        rows = list(BUILTIN_HELP)
        try:
            commands = self._call("commands.list", Empty(), CommandListResult).commands
        except PyraError:
            commands = []
        rows += [(f"/{c.name}", f"{c.description} ({c.plugin})") for c in commands]
        width = max(len(name) for name, _ in rows)
        for name, text in rows:
            self.print(f"  {name.ljust(width)}  {text}")
        self.print(INPUT_HELP)

    def _show_history(self) -> None:
        if not self.conversation:
            self.print("(nothing yet in this conversation)")
            return
        shown = self._call(
            "conversations.show", ConversationIdParams(id=self.conversation), ConversationShowResult
        )
        self.print(f"{shown.conversation.id}: {shown.conversation.turns} turn(s)")
        for message in shown.messages:
            who = {"user": "you", "assistant": "pyra"}.get(message.role, message.role)
            if message.role == "tool":
                who = f"tool {message.tool_name or ''}".rstrip()
            self.print(f"\n{who}:\n{message.content}")

    def _tools(self) -> None:
        plugins = self._call("plugins.list", Empty(), PluginListResult).plugins
        rows = []
        for plugin in plugins:
            if plugin.state != "active":
                continue
            for tool in plugin.tools:
                gate = "read-only" if tool.read_only else "asks first"
                rows.append((tool.name, f"{tool.description} [{gate}, {plugin.name}]"))
        if not rows:
            self.print("(no tools: every plugin is disabled)")
            return
        width = max(len(name) for name, _ in rows)
        for name, text in rows:
            self.print(f"  {name.ljust(width)}  {text}")

    def _plugin_command(self, name: str, args: str) -> None:
        result = self._call(
            "commands.run",
            CommandRunParams(name=name, args=args, conversation=self.conversation),
            CommandRunResult,
        )
        if result.ok and self._markdown:
            from rich.console import Console
            from rich.markdown import Markdown

            Console(file=self._out).print(Markdown(result.text))
        else:
            self.print(result.text if result.ok else f"pyra: {result.text}")


def chat(
    conversation: str | None = typer.Option(
        None, "--conversation", metavar="ID", help="Continue conversation ID."
    ),
    continue_last: bool = typer.Option(
        False, "--continue", "-c", help="Continue the most recent CLI conversation."
    ),
    plain: bool = typer.Option(False, "--plain", help="Plain text, no markdown rendering."),
    no_approve: bool = typer.Option(
        False,
        "--no-approve",
        help="Leave tool approvals to `pyra approvals watch` or another frontend.",
    ),
    no_autostart: bool = typer.Option(False, "--no-autostart", help="Do not start the daemon."),
) -> None:
    """Chat with Pyra in the terminal (/help inside for commands)."""
    repl = Repl(
        Layout.default(),
        conversation=conversation,
        continue_last=continue_last,
        autostart=not no_autostart,
        markdown=not plain,
        approve=not no_approve,
    )
    raise typer.Exit(repl.run())
