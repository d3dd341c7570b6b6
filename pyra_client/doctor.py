"""``pyra doctor``: find what is wrong with this Pyra install, and repair what is safe.

:func:`diagnose` runs every check and returns one :class:`~pyra_client.protocol.DoctorCheck`
per concern, in a stable order. The client makes the checks that need no daemon itself:

* ``permissions``: files under ``$PYRA_HOME`` 0600, folders 0700, nothing owned by another
  user; symlinks are reported, never followed;
* ``daemon``: whether a daemon answers, and whether one holds the PID lock without answering;
* ``service``: the systemd unit or launchd agent (:func:`pyra_client.service.service_status`);
* ``stale files``: a PID file, endpoint file, token file or socket left by a daemon that did
  not exit cleanly;
* ``litellm``: the installed version (package metadata only; litellm is never imported here)
  is not a compromised release and is at or above the advisory floor, and no malicious
  ``litellm_init.pth`` is left in site-packages.

The rest comes from the daemon when it answers: ``config`` (validated with pydantic),
``vault`` and ``provider`` from its ``doctor`` method, ``plugins`` from ``plugins.list`` and the
supervisor's tasks in ``status``. With no daemon, ``config`` is checked for TOML syntax only,
``vault`` for the presence of its files, and the others are ``skipped`` with the reason.

``fix=True`` repairs what is safe: modes (chmod, never through a symlink) and stale files,
removed only while this process holds the PID lock, so no daemon can be running or starting.
It never starts the daemon, edits the config, or touches the vault's contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import re
import site
import stat
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from pyra_client import __version__
from pyra_client.connection import Connection
from pyra_client.errors import DaemonUnreachable, MethodNotFound, PyraError, UsageError
from pyra_client.paths import Endpoint, Layout, default_socket_path, read_endpoint
from pyra_client.protocol import (
    CheckStatus,
    DoctorCheck,
    DoctorParams,
    DoctorResult,
    Empty,
    StatusResult,
    TaskStatus,
)
from pyra_client.service import Runner, ServiceError, run_command, service_status

__all__ = [
    "COMPROMISED_LITELLM",
    "LITELLM_FLOOR",
    "DoctorOptions",
    "check_litellm",
    "check_permissions",
    "check_stale_files",
    "diagnose",
    "installed_litellm_version",
    "malicious_pth_files",
]

#: Releases of litellm published by an attacker (March 2026): credential stealers.
COMPROMISED_LITELLM = frozenset({(1, 82, 7), (1, 82, 8)})
#: The first release past the advisories that followed; pyproject pins the same floor.
LITELLM_FLOOR = (1, 83, 7)
#: Dropped into site-packages by litellm 1.82.8; it runs at every Python start-up.
MALICIOUS_PTH = "litellm_init.pth"

# The vault's file names (owned by pyra_daemon.vault, which the client cannot import).
_VAULT_IDENTITY = "identity.txt"
_VAULT_PASSPHRASE_IDENTITY = "identity.age"  # noqa: S105 - a file name
_VAULT_SECRETS = "secrets.age"
_VAULT_DAMAGED = "secrets.age.damaged"

#: Seconds allowed on top of the provider's timeout for the daemon to import litellm first.
_LITELLM_IMPORT_ALLOWANCE = 60.0

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)(.*)")
_PRE_RELEASE_RE = re.compile(r"[.\-_]?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*", re.IGNORECASE)


@dataclass
class DoctorOptions:
    """What :func:`diagnose` does, and its seams for tests."""

    fix: bool = False
    #: Ask the daemon to probe the provider (one 1-token completion).
    probe_provider: bool = True
    #: Seconds the provider may take to answer.
    provider_timeout: float = 10.0
    #: Seconds to wait for the daemon to accept a connection, and to answer ``status``.
    connect_timeout: float = 2.0
    answer_timeout: float = 5.0
    platform: str = sys.platform
    #: Runs systemctl / launchctl for the service check.
    run: Runner = run_command
    #: The installed litellm version, or None when it is not installed.
    litellm_version: Callable[[], str | None] = field(
        default_factory=lambda: installed_litellm_version
    )
    #: Folders searched for a malicious ``litellm_init.pth``.
    site_dirs: Callable[[], Sequence[Path]] = field(default_factory=lambda: _site_dirs)


# --- Permissions -----------------------------------------------------------------------------


def _wanted(mode: int) -> int:
    return 0o700 if stat.S_ISDIR(mode) else 0o600


def _drift(info: os.stat_result) -> int:
    """Mode bits that should not be set, plus a folder's missing owner bits."""
    mode = stat.S_IMODE(info.st_mode)
    wanted = _wanted(info.st_mode)
    extra = mode & ~wanted
    # A file the owner cannot write is their choice; a folder they cannot enter breaks Pyra.
    missing = (wanted & ~mode) if stat.S_ISDIR(info.st_mode) else 0
    return extra | missing


