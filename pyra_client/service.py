"""Install Pyra as a service: a systemd user unit on Linux, a launchd agent on macOS.

:func:`plan_install` and :func:`plan_uninstall` render the templates in ``deploy/`` into an
:class:`InstallPlan`, an ordered list of steps (create a folder, write a file, remove a file, run
a command). :func:`execute` carries a plan out, or with ``dry_run`` only prints it.
:func:`service_status` asks the service manager how the service is doing, and
:func:`logs_command` builds the command that shows its logs.

What it deliberately does not do:

* It does not start or talk to the daemon: the service manager starts it, ``pyra status``
  talks to it. The one exception is a :class:`StopDaemon` step, which the caller carries out
  (``execute(stop=...)``): a daemon started on demand holds the PID lock, so the service's own
  daemon could not start beside it.
* It does not enable lingering (``loginctl enable-linger``), a system-wide setting: it prints
  the hint (:data:`LINGER_HINT`) and leaves the choice to the person.
* It uses no D-Bus or other library: it runs ``systemctl``, ``launchctl`` and ``journalctl``
  and reads their output. Standard library only, nothing from ``pyra_daemon``: the CLI
  imports it.

Every failure is a :class:`ServiceError` with one line that says what to do.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal, TypeAlias
from xml.parsers.expat import ExpatError

from pyra_client.errors import PyraError
from pyra_client.paths import Layout, pyra_home

__all__ = [
    "LAUNCHD_LABEL",
    "LAUNCHD_STDERR",
    "LAUNCHD_STDOUT",
    "LINGER_HINT",
    "UNIT_MODE",
    "UNIT_NAME",
    "InstallPlan",
    "MakeDir",
    "Manager",
    "RemoveFile",
    "Run",
    "RunResult",
    "Runner",
    "ServiceError",
    "ServiceStatus",
    "Step",
    "StopDaemon",
    "WriteFile",
    "execute",
    "find_template",
    "linger_enabled",
    "logs_command",
    "manager_for",
    "plan_install",
    "plan_uninstall",
    "plist_path",
    "pyra_executable",
    "render_launchd",
    "render_systemd",
    "run_command",
    "service_path",
    "service_status",
    "show_logs",
    "unit_path",
]

Manager: TypeAlias = Literal["systemd", "launchd"]

UNIT_NAME = "pyra.service"
LAUNCHD_LABEL = "com.pyra.daemon"
#: Where launchd sends the daemon's stdout and stderr, inside the Pyra home's ``logs/``.
LAUNCHD_STDOUT = "launchd.stdout.log"
LAUNCHD_STDERR = "launchd.stderr.log"

#: Unit file and plist mode. They hold paths, never secrets (those live in the vault), and
#: 0644 is what ``systemctl edit`` and macOS create; the managers only refuse files that
#: others can *write*, and nothing in them needs hiding from other local users.
UNIT_MODE = 0o644
#: New folders (``~/.config/systemd/user`` per the XDG spec, the Pyra home and its logs).
DIR_MODE = 0o700

#: ``systemctl --user restart`` waits for READY=1, which a first start may take a while to send.
COMMAND_TIMEOUT = 120.0
#: Appended to the PATH recorded in the service, so the basics resolve whatever the shell had.
FALLBACK_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")

LINGER_HINT = (
    "Note: systemd stops user services when you log out and starts them at your next login.\n"
    "To keep Pyra running without a login session, and to start it at boot, run once:\n"
    "    loginctl enable-linger $USER"
)

_SYSTEMD_TEMPLATE = "pyra.service.in"
_LAUNCHD_TEMPLATE = "com.pyra.daemon.plist.in"
_LINGER_DIR = Path("/var/lib/systemd/linger")
_EX_CONFIG = 78
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_EXECUTABLE = re.compile(r"[\"'\\]")


class ServiceError(PyraError):
    """Raised when the service cannot be rendered, installed, removed or queried."""


# --- Templates --------------------------------------------------------------------------------


def find_template(name: str) -> str:
    """The text of template *name*: from the installed wheel, else from the source tree.

    A wheel carries ``deploy/`` as ``pyra_client/deploy/`` (pyproject's force-include); a
    source checkout or editable install has it beside the packages.
    """
    if not name or name != Path(name).name or name in {".", ".."}:
        raise ValueError(f"not a template name: {name!r}")
    import importlib.resources  # only here: it costs ~10 ms to import

    packaged = importlib.resources.files("pyra_client").joinpath("deploy").joinpath(name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parent.parent / "deploy" / name
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise ServiceError(f"service template {name} is missing (looked in the package and {source})")


def _checked(what: str, value: str) -> str:
    if _CONTROL.search(value):
        raise ServiceError(f"{what} contains a control character, which a service file cannot hold")
    return value


def _absolute(what: str, path: Path) -> str:
    if not path.is_absolute():
        raise ServiceError(f"{what} must be an absolute path, not {path}")
    return _checked(what, str(path))


def _xml_escape(value: str) -> str:
    # xml.sax.saxutils.escape does the same but imports urllib and http.client (~18 ms).
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _systemd_escape(value: str) -> str:
    # Inside double quotes systemd reads C escapes and expands % specifiers (Environment= does
    # not expand $VARIABLES). Escape them so the value arrives exactly as given.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _systemd_executable(value: str) -> str:
    # systemd refuses quotes and backslashes in an executable's name, expands % specifiers in
    # it but no $VARIABLES (so a $ stays as it is), and needs quotes around whitespace.
    if _UNSAFE_EXECUTABLE.search(value):
        raise ServiceError(
            f"systemd cannot run a program whose path contains quotes or backslashes: {value}"
        )
    escaped = value.replace("%", "%%")
    return f'"{escaped}"' if re.search(r"\s", value) else escaped


def service_path() -> str:
    """The PATH recorded in the service: this shell's absolute entries, then the basics."""
    entries: list[str] = []
    for entry in (*os.environ.get("PATH", "").split(os.pathsep), *FALLBACK_PATH):
        if entry and os.path.isabs(entry) and entry not in entries:
            entries.append(entry)
    return os.pathsep.join(entries)


def render_systemd(*, exec_path: Path, home: Path, path_env: str | None = None) -> str:
    """The systemd user unit that runs ``<exec_path> daemon run`` with ``PYRA_HOME=<home>``."""
    values = {
        "exec": _systemd_executable(_absolute("the pyra executable", exec_path)),
        "home": _systemd_escape(_absolute("PYRA_HOME", home)),
        "path_env": _systemd_escape(
            _checked("PATH", service_path() if path_env is None else path_env)
        ),
    }
    return Template(find_template(_SYSTEMD_TEMPLATE)).substitute(values)


def render_launchd(*, exec_path: Path, home: Path, path_env: str | None = None) -> bytes:
    """The launchd agent plist for the same command, checked by parsing it back."""
    values = {
        "exec": _absolute("the pyra executable", exec_path),
        "home": _absolute("PYRA_HOME", home),
        "log_dir": _absolute("the log folder", Layout(home).logs_dir),
        "path_env": _checked("PATH", service_path() if path_env is None else path_env),
    }
    text = Template(find_template(_LAUNCHD_TEMPLATE)).substitute(
        {key: _xml_escape(value) for key, value in values.items()}
    )
    data = text.encode("utf-8")
    try:
        parsed = plistlib.loads(data, fmt=plistlib.FMT_XML)
    except (ExpatError, plistlib.InvalidFileException, ValueError) as exc:
        raise ServiceError(f"the rendered launchd plist is invalid: {exc}") from exc
    if parsed.get("ProgramArguments", [None])[0] != values["exec"]:
        raise ServiceError("the rendered launchd plist does not run the pyra executable")
    return data


# --- Where things go --------------------------------------------------------------------------


def unit_path() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user/pyra.service`` (``~/.config`` when unset or relative)."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user" / UNIT_NAME


def plist_path() -> Path:
    """``~/Library/LaunchAgents/com.pyra.daemon.plist``."""
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def pyra_executable(argv0: str | None = None) -> Path:
    """The installed ``pyra`` command as an absolute path.

    The script running now if it is ``pyra`` (so ``/opt/x/.venv/bin/pyra service install``
    installs that one even when another ``pyra`` comes first on PATH), else ``pyra`` on PATH.
    Symlinks are kept, not resolved: Homebrew's ``/opt/homebrew/bin/pyra`` survives an upgrade,
    the versioned Cellar path it points to does not.
    """
    running = sys.argv[0] if argv0 is None else argv0
    candidates = [running] if running and Path(running).name == "pyra" else []
    on_path = shutil.which("pyra")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        path = Path(os.path.abspath(candidate))
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServiceError(
        "cannot find the installed `pyra` command: put it on PATH "
        "(e.g. `make install`, then add .venv/bin to PATH) and run this again"
    )


def manager_for(platform: str) -> Manager:
    """The service manager Pyra uses on *platform* (a ``sys.platform`` value)."""
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise ServiceError(
        f"`pyra service` supports Linux (systemd) and macOS (launchd), not {platform}"
    )


def linger_enabled(user: str | None = None) -> bool:
    """Whether systemd keeps *user*'s services running without a login session."""
    try:
        name = getpass.getuser() if user is None else user
    except (KeyError, OSError):
        return False
    return (_LINGER_DIR / name).exists()


# --- Plans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MakeDir:
    """Create *path* and its missing parents, each new folder with *mode*."""

    path: Path
    mode: int = DIR_MODE


@dataclass(frozen=True)
class WriteFile:
    """Write *content* to *path* atomically, with exactly *mode*."""

    path: Path
    content: bytes
    mode: int = UNIT_MODE


@dataclass(frozen=True)
class RemoveFile:
    """Remove *path* if it exists."""

    path: Path


@dataclass(frozen=True)
class Run:
    """Run *argv*; with ``check=False`` a failure is expected and harmless (not loaded, say)."""

    argv: tuple[str, ...]
    check: bool = True


@dataclass(frozen=True)
class StopDaemon:
    """Stop the daemon *pid*, started outside the service: it holds this home's PID lock."""

    pid: int


Step: TypeAlias = MakeDir | WriteFile | RemoveFile | Run | StopDaemon


@dataclass(frozen=True)
class InstallPlan:
    """What an install or uninstall does, in order, and what to tell the person afterwards."""

    manager: Manager
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[WriteFile, ...]:
        return tuple(step for step in self.steps if isinstance(step, WriteFile))

    @property
    def commands(self) -> tuple[tuple[str, ...], ...]:
        return tuple(step.argv for step in self.steps if isinstance(step, Run))


def _systemctl(*args: str) -> tuple[str, ...]:
    return ("systemctl", "--user", *args)


def _launchd_target(uid: int | None) -> tuple[str, str]:
    domain = f"gui/{os.getuid() if uid is None else uid}"
    return domain, f"{domain}/{LAUNCHD_LABEL}"


def plan_install(
    platform: str = sys.platform,
    *,
    exec_path: Path | None = None,
    home: Path | None = None,
    start: bool = True,
    uid: int | None = None,
    foreign_pid: int | None = None,
) -> InstallPlan:
    """Steps that install (or re-install) and enable the service, and start it if *start*.

    A re-install restarts a running service, so a new ``pyra`` or unit takes effect.
    *foreign_pid* is a daemon running outside the service (started on demand by ``pyra ask``
    or ``pyra daemon start``): it is stopped right before the service starts.
    """
    manager = manager_for(platform)
    exe = pyra_executable() if exec_path is None else exec_path
    pyra = pyra_home() if home is None else home
    handover: list[Step] = [StopDaemon(foreign_pid)] if start and foreign_pid else []
    if manager == "systemd":
        unit = unit_path()
        steps: list[Step] = [
            MakeDir(unit.parent),
            WriteFile(unit, render_systemd(exec_path=exe, home=pyra).encode("utf-8")),
            Run(_systemctl("daemon-reload")),
            Run(_systemctl("enable", UNIT_NAME)),
        ]
        if start:
            steps += [*handover, Run(_systemctl("restart", UNIT_NAME))]
            notes = [f"Pyra runs as the systemd user service {UNIT_NAME}."]
        else:
            notes = [
                f"Installed and enabled; it starts at your next login, "
                f"or now with `systemctl --user start {UNIT_NAME}`."
            ]
        notes.append("Check it with `pyra service status`, read it with `pyra service logs -f`.")
        if not linger_enabled():
            notes.append(LINGER_HINT)
        return InstallPlan(manager, tuple(steps), tuple(notes))

    plist = plist_path()
    domain, target = _launchd_target(uid)
    steps = [
        MakeDir(Layout(pyra).logs_dir),
        MakeDir(plist.parent),
        WriteFile(plist, render_launchd(exec_path=exe, home=pyra)),
    ]
    if start:
        steps += [
            # Unload an earlier version first: bootstrap refuses a label that is loaded.
            Run(("launchctl", "bootout", target), check=False),
            # Clears a `launchctl disable`, which would make bootstrap fail.
            Run(("launchctl", "enable", target)),
            *handover,
            Run(("launchctl", "bootstrap", domain, str(plist))),
        ]
        notes = [f"Pyra runs as the launchd agent {LAUNCHD_LABEL} and starts at every login."]
    else:
        notes = [
            f"Installed; it starts at your next login, "
            f"or now with `launchctl bootstrap {domain} {shlex.quote(str(plist))}`."
        ]
    notes.append("Check it with `pyra service status`, read it with `pyra service logs -f`.")
    return InstallPlan(manager, tuple(steps), tuple(notes))


def plan_uninstall(platform: str = sys.platform, *, uid: int | None = None) -> InstallPlan:
    """Steps that stop, disable and remove the service; Pyra's home is left alone."""
    manager = manager_for(platform)
    path = unit_path() if manager == "systemd" else plist_path()
    if not path.exists():
        return InstallPlan(manager, (), (f"Nothing to remove: {path} does not exist.",))
    notes = ["Removed the service. Pyra's home and everything in it are untouched."]
    if manager == "systemd":
        steps: tuple[Step, ...] = (
            Run(_systemctl("disable", "--now", UNIT_NAME)),
            RemoveFile(path),
            Run(_systemctl("daemon-reload")),
            # Forgets a "failed" state; fails harmlessly once the unit is unloaded.
            Run(_systemctl("reset-failed", UNIT_NAME), check=False),
        )
        drop_ins = path.with_name(UNIT_NAME + ".d")
        if drop_ins.is_dir():
            notes.append(f"Your drop-ins in {drop_ins} were kept.")
    else:
        _, target = _launchd_target(uid)
        steps = (Run(("launchctl", "bootout", target), check=False), RemoveFile(path))
    return InstallPlan(manager, steps, tuple(notes))


# --- Running a plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """What a command printed and how it exited."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


#: Runs a command and returns its result; raises :class:`ServiceError` if it cannot be run.
Runner: TypeAlias = Callable[[Sequence[str]], RunResult]


def run_command(argv: Sequence[str]) -> RunResult:
    """The real :data:`Runner`: *argv* without a shell, output captured, with a time limit."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise ServiceError(f"`{argv[0]}` is not installed or not on PATH; `pyra service` needs it")
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv from this module, no shell
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"`{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT:.0f} s"
        ) from exc
    except OSError as exc:
        raise ServiceError(f"`{shlex.join(argv)}` could not run: {exc}") from exc
    return RunResult(done.returncode, done.stdout, done.stderr)


def _first_line(*texts: str) -> str:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()
    return "no output"


def _failure(argv: Sequence[str], result: RunResult) -> ServiceError:
    reason = _first_line(result.stderr, result.stdout)
    message = f"`{shlex.join(argv)}` failed (exit status {result.returncode}): {reason}"
    if "Failed to connect to bus" in reason:
        message += " (no systemd user session here: log in again, or use `loginctl enable-linger`)"
    return ServiceError(
        message, command=list(argv), returncode=result.returncode, stderr=result.stderr[-2000:]
    )


def _make_dirs(path: Path, mode: int) -> bool:
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=mode)
        folder.chmod(mode)  # mkdir's mode is filtered by the umask
    return bool(missing)


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _describe(step: Step) -> str:
    if isinstance(step, MakeDir):
        return f"create folder {step.path} (mode {step.mode:04o})"
    if isinstance(step, WriteFile):
        return f"write {step.path} (mode {step.mode:04o})"
    if isinstance(step, RemoveFile):
        return f"remove {step.path}"
    if isinstance(step, StopDaemon):
        return f"stop the Pyra daemon started outside the service (pid {step.pid})"
    return f"run: {shlex.join(step.argv)}"


def _apply(
    step: Step, run: Runner, echo: Callable[[str], None], stop: Callable[[int], object] | None
) -> None:
    if isinstance(step, StopDaemon):
        if stop is None:
            raise ServiceError(f"cannot {_describe(step)}: stop it, then install again")
        echo(_describe(step))
        stop(step.pid)
        return
    if isinstance(step, Run):
        echo(_describe(step))
        result = run(step.argv)
        if step.check and result.returncode != 0:
            raise _failure(step.argv, result)
        return
    try:
        if isinstance(step, MakeDir):
            if _make_dirs(step.path, step.mode):
                echo(_describe(step))
            return
        echo(_describe(step))
        if isinstance(step, WriteFile):
            _write_atomic(step.path, step.content, step.mode)
        else:
            step.path.unlink(missing_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot {_describe(step)}: {exc.strerror or exc}") from exc


def execute(
    plan: InstallPlan,
    *,
    dry_run: bool,
    echo: Callable[[str], None],
    run: Runner = run_command,
    stop: Callable[[int], object] | None = None,
) -> None:
    """Carry out *plan* step by step, echoing each; stop at the first failure.

    With *dry_run*, print every step (files in full) and change nothing. *stop* carries out
    a :class:`StopDaemon` step (the CLI stops the daemon over IPC); without it, such a step
    fails with a clear message.
    """
    if dry_run:
        echo("Dry run: nothing below is written, removed or run.")
        for step in plan.steps:
            echo(_describe(step) + (":" if isinstance(step, WriteFile) else ""))
            if isinstance(step, WriteFile):
                for line in step.content.decode("utf-8").splitlines():
                    echo(f"    {line}".rstrip())
    else:
        for step in plan.steps:
            _apply(step, run, echo, stop)
    for note in plan.notes:
        echo(note)


# --- Status and logs --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """How the service is doing, as far as the service manager knows.

    ``None`` means "could not be found out"; ``detail`` says why, or what to do next.
    """

    manager: Manager
    unit_file: Path
    installed: bool
    reachable: bool
    enabled: bool | None = None
    state: str | None = None
    running: bool = False
    pid: int | None = None
    last_exit_status: int | None = None
    restarts: int | None = None
    detail: str = ""

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["unit_file"] = str(self.unit_file)
        return json.dumps(fields, indent=2)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _systemd_status(run: Runner) -> ServiceStatus:
    path = unit_path()
    installed = path.exists()
    argv = _systemctl(
        "show",
        UNIT_NAME,
        "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecMainStatus,NRestarts",
    )
    try:
        result = run(argv)
    except ServiceError as exc:
        return ServiceStatus("systemd", path, installed, reachable=False, detail=str(exc))
    if result.returncode != 0:
        reason = str(_failure(argv, result))
        return ServiceStatus("systemd", path, installed, reachable=False, detail=reason)
    props: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    active = props.get("ActiveState") or None
    sub = props.get("SubState")
    running = active in {"active", "reloading", "deactivating"}
    pid = _int_or_none(props.get("MainPID"))
    exit_status = None if running else _int_or_none(props.get("ExecMainStatus"))
    detail = ""
    if exit_status == _EX_CONFIG:
        detail = "the daemon stopped because its config is invalid (exit 78): run `pyra doctor`"
    elif active == "failed":
        detail = "the service failed: see `pyra service logs`"
    elif props.get("LoadState") == "not-found":
        detail = "not installed: run `pyra service install`"
    return ServiceStatus(
        "systemd",
        path,
        installed,
        reachable=True,
        enabled=props.get("UnitFileState") in {"enabled", "enabled-runtime", "linked"},
        state=f"{active} ({sub})" if active and sub and sub != active else active,
        running=running,
        pid=pid or None,
        last_exit_status=exit_status,
        restarts=_int_or_none(props.get("NRestarts")),
        detail=detail,
    )


def _launchd_field(text: str, name: str) -> str | None:
    match = re.search(rf"^\s*{re.escape(name)} = (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _launchd_status(run: Runner, uid: int | None) -> ServiceStatus:
    path = plist_path()
    installed = path.exists()
    _, target = _launchd_target(uid)
    try:
        result = run(("launchctl", "print", target))
    except ServiceError as exc:
        return ServiceStatus("launchd", path, installed, reachable=False, detail=str(exc))
    if result.returncode != 0:
        return ServiceStatus(
            "launchd",
            path,
            installed,
            reachable=True,
            enabled=installed,
            state="not loaded",
            detail="" if installed else "not installed: run `pyra service install`",
        )
    state = _launchd_field(result.stdout, "state")
    exit_text = _launchd_field(result.stdout, "last exit code") or ""
    exit_status = _int_or_none(exit_text.split(":")[0].strip()) if exit_text[:1].isdigit() else None
    runs = _int_or_none(_launchd_field(result.stdout, "runs"))
    detail = ""
    if exit_status == _EX_CONFIG and state != "running":
        detail = "the daemon stopped because its config is invalid (exit 78): run `pyra doctor`"
    return ServiceStatus(
        "launchd",
        path,
        installed,
        reachable=True,
        enabled=installed,
        state=state,
        running=state == "running",
        pid=_int_or_none(_launchd_field(result.stdout, "pid")),
        last_exit_status=exit_status,
        restarts=max(runs - 1, 0) if runs is not None else None,
        detail=detail,
    )


def service_status(
    platform: str = sys.platform, *, run: Runner = run_command, uid: int | None = None
) -> ServiceStatus:
    """Ask systemd (``systemctl --user show``) or launchd (``launchctl print``) about Pyra."""
    if manager_for(platform) == "systemd":
        return _systemd_status(run)
    return _launchd_status(run, uid)


def logs_command(follow: bool, lines: int, platform: str = sys.platform) -> list[str]:
    """The command that shows the service's last *lines* log lines (and more, if *follow*).

    systemd: ``journalctl --user-unit``, which reads the user's own journal and, where the
    person may read it, the system journal (volatile journals keep user units' lines there).
    launchd: ``tail`` of the daemon's own log file and of what launchd caught on stderr.
    """
    if lines < 0:
        raise ServiceError(f"the number of lines must be 0 or more, not {lines}")
    if manager_for(platform) == "systemd":
        argv = ["journalctl", "--user-unit", UNIT_NAME, "--lines", str(lines), "--no-pager"]
        return [*argv, "--follow"] if follow else argv
    layout = Layout(pyra_home())
    files = [str(layout.log_file), str(layout.logs_dir / LAUNCHD_STDERR)]
    return ["tail", "-n", str(lines), *(["-F"] if follow else []), *files]


def show_logs(follow: bool, lines: int, platform: str = sys.platform) -> int:
    """Run :func:`logs_command` on this terminal; returns its exit status (0 after Ctrl-C)."""
    argv = logs_command(follow, lines, platform)
    exe = shutil.which(argv[0])
    if exe is None:
        raise ServiceError(f"`{argv[0]}` is not installed or not on PATH; cannot show the logs")
    try:
        return subprocess.call([exe, *argv[1:]])  # noqa: S603 - a fixed argv, no shell
    except KeyboardInterrupt:
        return 0
