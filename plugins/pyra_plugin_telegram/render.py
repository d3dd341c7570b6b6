"""Text for Telegram: splitting at the length limit, MarkdownV2 escaping, approval messages.

Pure functions, no I/O and no ``telegram`` import, so they are tested directly. Lengths are
counted as Telegram counts them: in UTF-16 code units.

* :func:`split_text` cuts a long answer into parts of at most 4096 units, at a paragraph
  break, else a line break, else a space, and closes and reopens a code fence cut in two.
* :func:`to_markdown_v2` turns the common markdown of model answers (bold, italic, inline and
  fenced code, links, headings, bullets) into Telegram's MarkdownV2 and escapes everything
  else; when Telegram still refuses it, the bot sends the plain text.
* :func:`visible` shows control, bidirectional and invisible characters as escapes: the one
  rule of ``pyra_client.visible``, shared with the daemon's previews and the CLI prompts.
* :func:`render_request` and :func:`outcome_line` write the approval messages.

What this module deliberately does not do: send anything, or decide what to show to whom.
"""

from __future__ import annotations

import datetime as dtm
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pyra_client.protocol import Interaction, InteractionResolved
from pyra_client.visible import make_visible

__all__ = [
    "MAX_TEXT",
    "RenderedRequest",
    "outcome_line",
    "render_request",
    "split_text",
    "to_markdown_v2",
    "utf16_len",
    "visible",
]

#: Telegram's limit for one message's text.
MAX_TEXT = 4096
#: Arguments longer than this (as shown) go into a file instead of the message.
MAX_INLINE_ARGUMENTS = 2500
_FENCE = re.compile(r"^\s*```")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The length (in characters) of the longest prefix of *text* within *limit* units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _cut_at(window: str) -> int:
    """Where to cut *window* (the most that fits): the last good boundary in its back half."""
    half = len(window) // 2
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at >= half:
            return at + len(separator)
    return len(window)


def _fence_after(chunk: str) -> str | None:
    """The fence line still open at the end of *chunk*, if any."""
    open_fence: str | None = None
    for line in chunk.split("\n"):
        if _FENCE.match(line):
            open_fence = None if open_fence is not None else line.strip()
    return open_fence


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """*text* in parts of at most *limit* UTF-16 units, cut at safe boundaries.

    A code fence open at a cut is closed at the end of the part and reopened (with its
    language) at the start of the next, so each part renders on its own.
    """
    parts: list[str] = []
    rest = text
    # Room for the "\n```" that may close a fence at the end of a part.
    room = limit - 4
    while utf16_len(rest) > limit:
        cut = _cut_at(rest[: _prefix_within(rest, room)])
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n")
        # Each part starts whole (a cut fence is reopened in it), so count from its start.
        fence = _fence_after(chunk)
        if fence is not None:
            chunk += "\n```"
            rest = f"{fence}\n{rest}"
        if chunk.strip():
            parts.append(chunk)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


# --- MarkdownV2 ------------------------------------------------------------------------------

_SPECIAL = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")
_CODE_SPECIAL = re.compile(r"([`\\])")
_URL_SPECIAL = re.compile(r"([)\\])")
_FENCED = re.compile(r"^```([^\n`]*)\n(.*?)\n?```[ \t]*$", re.DOTALL | re.MULTILINE)
_INLINE = re.compile(
    r"`(?P<code>[^`\n]+)`"
    r"|\*\*(?P<bold>[^\n]+?)\*\*"
    r"|__(?P<bold2>[^\n]+?)__"
    r"|~~(?P<strike>[^\n]+?)~~"
    r"|\[(?P<label>[^\]\n]+)\]\((?P<url>https?://(?:[^\s()]|\([^\s()]*\))+)\)"
    r"|(?<![\w*])\*(?P<italic>[^\s*](?:[^*\n]*?[^\s*])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<italic2>[^\s_](?:[^_\n]*?[^\s_])?)_(?![\w_])"
)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def _inline(text: str) -> str:
    out: list[str] = []
    last = 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[last : match.start()]))
        last = match.end()
        groups = match.groupdict()
        if groups["code"] is not None:
            out.append("`" + _CODE_SPECIAL.sub(r"\\\1", groups["code"]) + "`")
        elif groups["bold"] is not None or groups["bold2"] is not None:
            out.append("*" + _inline(groups["bold"] or groups["bold2"]) + "*")
        elif groups["strike"] is not None:
            out.append("~" + _inline(groups["strike"]) + "~")
        elif groups["label"] is not None:
            url = _URL_SPECIAL.sub(r"\\\1", groups["url"])
            out.append("[" + _inline(groups["label"]) + "](" + url + ")")
        else:
            out.append("_" + _inline(groups["italic"] or groups["italic2"]) + "_")
    out.append(_escape(text[last:]))
    return "".join(out)


