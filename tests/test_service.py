"""`pyra service` and sd_notify, checked by the real tools.

- The rendered unit goes through ``systemd-analyze verify --user`` (skipped where systemd's
  tools are not installed: Debian's ``systemd`` package provides them).
- The rendered plist goes through ``plistlib`` (Debian has no ``plutil``).
- Installs run for real into a temporary ``$HOME``/``$XDG_CONFIG_HOME``; only the service
  manager's commands are replaced, through the ``run=`` seam, by a recording runner.
- sd_notify messages travel over a real AF_UNIX datagram socket in a short temporary folder
  (pytest's ``tmp_path`` can exceed the 108-byte ``sun_path`` limit).
"""

from __future__ import annotations

import logging
import os
import plistlib
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyra_client import service
from pyra_client.cli.service import app
from pyra_client.errors import PyraError
from pyra_daemon import notify

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: package systemd)"
)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@dataclass
class Env:
    """A private world for one test: home, XDG config, Pyra home and a fake `pyra` on PATH."""

    home: Path
    config: Path
    pyra_home: Path
    pyra: Path


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    pyra = _executable(tmp_path / "bin" / "pyra")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("PYRA_HOME", str(tmp_path / "pyra home"))
    monkeypatch.setenv("PATH", f"{pyra.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return Env(home=home, config=config, pyra_home=tmp_path / "pyra home", pyra=pyra)


@dataclass
class RecordingRunner:
    """Stands in for systemctl/launchctl: records each argv, answers from a script."""

    answers: dict[tuple[str, ...], service.RunResult] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str]) -> service.RunResult:
        self.calls.append(tuple(argv))
        return self.answers.get(tuple(argv), service.RunResult(0))


