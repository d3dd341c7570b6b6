"""Pyra's thin side: the wire protocol, connections to the daemon and the ``pyra`` CLI.

Light to import by design (msgspec and the stdlib; typer and rich only inside CLI commands
that need them), so a one-shot ``pyra ask`` starts in a few tens of milliseconds.
"""

__version__ = "0.1.0"
