"""``python -m tests.bench [NAME ...] [--runs N]``: run the ``bench_*.py`` modules in order.

NAME selects modules by a part of their name (``ask``, ``daemon``); all run by default.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="run only modules whose name contains one")
    parser.add_argument("--runs", type=int, default=50, help="repetitions per measurement")
    options = parser.parse_args(argv)
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    if options.names:
        modules = [m for m in modules if any(n in m for n in options.names)]
    load = os.getloadavg()
    print(
        f"pyra benchmarks: Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    began = time.monotonic()
    failed: list[str] = []
    for name in modules:
        module = importlib.import_module(f"tests.bench.{name}")
        print(f"\n== {name}: {(module.__doc__ or '').strip().splitlines()[0]}", flush=True)
        # A module's main() takes argv, or reads sys.argv itself (run with its defaults).
        if inspect.signature(module.main).parameters:
            status = module.main(["--runs", str(options.runs)])
        else:
            sys.argv = [str(here / f"{name}.py")]
            status = module.main()
        if status:
            failed.append(name)
    print(f"\n(done in {time.monotonic() - began:.0f} s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