def _lines(text: str) -> str:
    out = []
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        bullet = _BULLET.match(line)
        if heading:
            out.append("*" + _inline(heading.group(1)) + "*")
        elif bullet:
            out.append(bullet.group(1) + "• " + _inline(bullet.group(2)))
        else:
            out.append(_inline(line))
    return "\n".join(out)


def to_markdown_v2(text: str) -> str:
    """*text* (markdown as models write it) as Telegram MarkdownV2, everything else escaped."""
    out: list[str] = []
    last = 0
    for match in _FENCED.finditer(text):
        out.append(_lines(text[last : match.start()]))
        language = re.sub(r"[^\w+-]", "", match.group(1))
        body = _CODE_SPECIAL.sub(r"\\\1", match.group(2))
        out.append(f"```{language}\n{body}\n```")
        last = match.end()
    out.append(_lines(text[last:]))
    return "".join(out)


# --- visible text ----------------------------------------------------------------------------

visible = make_visible


# --- approval messages -----------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedRequest:
    """An approval message: its text, and the full arguments as a file when too long."""

    text: str
    document: bytes | None = None
    filename: str = ""


def _pretty(arguments: str) -> str:
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return json.dumps(value, indent=2, ensure_ascii=False)


def _clock(epoch: float, tz: dtm.tzinfo | None) -> str:
    return dtm.datetime.fromtimestamp(epoch, tz).strftime("%H:%M:%S")


_FLAG_NOTES = {
    "tainted": "the conversation holds content written by others",
    "injection-suspected": "the injection scanner flagged these arguments",
}


def _flag_lines(flags: Iterable[str]) -> list[str]:
    lines = []
    for flag in flags:
        note = _FLAG_NOTES.get(flag)
        if note is not None:
            lines.append(f"⚠️ {note}")
        elif flag.startswith("injection:"):
            lines.append(f"⚠️ scanner category: {flag.removeprefix('injection:')}")
        else:
            lines.append(f"⚠️ {visible(flag)}")
    return lines


def render_request(request: Interaction, *, tz: dtm.tzinfo | None = None) -> RenderedRequest:
    """The message asking the person about *request* (plain text: nothing is interpreted).

    Arguments are pretty-printed and shown in full with control and bidi characters made
    visible; when they are too long for a message they are attached as a text file instead,
    and the message says so. Nothing is ever cut silently.
    """
    head = [f"🔐 Approval needed: {visible(request.tool or request.kind)}"]
    if request.kind == "permission" and request.tool:
        head.append(f"Pyra wants to run the tool {visible(request.tool)}.")
    elif request.prompt:
        head.append(visible(request.prompt, multiline=True))
    if request.conversation:
        head.append(f"Conversation: {visible(request.conversation)}")
    if request.origin:
        head.append(f"Started by: {visible(request.origin)}")
    head.extend(_flag_lines(request.flags))
    if request.expires_at:
        head.append(f"Expires at {_clock(request.expires_at, tz)} (denied if unanswered).")
    if not request.arguments:
        return RenderedRequest("\n".join(head))
    shown = visible(_pretty(request.arguments), multiline=True)
    if utf16_len(shown) <= MAX_INLINE_ARGUMENTS:
        return RenderedRequest("\n".join([*head, "", "Arguments:", shown]))
    document = shown.encode("utf-8")
    preview = request.preview or visible(request.arguments[:200])
    tool = re.sub(r"[^\w.-]", "_", request.tool or "request")[:40]
    text = "\n".join(
        [
            *head,
            "",
            f"Arguments ({len(request.arguments)} characters) are in the file above, in full.",
            f"Start: {preview}",
        ]
    )
    return RenderedRequest(text, document=document, filename=f"{tool}-arguments.txt")


_DECISIONS = {
    "allow": "✅ Allowed once",
    "always": "✅ Allowed, and remembered for next time",
    "deny": "❌ Denied",
}


def outcome_line(resolved: InteractionResolved, *, by: str | None = None) -> str:
    """One line saying how a request ended; *by* names the person when a press decided."""
    if resolved.by == "system":
        reason = resolved.reason or "decided by Pyra"
        if reason.startswith("expired"):
            return f"⌛ Expired: denied ({visible(reason)})"
        return f"❌ Denied: {visible(reason)}"
    label = _DECISIONS.get(resolved.decision, f"Answered: {visible(resolved.decision)}")
    return f"{label} by {visible(by or resolved.by)}"
