"""The Pyra home on disk: its folders created private and permission drift repaired.

Everything under ``$PYRA_HOME`` must be 0600 (files) or 0700 (folders). :func:`prepare_home`
creates the layout and :func:`check_permissions` reports, and with ``repair`` fixes, anything
wider, without following symlinks (a symlink is reported, never chased).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from pyra_client.paths import Layout, ensure_private_dir

__all__ = ["check_permissions", "prepare_home"]

log = logging.getLogger(__name__)


def prepare_home(layout: Layout) -> list[str]:
    """Create the home's folders (0700) and repair permission drift; returns the findings."""
    for directory in (
        layout.home,
        layout.run_dir,
        layout.logs_dir,
        layout.memory_dir,
        layout.vault_dir,
        layout.plugins_dir,
    ):
        ensure_private_dir(directory)
    findings = check_permissions(layout.home, repair=True)
    for finding in findings:
        log.warning("permission drift repaired: %s", finding)
    return findings


def check_permissions(root: Path, *, repair: bool) -> list[str]:
    """Files not 0600 and folders not 0700 under *root* (symlinks are reported, not followed)."""
    findings: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISSOCK(info.st_mode):
                wanted = 0o600
            elif stat.S_ISDIR(info.st_mode):
                wanted = 0o700
            else:
                wanted = 0o600
            mode = stat.S_IMODE(info.st_mode)
            if mode & ~wanted:
                findings.append(f"{path} was {mode:04o}, should be {wanted:04o}")
                if repair:
                    path.chmod(wanted)
    root_mode = stat.S_IMODE(root.stat().st_mode)
    if root_mode != 0o700:
        findings.append(f"{root} was {root_mode:04o}, should be 0700")
        if repair:
            root.chmod(0o700)
    return findings
