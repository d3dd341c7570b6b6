"""The ``pyra`` command.

``pyra ask`` is the hot path and is parsed with stdlib argparse in :mod:`pyra_client.cli.ask`
(typer alone costs ~45 ms to import, most of the start-up budget); every other command is a
typer sub-app, one module per command group, mounted in :mod:`pyra_client.cli.app`. Errors are
caught here, once: one line on stderr and the error's exit code.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from pyra_client.errors import PyraError

    try:
        if args[:1] == ["ask"]:
            from pyra_client.cli.ask import main as ask_main

            return ask_main(args[1:])
        from pyra_client.cli.app import run

        return run(args)
    except PyraError as exc:
        print(f"pyra: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("pyra: interrupted", file=sys.stderr)
        return 130
