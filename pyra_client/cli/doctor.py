"""``pyra doctor [--fix] [--json]``: check this Pyra install and repair what is safe.

The checks live in :mod:`pyra_client.doctor`; this module prints them as a table (one row per
check, its hint underneath) or as JSON, and exits 1 when any check failed. It never starts the
daemon: a doctor that starts what it examines hides the very problem it was called for.
"""

from __future__ import annotations

import json as jsonlib

import msgspec
import typer

from pyra_client.protocol import DoctorCheck

__all__ = ["doctor", "render_table", "to_json"]

_LABELS = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skipped": "skip"}
_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "skipped": "bright_black"}


def to_json(checks: list[DoctorCheck]) -> str:
    """``{"ok": bool, "checks": [{name, status, detail, hint, fixed}, ...]}``, every field set."""
    return jsonlib.dumps(
        {
            "ok": not any(check.status == "fail" for check in checks),
            "checks": [msgspec.structs.asdict(check) for check in checks],
        },
        indent=2,
    )


def render_table(checks: list[DoctorCheck]) -> list[str]:
    """One line per check (status, name, detail) and the hint indented below it."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        label = typer.style(f"{_LABELS[check.status]:<4}", fg=_COLOURS[check.status], bold=True)
        fixed = " (fixed)" if check.fixed else ""
        lines.append(f"{label}  {check.name.ljust(width)}  {check.detail}{fixed}")
        if check.hint and check.status != "ok":
            lines.append(f"      {' ' * width}  → {check.hint}")
    counts = {status: sum(c.status == status for c in checks) for status in _LABELS}
    lines.append(
        f"\n{counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok, "
        f"{counts['skipped']} skipped"
    )
    return lines


def doctor(
    fix: bool = typer.Option(
        False, "--fix", help="Repair what is safe: file modes and stale PID/socket files."
    ),
    json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_provider: bool = typer.Option(
        False, "--no-provider", help="Do not send the provider a test request."
    ),
    timeout: float = typer.Option(
        10.0, "--timeout", min=0.1, help="Seconds the provider may take to answer."
    ),
) -> None:
    """Check config, permissions, vault, daemon, provider, plugins, service and litellm.

    Exits 1 when a check fails. Never starts the daemon.
    """
    from pyra_client.doctor import DoctorOptions, diagnose
    from pyra_client.paths import Layout

    options = DoctorOptions(fix=fix, probe_provider=not no_provider, provider_timeout=timeout)
    checks = diagnose(Layout.default(), options)
    if json:
        typer.echo(to_json(checks))
    else:
        for line in render_table(checks):
            typer.echo(line)
    raise typer.Exit(1 if any(check.status == "fail" for check in checks) else 0)
