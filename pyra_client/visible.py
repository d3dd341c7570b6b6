"""Making hidden characters visible, so a person approves exactly what will run.

One implementation for every place that shows a tool call to a person: the daemon's approval
previews, ``pyra ask``/``pyra approvals`` prompts and the bots' messages. C0/C1 controls and DEL
become ``\\x1b``-style escapes (``\\n``, ``\\r``, ``\\t`` by name); bidirectional controls,
zero-width and other invisible format characters become ``<U+202E>``-style escapes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

__all__ = ["make_visible", "visible_pieces"]

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Invisible characters outside the Cc/Cf/Zl/Zp categories: variation selectors (used to smuggle
# text after an emoji), the combining grapheme joiner and the Hangul fillers.
_EXTRA_INVISIBLE = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


def _escape(char: str, multiline: bool) -> str | None:
    """The visible stand-in for ``char``, or ``None`` when it may be shown as it is."""
    if multiline and char in "\n\t":
        return None
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code < 0xA0:
        return None
    # Cf covers the bidi controls (U+202A-E, U+2066-9, U+200E/F, U+061C), zero-width characters,
    # the BOM, soft hyphen and the tag characters used to hide prompts; Cs are lone surrogates.
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") or any(
        low <= code <= high for low, high in _EXTRA_INVISIBLE
    ):
        return f"<U+{code:04X}>"
    return None


def visible_pieces(text: str, *, multiline: bool = False) -> Iterator[str]:
    """Each character of ``text``, or its escape: lets a caller cut without splitting one."""
    for char in text:
        escaped = _escape(char, multiline)
        yield char if escaped is None else escaped


def make_visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, bidi and invisible character turned into a visible escape.

    With ``multiline`` newlines and tabs are kept (for a scrollable full view); carriage
    returns are escaped either way, since they can overwrite a line on a terminal. Backslashes
    are left alone, so a literal ``\\n`` and an escaped newline look alike in a one-line preview.
    """
    return "".join(visible_pieces(text, multiline=multiline))