def _settings(unit: str) -> list[tuple[str, str]]:
    """The unit's ``Key=value`` lines in order (systemd allows repeated keys)."""
    pairs = []
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    unit = tmp_path / "units" / "pyra.service"
    unit.parent.mkdir()
    unit.write_text(unit_text)
    runtime = Path(tempfile.mkdtemp(prefix="pyra"))
    runtime.chmod(0o700)
    try:
        return subprocess.run(
            [SYSTEMD_ANALYZE, "verify", "--user", str(unit)],
            capture_output=True,
            text=True,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# --- systemd unit ---------------------------------------------------------------------------


@needs_systemd_analyze
@pytest.mark.parametrize("folder", ["bin", "my tools %n $HOME"])
def test_rendered_unit_passes_systemd_analyze_verify_without_a_warning(
    tmp_path: Path, folder: str
) -> None:
    exe = _executable(tmp_path / folder / "pyra")
    unit = service.render_systemd(
        exec_path=exe, home=tmp_path / 'pyra home %h "x"', path_env="/usr/bin:/bin"
    )

    result = _verify(unit, tmp_path)

    assert result.stderr == ""
    assert result.returncode == 0


@needs_systemd_analyze
def test_unit_for_the_real_pyra_script_passes_verify(tmp_path: Path) -> None:
    real = Path(sys.executable).parent / "pyra"
    if not real.is_file():
        pytest.skip("no pyra script beside this interpreter (not an installed venv)")
    unit = service.render_systemd(exec_path=real, home=tmp_path / ".pyra")

    result = _verify(unit, tmp_path)

    assert (result.returncode, result.stderr) == (0, "")


def test_unit_has_the_promised_settings(tmp_path: Path) -> None:
    exe = _executable(tmp_path / "bin" / "pyra")
    unit = service.render_systemd(exec_path=exe, home=tmp_path / "h", path_env="/usr/bin")
    settings = _settings(unit)
    values = dict(settings)

    assert values["Type"] == "notify"
    assert values["NotifyAccess"] == "main"
    assert values["ExecStart"] == f"{exe} daemon run"
    assert values["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert values["WatchdogSec"] == "30"
    assert (values["Restart"], values["RestartSec"]) == ("on-failure", "2")
    assert values["RestartPreventExitStatus"] == "78"
    assert (values["TimeoutStopSec"], values["KillMode"]) == ("30", "mixed")
    assert values["UMask"] == "0077"
    assert values["LimitCORE"] == "0"
    assert values["WantedBy"] == "default.target"
    environment = [value for key, value in settings if key == "Environment"]
    assert f'"PYRA_HOME={tmp_path / "h"}"' in environment
    assert '"PATH=/usr/bin"' in environment
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in environment
    for key in ("NoNewPrivileges", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID"):
        assert values[key] == "yes"
    assert values["SystemCallArchitectures"] == "native"
    # Settings that need namespaces or capabilities break or do nothing in a user unit.
    for key in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateUsers",
        "PrivateDevices",
        "CapabilityBoundingSet",
        "MemoryDenyWriteExecute",
    ):
        assert key not in values


def test_unit_refuses_an_executable_path_systemd_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(service.ServiceError, match="quotes or backslashes"):
        service.render_systemd(exec_path=tmp_path / 'a"b' / "pyra", home=tmp_path)


def test_unit_refuses_control_characters_and_relative_paths(tmp_path: Path) -> None:
    with pytest.raises(service.ServiceError, match="control character"):
        service.render_systemd(exec_path=tmp_path / "pyra", home=tmp_path / "a\nb")
    with pytest.raises(service.ServiceError, match="absolute"):
        service.render_systemd(exec_path=Path("pyra"), home=tmp_path)


# --- launchd plist --------------------------------------------------------------------------


def test_plist_loads_with_the_expected_keys(tmp_path: Path) -> None:
    exe = tmp_path / "bin & co" / "pyra"
    home = tmp_path / "<pyra>"

    data = service.render_launchd(exec_path=exe, home=home, path_env="/usr/bin:/bin")
    plist = plistlib.loads(data)

    assert plist["Label"] == "com.pyra.daemon"
    assert plist["ProgramArguments"] == [str(exe), "daemon", "run"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["EnvironmentVariables"] == {
        "PYRA_HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    assert plist["StandardOutPath"] == str(home / "logs" / service.LAUNCHD_STDOUT)
    assert plist["StandardErrorPath"] == str(home / "logs" / service.LAUNCHD_STDERR)
    assert plist["ProcessType"] == "Background"
    assert plist["Umask"] == 0o077
    assert plist["SoftResourceLimits"] == plist["HardResourceLimits"] == {"Core": 0}


# --- install, dry run -----------------------------------------------------------------------


@linux_only
def test_dry_run_install_prints_the_unit_and_commands_and_writes_nothing(env: Env) -> None:
    result = CliRunner().invoke(app, ["install", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "Dry run" in result.output
    assert f"write {env.config / 'systemd' / 'user' / 'pyra.service'} (mode 0644):" in (
        result.output
    )
    assert f"    ExecStart={env.pyra} daemon run" in result.output
    assert "run: systemctl --user daemon-reload" in result.output
    assert "run: systemctl --user enable pyra.service" in result.output
    assert "run: systemctl --user restart pyra.service" in result.output
    assert list(env.config.iterdir()) == []
    assert not env.pyra_home.exists()


@linux_only
def test_dry_run_uninstall_when_nothing_is_installed_says_so(env: Env) -> None:
    result = CliRunner().invoke(app, ["uninstall", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "Nothing to remove" in result.output


def test_launchd_dry_run_shows_plist_and_launchctl_and_writes_nothing(env: Env) -> None:
    lines: list[str] = []
    plan = service.plan_install("darwin", uid=501)

    service.execute(plan, dry_run=True, echo=lines.append)

    output = "\n".join(lines)
    plist = env.home / "Library" / "LaunchAgents" / "com.pyra.daemon.plist"
    assert f"write {plist} (mode 0644):" in output
    assert "<string>com.pyra.daemon</string>" in output
    assert f"run: launchctl bootstrap gui/501 {plist}" in output
    assert list(env.home.iterdir()) == []
    assert not env.pyra_home.exists()


# --- install, for real ----------------------------------------------------------------------


def test_install_writes_the_unit_and_enables_it_and_uninstall_removes_it(env: Env) -> None:
    runner = RecordingRunner()
    lines: list[str] = []
    unit = env.config / "systemd" / "user" / "pyra.service"

    service.execute(service.plan_install("linux"), dry_run=False, echo=lines.append, run=runner)

    assert unit.read_text() == service.render_systemd(exec_path=env.pyra, home=env.pyra_home)
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(unit.parent.stat().st_mode) == 0o700
    assert runner.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "pyra.service"),
        ("systemctl", "--user", "restart", "pyra.service"),
    ]
    assert [p.name for p in unit.parent.iterdir()] == ["pyra.service"]  # no temp file left
    if not service.linger_enabled():
        assert service.LINGER_HINT in lines

    runner.calls.clear()
    service.execute(service.plan_uninstall("linux"), dry_run=False, echo=lines.append, run=runner)

    assert not unit.exists()
    assert runner.calls == [
        ("systemctl", "--user", "disable", "--now", "pyra.service"),
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "reset-failed", "pyra.service"),
    ]


def test_reinstall_replaces_the_unit_and_no_start_only_enables(env: Env) -> None:
    runner = RecordingRunner()
    unit = env.config / "systemd" / "user" / "pyra.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("old")

    plan = service.plan_install("linux", start=False)
    service.execute(plan, dry_run=False, echo=lambda _: None, run=runner)

    assert unit.read_text().startswith("# Pyra: systemd user unit")
    assert ("systemctl", "--user", "restart", "pyra.service") not in runner.calls
    assert runner.calls[-1] == ("systemctl", "--user", "enable", "pyra.service")


def test_launchd_install_creates_private_log_folder_and_bootstraps(env: Env) -> None:
    # bootout of a job that is not loaded fails; the plan expects that.
    runner = RecordingRunner(
        answers={
            ("launchctl", "bootout", "gui/501/com.pyra.daemon"): service.RunResult(
                113, stderr="Boot-out failed: 113: Could not find specified service"
            )
        }
    )
    plist = env.home / "Library" / "LaunchAgents" / "com.pyra.daemon.plist"

    plan = service.plan_install("darwin", uid=501)
    service.execute(plan, dry_run=False, echo=lambda _: None, run=runner)

    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][0] == str(env.pyra)
    assert stat.S_IMODE((env.pyra_home / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE(env.pyra_home.stat().st_mode) == 0o700
    assert runner.calls[-1] == ("launchctl", "bootstrap", "gui/501", str(plist))

    service.execute(
        service.plan_uninstall("darwin", uid=501), dry_run=False, echo=lambda _: None, run=runner
    )
    assert not plist.exists()


def test_a_failing_systemctl_is_one_clear_line(env: Env) -> None:
    runner = RecordingRunner(
        answers={
            ("systemctl", "--user", "daemon-reload"): service.RunResult(
                1, stderr="Failed to connect to bus: No medium found\n"
            )
        }
    )

    with pytest.raises(service.ServiceError) as caught:
        service.execute(
            service.plan_install("linux"), dry_run=False, echo=lambda _: None, run=runner
        )

    message = str(caught.value)
    assert isinstance(caught.value, PyraError)
    assert "\n" not in message
    assert "`systemctl --user daemon-reload` failed (exit status 1)" in message
    assert "loginctl enable-linger" in message
    assert caught.value.data["returncode"] == 1


def test_a_missing_service_manager_is_a_service_error() -> None:
    with pytest.raises(service.ServiceError, match="not installed or not on PATH"):
        service.run_command(["pyra-test-no-such-tool-" + secrets.token_hex(4)])


def test_unsupported_platform_is_refused() -> None:
    with pytest.raises(service.ServiceError, match=r"Linux .* macOS"):
        service.plan_install("win32", exec_path=Path("/x/pyra"), home=Path("/h"))


# --- finding things -------------------------------------------------------------------------


def test_pyra_executable_prefers_the_running_script_then_path(env: Env, tmp_path: Path) -> None:
    other = _executable(tmp_path / "venv" / "bin" / "pyra")

    assert service.pyra_executable(argv0=str(other)) == other
    assert service.pyra_executable(argv0="/usr/bin/pytest") == env.pyra


def test_pyra_executable_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(service.ServiceError, match="cannot find the installed `pyra`"):
        service.pyra_executable(argv0="python")


def test_unit_path_honours_xdg_config_home_only_when_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    assert service.unit_path() == tmp_path / ".config" / "systemd" / "user" / "pyra.service"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert service.unit_path() == tmp_path / "xdg" / "systemd" / "user" / "pyra.service"


def test_templates_are_found_in_the_source_tree_and_names_cannot_escape() -> None:
    assert "Type=notify" in service.find_template("pyra.service.in")
    with pytest.raises(ValueError, match="not a template name"):
        service.find_template("../pyproject.toml")


# --- status and logs ------------------------------------------------------------------------


def _show(**props: str) -> service.RunResult:
    return service.RunResult(0, stdout="".join(f"{k}={v}\n" for k, v in props.items()))


SHOW = (
    "systemctl",
    "--user",
    "show",
    "pyra.service",
    "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecMainStatus,NRestarts",
)


def test_status_of_a_running_systemd_service(env: Env) -> None:
    runner = RecordingRunner(
        answers={
            SHOW: _show(
                LoadState="loaded",
                ActiveState="active",
                SubState="running",
                UnitFileState="enabled",
                MainPID="4242",
                ExecMainStatus="0",
                NRestarts="1",
            )
        }
    )

    status = service.service_status("linux", run=runner)

    assert status.running
    assert (status.enabled, status.pid, status.restarts) == (True, 4242, 1)
    assert status.state == "active (running)"
    assert status.last_exit_status is None


def test_status_points_to_doctor_after_a_config_error(env: Env) -> None:
    runner = RecordingRunner(
        answers={
            SHOW: _show(
                LoadState="loaded",
                ActiveState="failed",
                SubState="failed",
                UnitFileState="enabled",
                MainPID="0",
                ExecMainStatus="78",
                NRestarts="0",
            )
        }
    )

    status = service.service_status("linux", run=runner)

    assert not status.running
    assert status.state == "failed"
    assert status.pid is None
    assert status.last_exit_status == 78
    assert "pyra doctor" in status.detail
    assert '"last_exit_status": 78' in status.to_json()


def test_status_without_a_user_bus_is_reported_not_raised(env: Env) -> None:
    runner = RecordingRunner(
        answers={SHOW: service.RunResult(1, stderr="Failed to connect to bus: No medium found")}
    )

    status = service.service_status("linux", run=runner)

    assert not status.reachable
    assert "Failed to connect to bus" in status.detail


@linux_only
def test_status_command_exits_3_when_no_service_runs(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real systemctl (if any), cut off from any user manager that may run on this machine.
    runtime = tempfile.mkdtemp(prefix="pyra")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={runtime}/no-bus")
    try:
        result = CliRunner().invoke(app, ["status", "--json"])
    finally:
        shutil.rmtree(runtime, ignore_errors=True)

    assert result.exit_code == 3, result.output
    assert '"manager": "systemd"' in result.output
    assert '"running": false' in result.output


def test_status_of_a_launchd_agent(env: Env) -> None:
    printed = (
        "gui/501/com.pyra.daemon = {\n"
        "\tactive count = 1\n"
        "\tstate = running\n"
        "\truns = 3\n"
        "\tpid = 777\n"
        "\tlast exit code = 78: EX_CONFIG\n"
        "}\n"
    )
    runner = RecordingRunner(
        answers={("launchctl", "print", "gui/501/com.pyra.daemon"): service.RunResult(0, printed)}
    )

    status = service.service_status("darwin", run=runner, uid=501)

    assert status.running
    assert (status.pid, status.restarts, status.last_exit_status) == (777, 2, 78)


def test_logs_command() -> None:
    assert service.logs_command(follow=False, lines=20, platform="linux") == [
        "journalctl",
        "--user-unit",
        "pyra.service",
        "--lines",
        "20",
        "--no-pager",
    ]
    assert service.logs_command(follow=True, lines=5, platform="linux")[-1] == "--follow"
    darwin = service.logs_command(follow=True, lines=5, platform="darwin")
    assert darwin[:4] == ["tail", "-n", "5", "-F"]
    assert darwin[-1].endswith(service.LAUNCHD_STDERR)
    with pytest.raises(service.ServiceError, match="0 or more"):
        service.logs_command(follow=False, lines=-1, platform="linux")


# --- sd_notify ------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    folder = tempfile.mkdtemp(prefix="pyra")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_ready_reaches_the_notify_socket(notify_socket: socket.socket) -> None:
    assert notify.ready() is True
    assert notify_socket.recv(4096) == b"READY=1"


def test_reloading_carries_the_monotonic_clock(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert notify.reloading()

    first, second = notify_socket.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= before + 5_000_000


def test_other_states_and_a_one_line_status(notify_socket: socket.socket) -> None:
    assert notify.stopping()
    assert notify.watchdog()
    assert notify.status("ready:\n2 plugins")

    received = [notify_socket.recv(4096) for _ in range(3)]
    assert received == [b"STOPPING=1", b"WATCHDOG=1", b"STATUS=ready: 2 plugins"]


@linux_only
def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pyra-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert notify.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert notify.ready() is False


def test_a_dead_notify_socket_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tempfile.mkdtemp(prefix="pyra")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(folder, "gone"))
        with caplog.at_level(logging.WARNING, logger="pyra_daemon.notify"):
            assert notify.ready() is False
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("15000000", "self", 15.0),
        ("30000000", "1", None),
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)

    assert notify.watchdog_interval() == expected


# --- a daemon started on demand hands over to the service ---------------------------------------


def test_install_stops_a_daemon_running_outside_the_service_first(
    env: Env, pyra_home: Path
) -> None:
    from pyra_client.cli.daemon import running_pid, stop_daemon
    from pyra_client.paths import Layout
    from tests.conftest import DaemonHandle, clean_env

    config = pyra_home / "config.toml"
    config.write_text(config.read_text() + "warm_up = false\n")
    layout = Layout(pyra_home)
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()  # as `pyra ask` would have: it holds the PID lock
    assert handle.process is not None
    # Reap it as init would (`pyra ask` has long exited): a zombie would look alive.
    reaper = threading.Thread(target=handle.process.wait, daemon=True)
    reaper.start()
    holder_at_restart: list[int | None] = []

    def systemctl(argv: Sequence[str]) -> service.RunResult:
        if argv[-2:] == ("restart", "pyra.service"):
            holder_at_restart.append(running_pid(layout))
        return service.RunResult(0)

    try:
        plan = service.plan_install("linux", home=pyra_home, foreign_pid=handle.pid)
        lines: list[str] = []
        service.execute(
            plan,
            dry_run=False,
            echo=lines.append,
            run=systemctl,
            stop=lambda _pid: stop_daemon(layout, 20.0),
        )
    finally:
        handle.stop()

    assert holder_at_restart == [None]  # the lock was free when the service started
    assert f"stop the Pyra daemon started outside the service (pid {handle.pid})" in lines
    kinds = [type(step).__name__ for step in plan.steps]
    assert kinds[-2:] == ["StopDaemon", "Run"]  # right before `systemctl restart`


def test_the_handover_is_planned_only_when_starting_and_shown_in_a_dry_run(env: Env) -> None:
    assert not any(
        isinstance(step, service.StopDaemon)
        for step in service.plan_install("linux", start=False, foreign_pid=4242).steps
    )
    darwin = service.plan_install("darwin", uid=501, foreign_pid=4242)
    assert isinstance(darwin.steps[-2], service.StopDaemon)  # before launchctl bootstrap

    lines: list[str] = []
    stopped: list[int] = []
    plan = service.plan_install("linux", foreign_pid=4242)
    service.execute(plan, dry_run=True, echo=lines.append, stop=stopped.append)

    assert "stop the Pyra daemon started outside the service (pid 4242)" in lines
    assert stopped == []
    with pytest.raises(service.ServiceError, match="stop it, then install again"):
        service.execute(plan, dry_run=False, echo=lambda _: None, run=RecordingRunner())


def test_the_services_own_daemon_is_not_stopped_by_a_reinstall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyra_client.cli import service as cli_service

    def status(pid: int | None, running: bool = True) -> service.ServiceStatus:
        return service.ServiceStatus(
            "systemd", Path("/x"), installed=True, reachable=True, running=running, pid=pid
        )

    monkeypatch.setattr(service, "service_status", lambda: status(4242))
    assert cli_service._foreign_daemon(4242) is None
    assert cli_service._foreign_daemon(None) is None
    monkeypatch.setattr(service, "service_status", lambda: status(None, running=False))
    assert cli_service._foreign_daemon(4242) == 4242