@dataclass
class _Survey:
    """What :func:`check_permissions` found under a home."""

    loose: list[tuple[Path, int, int]] = field(default_factory=list)  # group/other bits set
    odd: list[tuple[Path, int, int]] = field(default_factory=list)  # only the owner's bits off
    foreign: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    entries: int = 0

    def inspect(self, path: Path, info: os.stat_result) -> None:
        self.entries += 1
        if info.st_uid != os.getuid():
            self.foreign.append(f"{path} belongs to uid {info.st_uid}")
            return
        drift = _drift(info)
        item = (path, stat.S_IMODE(info.st_mode), _wanted(info.st_mode))
        if drift & 0o077:
            self.loose.append(item)
        elif drift:
            self.odd.append(item)

    def repair(self) -> None:
        for path, mode, wanted in (*self.loose, *self.odd):
            try:
                if path.is_symlink():  # swapped since we looked: never chmod through it
                    continue
                path.chmod(wanted)
            except OSError as exc:
                self.foreign.append(f"{path}: cannot chmod ({exc.strerror})")
                continue
            self.fixed.append(f"{path} {mode:04o} -> {wanted:04o}")
        self.loose, self.odd = [], []

    def check(self, home: Path) -> DoctorCheck:
        problems: list[str] = []
        hints: list[str] = []
        status: CheckStatus = "ok"
        if self.foreign:
            status = "fail"
            problems.append(_some(self.foreign))
            hints.append(f"everything under {home} must be yours: `chown -R $USER {home}`")
        if self.loose:
            status = "fail"
            problems.append(_modes(self.loose))
            hints.append("`pyra doctor --fix` restricts them to you")
        if self.odd or self.symlinks:
            status = "fail" if status == "fail" else "warn"
        if self.odd:
            problems.append(_modes(self.odd))
            if not self.loose:
                hints.append("`pyra doctor --fix` resets them")
        if self.symlinks:
            problems.append("symlinks (not followed): " + _some(self.symlinks))
            hints.append("replace each symlink with the real file or folder; doctor leaves them")
        if self.fixed:
            problems.insert(0, "repaired: " + _some(self.fixed))
        return DoctorCheck(
            name="permissions",
            status=status,
            detail="; ".join(problems) or f"{self.entries} files and folders, all private to you",
            hint="; ".join(hints),
            fixed=bool(self.fixed),
        )


def _modes(items: list[tuple[Path, int, int]]) -> str:
    return _some([f"{path} is {mode:04o}, should be {wanted:04o}" for path, mode, wanted in items])


def _inside_own_plugin(home: Path, link: Path) -> bool:
    """A symlink in ``plugins/<name>/`` that stays inside that folder (the loader allows it)."""
    parts = link.relative_to(home).parts
    if len(parts) < 3 or parts[0] != "plugins":
        return False
    folder = os.path.realpath(home / "plugins" / parts[1])
    return os.path.commonpath([folder, os.path.realpath(link)]) == folder


def check_permissions(home: Path, *, fix: bool) -> DoctorCheck:
    """Modes, owners and symlinks of everything under *home* (the home itself included)."""
    try:
        root = home.stat()
    except FileNotFoundError:
        return DoctorCheck(
            name="permissions",
            status="skipped",
            detail=f"{home} does not exist yet",
            hint="`pyra setup` creates it",
        )
    survey = _Survey()
    survey.inspect(home, root)
    for dirpath, dirnames, filenames in os.walk(home):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # removed while we looked (a log rotated, a temp file renamed)
            if stat.S_ISLNK(info.st_mode):
                if not _inside_own_plugin(home, path):
                    survey.symlinks.append(f"{path} -> {os.readlink(path)}")
            else:
                survey.inspect(path, info)
    if fix:
        survey.repair()
    return survey.check(home)


def _some(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


# --- Config and vault without the daemon -------------------------------------------------------


def _read_toml(layout: Layout) -> tuple[dict[str, Any] | None, DoctorCheck]:
    path = layout.config_file
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, DoctorCheck(name="config", status="ok", detail=f"no {path}: the defaults apply")
    except OSError as exc:
        return None, DoctorCheck(
            name="config", status="fail", detail=f"cannot read {path}: {exc.strerror}"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return None, DoctorCheck(
            name="config",
            status="fail",
            detail=f"{path} is not valid TOML: {exc}",
            hint="fix it: the daemon refuses to start with it (exit status 78)",
        )
    return data, DoctorCheck(
        name="config",
        status="ok",
        detail=f"{path}: valid TOML; the daemon validates the keys (it is not running)",
    )


def _configured_socket(data: dict[str, Any] | None) -> str | None:
    section = (data or {}).get("daemon")
    socket = section.get("socket") if isinstance(section, dict) else None
    return socket if isinstance(socket, str) else None


def _vault_files(layout: Layout) -> DoctorCheck:
    folder = layout.vault_dir
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    if _VAULT_IDENTITY in present and _VAULT_PASSPHRASE_IDENTITY in present:
        return DoctorCheck(
            name="vault",
            status="warn",
            detail=f"both {_VAULT_IDENTITY} and {_VAULT_PASSPHRASE_IDENTITY} exist in {folder}: "
            "a passphrase change was interrupted",
            hint="run `pyra vault passwd` again to finish it",
        )
    if _VAULT_IDENTITY in present:
        mode = "identity mode (unlocks unattended)"
    elif _VAULT_PASSPHRASE_IDENTITY in present:
        mode = "passphrase mode (starts locked)"
    else:
        return DoctorCheck(
            name="vault", status="ok", detail=f"not initialised yet ({folder}): no secrets stored"
        )
    secrets = "with secrets" if _VAULT_SECRETS in present else "no secrets yet"
    if _VAULT_DAMAGED in present:
        return DoctorCheck(
            name="vault",
            status="warn",
            detail=f"{mode}, {secrets}; {_VAULT_DAMAGED} holds a damaged copy set aside earlier",
            hint="once you have checked your secrets, delete it",
        )
    return DoctorCheck(
        name="vault",
        status="ok",
        detail=f"{mode}, {secrets}; the daemon checks that it decrypts (not reachable now)",
    )


# --- The PID lock and stale files ------------------------------------------------------------


@dataclass(frozen=True)
class _Lock:
    """Who holds the PID file's lock: a daemon (``running``), or this process (``ours``)."""

    running: bool
    pid: int | None = None
    ours: bool = False


@contextlib.contextmanager
def _pid_lock(layout: Layout, *, create: bool = False) -> Iterator[_Lock]:
    """Take the PID file's lock for the block, as a daemon would, unless a daemon holds it.

    While ``ours``, no daemon runs and none can start: one that tries fails at once with
    "already running". With *create*, a missing PID file is created to be locked (repairs
    need that guarantee); without it, a missing file just means no daemon runs.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(layout.pid_file, flags, 0o600)
    except FileNotFoundError:
        yield _Lock(running=False)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            yield _Lock(running=True, pid=int(text) if text.isdigit() else None)
            return
        try:
            yield _Lock(running=False, ours=True)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def daemon_lock(layout: Layout) -> _Lock:
    """Whether a daemon holds this home's PID lock, and its PID."""
    with _pid_lock(layout) as lock:
        return _Lock(running=lock.running, pid=lock.pid)


def _endpoint(layout: Layout) -> Endpoint:
    """The announced endpoint; with an unusable ``$PYRA_SOCKET``, one that names no file."""
    try:
        return read_endpoint(layout)
    except UsageError:
        return Endpoint(transport="unix")


def _stale_candidates(layout: Layout, endpoint: Endpoint, socket: Path | None) -> list[Path]:
    candidates = [layout.pid_file, layout.endpoint_file, layout.token_file]
    sockets = {Path(endpoint.path)} if endpoint.transport == "unix" and endpoint.path else set()
    if socket is not None:
        sockets.add(socket)
    for path in sorted(sockets):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                candidates.append(path)
    return [path for path in candidates if os.path.lexists(path)]


def check_stale_files(layout: Layout, *, socket: Path | None, fix: bool) -> DoctorCheck:
    """Files a daemon that did not exit cleanly left behind; removed under the PID lock."""
    endpoint = _endpoint(layout)
    lock = daemon_lock(layout)
    if lock.running:
        return DoctorCheck(
            name="stale files",
            status="ok",
            detail="none: the running daemon holds the PID lock and owns its files",
        )
    stale = _stale_candidates(layout, endpoint, socket)
    if not stale:
        return DoctorCheck(name="stale files", status="ok", detail="none")
    names = _some([str(path) for path in stale])
    if not fix:
        return DoctorCheck(
            name="stale files",
            status="warn",
            detail=f"left by a daemon that did not exit cleanly: {names}",
            hint="`pyra doctor --fix` removes them (a starting daemon replaces them too)",
        )
    removed: list[str] = []
    errors: list[str] = []
    with _pid_lock(layout, create=True) as held:
        if not held.ours:
            return DoctorCheck(
                name="stale files",
                status="ok",
                detail="none: a daemon started meanwhile and owns its files",
            )
        # Listed again under the lock; the PID file goes last, so the lock guards every removal.
        stale = _stale_candidates(layout, endpoint, socket)
        if layout.pid_file not in stale:
            stale.append(layout.pid_file)  # created just now, for the lock
        for path in sorted(stale, key=lambda p: p == layout.pid_file):
            try:
                path.unlink()
                removed.append(str(path))
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
    if errors:
        return DoctorCheck(
            name="stale files",
            status="warn",
            detail="could not remove " + _some(errors),
            fixed=bool(removed),
        )
    return DoctorCheck(name="stale files", status="ok", detail=f"removed {names}", fixed=True)


# --- litellm -----------------------------------------------------------------------------------


def installed_litellm_version() -> str | None:
    """litellm's version from its package metadata (importing it would run its code)."""
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None


def _site_dirs() -> list[Path]:
    folders = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return [Path(folder) for folder in dict.fromkeys(folders)]


def malicious_pth_files(site_dirs: Sequence[Path]) -> list[Path]:
    """``litellm_init.pth`` files in *site_dirs*: the payload of the compromised 1.82.8."""
    return [folder / MALICIOUS_PTH for folder in site_dirs if (folder / MALICIOUS_PTH).exists()]


def _release(version: str) -> tuple[tuple[int, int, int], bool] | None:
    """``((major, minor, patch), is_pre_release)``, or None when *version* does not parse."""
    match = _VERSION_RE.fullmatch(version.strip())
    if match is None:
        return None
    numbers = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
    return numbers, bool(_PRE_RELEASE_RE.match(match.group(4)))


def check_litellm(version: str | None, pth_files: Sequence[Path] = ()) -> DoctorCheck:
    """*version* is not a compromised release, is at or above the floor, and no payload is left."""
    floor = ".".join(map(str, LITELLM_FLOOR))
    upgrade = f'pip install --upgrade "litellm>={floor}"'
    if pth_files:
        return DoctorCheck(
            name="litellm",
            status="fail",
            detail=(
                f"{_some([str(p) for p in pth_files])} is the credential stealer shipped by "
                "litellm 1.82.8; it runs at every Python start-up"
            ),
            hint=(
                "delete it, reinstall litellm, and rotate every key and password this "
                "machine holds (API keys, SSH keys, cloud credentials)"
            ),
        )
    if version is None:
        return DoctorCheck(
            name="litellm",
            status="fail",
            detail="litellm is not installed; the daemon cannot talk to any model",
            hint=upgrade,
        )
    parsed = _release(version)
    if parsed is None:
        return DoctorCheck(
            name="litellm",
            status="warn",
            detail=f"cannot read the installed version {version!r}",
            hint=f"make sure it is {floor} or later: {upgrade}",
        )
    numbers, pre_release = parsed
    if numbers in COMPROMISED_LITELLM:
        return DoctorCheck(
            name="litellm",
            status="fail",
            detail=f"litellm {version} is a compromised release (credential-stealing malware)",
            hint=(
                f"{upgrade} now, then rotate every key this machine holds: "
                "the malware ran when Python started"
            ),
        )
    if numbers < LITELLM_FLOOR or (numbers == LITELLM_FLOOR and pre_release):
        return DoctorCheck(
            name="litellm",
            status="fail",
            detail=f"litellm {version} is older than {floor}, the first release past the "
            "security advisories of March 2026",
            hint=upgrade,
        )
    return DoctorCheck(name="litellm", status="ok", detail=f"litellm {version}")


# --- Service ---------------------------------------------------------------------------------


def _check_service(options: DoctorOptions, lock: _Lock) -> DoctorCheck:
    try:
        state = service_status(options.platform, run=options.run)
    except ServiceError as exc:
        return DoctorCheck(
            name="service",
            status="skipped",
            detail=str(exc),
            hint="see docs/deploy.md for running Pyra without a service manager",
        )
    if not state.installed:
        return DoctorCheck(
            name="service",
            status="skipped",
            detail=f"not installed ({state.unit_file})",
            hint="optional: `pyra service install` keeps Pyra running in the background",
        )
    if not state.reachable:
        return DoctorCheck(
            name="service",
            status="warn",
            detail=f"installed, but the service manager did not answer: {state.detail}",
        )
    where = f"{state.manager}, {state.state or 'unknown state'}"
    if state.running:
        if lock.pid and state.pid and state.pid != lock.pid:
            return DoctorCheck(
                name="service",
                status="warn",
                detail=f"{where}, but the daemon holding the lock (pid {lock.pid}) is not the "
                f"service's (pid {state.pid})",
                hint="`pyra service install` stops the other one and restarts the service",
            )
        enabled = "" if state.enabled in (True, None) else "; not enabled at login"
        return DoctorCheck(
            name="service",
            status="ok" if not enabled else "warn",
            detail=f"{where}, pid {state.pid}{enabled}",
            hint="" if not enabled else "`pyra service install` enables it",
        )
    detail = f"installed but not running ({where})"
    if state.last_exit_status is not None:
        detail += f", last exit status {state.last_exit_status}"
    if state.detail:
        detail += f": {state.detail}"
    return DoctorCheck(
        name="service",
        status="fail" if state.enabled else "warn",
        detail=detail,
        hint="see `pyra logs`; start it with `pyra service install`",
    )


# --- Through the daemon ----------------------------------------------------------------------


class _PluginEntry(msgspec.Struct):
    """What doctor reads of a ``plugins.list`` entry (``PluginView``); the rest is ignored."""

    name: str = "?"
    state: str = ""
    error: str | None = None


class _PluginList(msgspec.Struct):
    plugins: list[_PluginEntry] = []


def _plugin_findings(
    plugins: Sequence[_PluginEntry], tasks: Sequence[TaskStatus]
) -> tuple[list[str], list[str]]:
    """``(failures, warnings)``: plugins that did not load, tasks given up or crash-looping."""
    failures = [f"plugin {p.name}: {p.error or p.state}" for p in plugins if p.state == "error"]
    warnings: list[str] = []
    for task in tasks:
        why = f" ({task.last_error})" if task.last_error else ""
        if task.state == "failed":
            failures.append(f"task {task.name} gave up after {task.restarts} restart(s){why}")
        elif task.state == "backoff":
            warnings.append(f"task {task.name} crashed, restarting{why}")
    return failures, warnings


def _check_plugins(conn: Connection, status: StatusResult) -> DoctorCheck:
    try:
        plugins: list[_PluginEntry] | None = conn.call("plugins.list", Empty(), _PluginList).plugins
    except (MethodNotFound, msgspec.ValidationError):
        plugins = None  # an older daemon: its supervised tasks are all there is to see
    except PyraError as exc:
        return DoctorCheck(name="plugins", status="fail", detail=f"`plugins.list` failed: {exc}")
    failures, warnings = _plugin_findings(plugins or [], status.tasks)
    hint = (
        "`pyra plugin info NAME` shows why (the traceback is in `pyra logs`); "
        "Pyra runs without it, or `pyra plugin disable NAME`"
    )
    if failures or warnings:
        return DoctorCheck(
            name="plugins",
            status="fail" if failures else "warn",
            detail="; ".join([*failures, *warnings]),
            hint=hint,
        )
    running = sum(task.state == "running" for task in status.tasks)
    if plugins is None:
        return DoctorCheck(
            name="plugins", status="ok", detail=f"{running} background task(s) running"
        )
    active = sum(p.state == "active" for p in plugins)
    return DoctorCheck(
        name="plugins",
        status="ok",
        detail=f"{active} of {len(plugins)} plugin(s) active, {running} background task(s) running",
    )


@dataclass
class _DaemonView:
    checks: dict[str, DoctorCheck]
    status: StatusResult | None


def _ask_daemon(layout: Layout, options: DoctorOptions, lock: _Lock) -> _DaemonView:
    endpoint = _endpoint(layout)
    try:
        conn = Connection.open(endpoint=endpoint, client="cli", timeout=options.connect_timeout)
    except DaemonUnreachable:
        return _DaemonView({"daemon": _unreachable(layout, lock, endpoint)}, None)
    checks: dict[str, DoctorCheck] = {}
    with conn:
        conn.set_timeout(options.answer_timeout)
        try:
            status = conn.call("status", Empty(), StatusResult)
        except PyraError as exc:
            return _DaemonView(
                {
                    "daemon": DoctorCheck(
                        name="daemon",
                        status="fail",
                        detail=f"the daemon accepts connections at {endpoint.describe()} but "
                        f"does not answer `status`: {exc}",
                        hint="`pyra daemon restart`; `pyra logs` tells why",
                    )
                },
                None,
            )
        checks["daemon"] = _running(status)
        # Loading litellm for the probe takes seconds (more on a busy machine): not counted.
        conn.set_timeout(options.provider_timeout + _LITELLM_IMPORT_ALLOWANCE)
        try:
            result = conn.call(
                "doctor",
                DoctorParams(provider=options.probe_provider, timeout=options.provider_timeout),
                DoctorResult,
            )
            checks.update((check.name, check) for check in result.checks)
        except MethodNotFound:
            pass  # an older daemon: the client-side fallbacks apply
        except PyraError as exc:
            checks["provider"] = DoctorCheck(
                name="provider", status="fail", detail=f"the daemon's checks failed: {exc}"
            )
        conn.set_timeout(options.answer_timeout)
        checks["plugins"] = _check_plugins(conn, status)
    return _DaemonView(checks, status)


def _running(status: StatusResult) -> DoctorCheck:
    detail = f"pid {status.pid}, {status.endpoint}, version {status.version}"
    if status.version != __version__:
        return DoctorCheck(
            name="daemon",
            status="warn",
            detail=f"{detail}, but this `pyra` is {__version__}",
            hint="restart it to run the installed version: `pyra daemon restart` "
            "(or `pyra service install` under the service)",
        )
    return DoctorCheck(name="daemon", status="ok", detail=f"running: {detail}")


#: How ``python -m pyra_daemon`` reports a start it refuses (an invalid config, say).
_START_FAILURE = "pyra daemon: "


def _last_start_failure(layout: Layout) -> str | None:
    """The last line of ``logs/start.err`` (what an auto-started daemon printed before it
    died), unless the config was edited since: then it may be fixed."""
    start_err = layout.logs_dir / "start.err"
    try:
        text = start_err.read_text(encoding="utf-8", errors="replace")
        failed_at = start_err.stat().st_mtime
        edited_at = layout.config_file.stat().st_mtime if layout.config_file.exists() else 0.0
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # A refused start ends with the daemon's one-line complaint; a daemon that started and
    # ran leaves its log lines here instead (its stderr), ending with "stopped".
    if not lines or not lines[-1].startswith(_START_FAILURE) or failed_at < edited_at:
        return None
    return lines[-1].removeprefix(_START_FAILURE)


def _unreachable(layout: Layout, lock: _Lock, endpoint: Endpoint) -> DoctorCheck:
    if lock.running:
        who = f"pid {lock.pid}" if lock.pid is not None else "a daemon"
        return DoctorCheck(
            name="daemon",
            status="fail",
            detail=f"{who} holds the PID lock but does not answer at {endpoint.describe()}",
            hint="it may be hung: `pyra daemon restart`; `pyra logs` tells why",
        )
    failure = _last_start_failure(layout)
    if failure is not None:
        return DoctorCheck(
            name="daemon",
            status="fail",
            detail=f"not running; its last start failed: {failure}",
            hint="fix that, then `pyra daemon start`",
        )
    return DoctorCheck(
        name="daemon",
        status="warn",
        detail=f"not running: nothing answers at {endpoint.describe()}",
        hint="`pyra daemon start`, or let the next `pyra ask` start it",
    )


# --- All together ----------------------------------------------------------------------------


def diagnose(layout: Layout, options: DoctorOptions | None = None) -> list[DoctorCheck]:
    """Every check, in a stable order; see the module docstring."""
    options = options or DoctorOptions()
    toml, syntax = _read_toml(layout)
    permissions = check_permissions(layout.home, fix=options.fix)
    lock = daemon_lock(layout)
    view = _ask_daemon(layout, options, lock)
    if view.status is None:
        not_probed = "probed through the daemon, which is not running"
    else:
        not_probed = "this daemon has no `doctor` method: restart it after upgrading"
    checks = [
        view.checks.get("config", syntax),
        permissions,
        view.checks.get("vault") or _vault_files(layout),
        view.checks["daemon"],
        view.checks.get("provider")
        or DoctorCheck(name="provider", status="skipped", detail=not_probed),
        view.checks.get("plugins")
        or DoctorCheck(name="plugins", status="skipped", detail="the daemon is not running"),
        _check_service(options, lock),
    ]
    try:
        socket = default_socket_path(layout, _configured_socket(toml))
    except UsageError:
        socket = None
    checks.append(check_stale_files(layout, socket=socket, fix=options.fix))
    checks.append(
        check_litellm(options.litellm_version(), malicious_pth_files(options.site_dirs()))
    )
    return checks
