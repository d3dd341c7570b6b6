"""`pyra doctor` finds each broken condition it claims to check, and `--fix` repairs the safe ones.

Most tests run the real ``pyra doctor --json`` against a real Pyra home, with or without a real
daemon (``python -m pyra_daemon``, see conftest) and the fake LLM server on loopback. What the
machine cannot be made to show for real is injected through :class:`DoctorOptions`: the
installed litellm version (a compromised release), and the service manager's answers (a
recording runner stands in for ``systemctl``, as in test_service.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from pyra_client import doctor, service
from pyra_client.cli.app import app
from pyra_client.doctor import DoctorOptions, check_litellm, diagnose
from pyra_client.paths import Endpoint, Layout
from pyra_client.protocol import DoctorCheck, TaskStatus
from tests.conftest import PYRA, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer

NAMES = [
    "config",
    "permissions",
    "vault",
    "daemon",
    "provider",
    "plugins",
    "service",
    "stale files",
    "litellm",
]
STATUSES = {"ok", "warn", "fail", "skipped"}


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """conftest's home without litellm's background warm-up, so a daemon stops at once."""
    config = pyra_home / "config.toml"
    config.write_text(config.read_text() + "warm_up = false\n")  # the last section: [daemon]
    return pyra_home


@pytest.fixture
def env(pyra_home: Path, short_dir: Path) -> dict[str, str]:
    """The environment of a `pyra` run: this home, and no service unit installed."""
    return {**clean_env(pyra_home), "XDG_CONFIG_HOME": str(short_dir / "xdg")}


@pytest.fixture
def local_env(pyra_home: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """The same world for in-process calls of :func:`diagnose`."""
    for name in ("XDG_RUNTIME_DIR", "PYRA_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYRA_HOME", str(pyra_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_dir / "xdg"))
    return Layout(pyra_home)


def run_doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = subprocess.run(
        [PYRA, "doctor", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == "", done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is (done.returncode == 0)
    return done.returncode, {check["name"]: check for check in data["checks"]}


def by_name(checks: Sequence[DoctorCheck]) -> dict[str, DoctorCheck]:
    return {check.name: check for check in checks}


# --- Output -----------------------------------------------------------------------------------


def test_json_lists_every_check_in_order_with_every_field(env: dict[str, str]) -> None:
    done = subprocess.run(
        [PYRA, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    data = json.loads(done.stdout)
    assert set(data) == {"ok", "checks"}
    assert [check["name"] for check in data["checks"]] == NAMES
    for check in data["checks"]:
        assert set(check) == {"name", "status", "detail", "hint", "fixed"}
        assert check["status"] in STATUSES
        assert isinstance(check["detail"], str)
        assert check["detail"]
        assert check["fixed"] is False


def test_table_shows_a_row_per_check_and_the_hints_of_problems(env: dict[str, str]) -> None:
    done = subprocess.run(
        [PYRA, "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    lines = done.stdout.splitlines()
    for name in NAMES:
        assert any(line.split()[1:2] == name.split()[:1] for line in lines), name
    assert "warn  daemon" in done.stdout  # not running
    assert "→ `pyra daemon start`" in done.stdout
    assert lines[-1].endswith("skipped")
    assert "\x1b[" not in done.stdout  # no colours into a pipe


# --- Config -----------------------------------------------------------------------------------


def test_bad_toml_fails_without_a_daemon(env: dict[str, str], pyra_home: Path) -> None:
    (pyra_home / "config.toml").write_text("[llm\nretries = 0\n")

    code, checks = run_doctor(env)

    assert code == 1
    assert checks["config"]["status"] == "fail"
    assert "not valid TOML" in checks["config"]["detail"]
    assert "78" in checks["config"]["hint"]


def test_without_a_daemon_valid_toml_is_syntax_checked_only(env: dict[str, str]) -> None:
    code, checks = run_doctor(env)

    assert code == 0, checks
    assert checks["config"]["status"] == "ok"
    assert "the daemon validates the keys" in checks["config"]["detail"]


def test_the_running_daemon_validates_keys_and_notices_an_edit(
    pyra_home: Path, env: dict[str, str]
) -> None:
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()
    try:
        code, checks = run_doctor(env)
        assert code == 0, checks
        assert checks["config"]["status"] == "ok"
        assert checks["config"]["detail"].startswith("valid")
        assert checks["provider"]["status"] == "skipped"  # not configured yet
        assert "pyra setup" in checks["provider"]["hint"]

        config = pyra_home / "config.toml"
        config.write_text(config.read_text() + 'colour = "blue"\n')  # lands in [daemon]
        code, checks = run_doctor(env)
        assert code == 1
        assert checks["config"]["status"] == "fail"
        assert "daemon.colour" in checks["config"]["detail"]

        config.write_text(config.read_text().replace('colour = "blue"\n', "tcp_port = 4\n"))
        code, checks = run_doctor(env)
        assert checks["config"]["status"] == "warn"
        assert "changed since the daemon loaded it" in checks["config"]["detail"]
    finally:
        handle.stop()


def test_a_start_refused_for_an_invalid_key_is_explained_without_a_daemon(
    env: dict[str, str], pyra_home: Path
) -> None:
    config = pyra_home / "config.toml"
    config.write_text("[llm]\nbogus = 1\n")
    started = subprocess.run(
        [PYRA, "daemon", "start"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode != 0

    code, checks = run_doctor(env)

    assert code == 1
    assert checks["config"]["status"] == "ok"  # TOML syntax: the client cannot validate keys
    assert checks["daemon"]["status"] == "fail"
    assert "its last start failed" in checks["daemon"]["detail"]
    assert "llm.bogus" in checks["daemon"]["detail"]

    later = config.stat().st_mtime + 5  # edited since: the complaint may be stale
    os.utime(config, (later, later))
    _, checks = run_doctor(env)
    assert checks["daemon"]["status"] == "warn"


# --- Permissions ------------------------------------------------------------------------------


def test_wrong_permissions_are_reported_then_repaired(
    env: dict[str, str], pyra_home: Path, short_dir: Path
) -> None:
    config = pyra_home / "config.toml"
    config.chmod(0o644)
    logs = pyra_home / "logs"
    logs.mkdir(mode=0o700)
    logs.chmod(0o755)
    note = pyra_home / "memory" / "note.md"
    note.parent.mkdir(mode=0o700)
    note.write_text("hello")
    note.chmod(0o700)  # owner-only extra bit: a warning on its own
    outside = short_dir / "outside.txt"
    outside.write_text("not Pyra's")
    outside.chmod(0o644)
    (pyra_home / "memory" / "link.md").symlink_to(outside)
    plugin = pyra_home / "plugins" / "mine"
    plugin.mkdir(parents=True, mode=0o700)
    (plugin / "lib.py").write_text("")
    (plugin / "lib.py").chmod(0o600)
    (plugin / "alias.py").symlink_to("lib.py")  # inside its own folder: the loader allows it

    code, checks = run_doctor(env)

    assert code == 1
    found = checks["permissions"]
    assert found["status"] == "fail"
    assert f"{config} is 0644, should be 0600" in found["detail"]
    assert f"{logs} is 0755, should be 0700" in found["detail"]
    assert f"{note} is 0700, should be 0600" in found["detail"]
    assert "link.md ->" in found["detail"]
    assert "alias.py" not in found["detail"]
    assert "--fix" in found["hint"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o644  # reporting changes nothing

    code, checks = run_doctor(env, "--fix")

    assert code == 0, checks
    fixed = checks["permissions"]
    assert fixed["fixed"] is True
    assert fixed["status"] == "warn"  # the symlink stays, for a person to decide
    assert "repaired" in fixed["detail"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert stat.S_IMODE(note.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # never chmod through a symlink

    (pyra_home / "memory" / "link.md").unlink()
    code, checks = run_doctor(env)
    assert checks["permissions"]["status"] == "ok"
    assert checks["permissions"]["fixed"] is False


# --- Vault --------------------------------------------------------------------------------------


def test_vault_files_without_a_daemon(env: dict[str, str], pyra_home: Path) -> None:
    _, checks = run_doctor(env)
    assert "not initialised" in checks["vault"]["detail"]

    vault = pyra_home / "vault"
    vault.mkdir(mode=0o700)
    for name in ("identity.txt", "identity.age"):
        (vault / name).write_text("x")
        (vault / name).chmod(0o600)

    _, checks = run_doctor(env)
    assert checks["vault"]["status"] == "warn"
    assert "interrupted" in checks["vault"]["detail"]

    (vault / "identity.txt").unlink()
    _, checks = run_doctor(env)
    assert checks["vault"]["status"] == "ok"
    assert "passphrase mode" in checks["vault"]["detail"]


def test_a_damaged_vault_is_reported_by_the_daemon(
    daemon: DaemonHandle, env: dict[str, str]
) -> None:
    _, checks = run_doctor(env, "--no-provider")
    assert checks["vault"]["status"] == "ok"
    assert "unlocked (identity mode)" in checks["vault"]["detail"]

    secrets = daemon.home / "vault" / "secrets.age"
    secrets.write_bytes(b"age-encryption.org/v1\n-> X25519 garbage\n")

    code, checks = run_doctor(env, "--no-provider")
    assert code == 1
    assert checks["vault"]["status"] == "fail"
    assert "damaged" in checks["vault"]["detail"]


# --- Daemon, stale files ------------------------------------------------------------------------


def test_daemon_down_is_a_warning_and_its_checks_are_skipped(env: dict[str, str]) -> None:
    code, checks = run_doctor(env)

    assert code == 0, checks
    assert checks["daemon"]["status"] == "warn"
    assert "not running" in checks["daemon"]["detail"]
    assert checks["provider"]["status"] == "skipped"
    assert checks["plugins"]["status"] == "skipped"
    assert checks["service"]["status"] == "skipped"
    assert checks["stale files"]["status"] == "ok"


def test_a_daemon_holding_the_lock_without_answering_fails(
    env: dict[str, str], pyra_home: Path
) -> None:
    layout = Layout(pyra_home)
    fd = os.open(layout.pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a hung daemon would

        code, checks = run_doctor(env, "--fix")
    finally:
        os.close(fd)

    assert code == 1
    assert checks["daemon"]["status"] == "fail"
    assert f"pid {os.getpid()} holds the PID lock" in checks["daemon"]["detail"]
    assert checks["stale files"]["status"] == "ok"
    assert layout.pid_file.exists()  # a held lock is never "repaired"


def test_a_hung_daemon_is_a_failure_not_a_hang(local_env: Layout) -> None:
    layout = local_env
    layout.run_dir.mkdir(mode=0o700)
    fd = os.open(layout.pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        listener.bind(str(layout.run_dir / "pyra.sock"))
        listener.listen()  # connections queue up; nothing ever answers them

        started = time.monotonic()
        checks = by_name(diagnose(layout, DoctorOptions(answer_timeout=0.3)))
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        os.close(fd)

    assert elapsed < 5
    assert checks["daemon"].status == "fail"
    assert "does not answer `status`" in checks["daemon"].detail
    assert checks["provider"].status == "skipped"


def _leave_stale_files(layout: Layout) -> list[Path]:
    layout.run_dir.mkdir(mode=0o700, exist_ok=True)
    sock_path = layout.run_dir / "pyra.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))  # a socket file left behind by a killed daemon
    sock.close()
    layout.pid_file.write_text("4194304\n")
    layout.endpoint_file.write_text(Endpoint(transport="unix", path=str(sock_path)).to_json())
    layout.token_file.write_text("old-token\n")
    for path in (layout.pid_file, layout.endpoint_file, layout.token_file, sock_path):
        path.chmod(0o600)
    return [layout.pid_file, layout.endpoint_file, layout.token_file, sock_path]


def test_stale_pid_endpoint_and_socket_are_found_then_removed(
    env: dict[str, str], pyra_home: Path
) -> None:
    stale = _leave_stale_files(Layout(pyra_home))
    keep = pyra_home / "run" / "notes.txt"  # not a daemon's file: never removed
    keep.write_text("mine")
    keep.chmod(0o600)

    code, checks = run_doctor(env)

    assert code == 0, checks
    found = checks["stale files"]
    assert found["status"] == "warn"
    for path in stale:
        assert str(path) in found["detail"]
    assert checks["daemon"]["status"] == "warn"
    assert all(path.exists() for path in stale)

    code, checks = run_doctor(env, "--fix")

    assert checks["stale files"]["status"] == "ok"
    assert checks["stale files"]["fixed"] is True
    assert not [path for path in stale if os.path.lexists(path)]
    assert keep.exists()
    code, checks = run_doctor(env)
    assert checks["stale files"] == {
        "name": "stale files",
        "status": "ok",
        "detail": "none",
        "hint": "",
        "fixed": False,
    }


def test_fix_leaves_a_running_daemons_files_alone(
    daemon: DaemonHandle, env: dict[str, str]
) -> None:
    code, checks = run_doctor(env, "--fix", "--no-provider")

    assert code == 0, checks
    assert checks["daemon"]["status"] == "ok"
    assert f"pid {daemon.pid}" in checks["daemon"]["detail"]
    assert checks["stale files"]["status"] == "ok"
    assert checks["stale files"]["fixed"] is False
    assert daemon.layout.pid_file.exists()
    with daemon.connect() as conn:  # still reachable
        assert conn.endpoint.transport == "unix"
    assert checks["provider"]["status"] == "skipped"
    assert checks["plugins"]["status"] in {"ok", "warn"}


# --- Provider -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_provider_rejected_key_then_reachable_then_unreachable_when_the_server_stops(
    daemon: DaemonHandle, fake_llm: FakeLLMServer, env: dict[str, str]
) -> None:
    fake_llm.enqueue_error(401, "invalid api key")
    code, checks = run_doctor(env, "--timeout", "5")
    assert code == 1
    assert checks["provider"]["status"] == "fail"
    assert "rejected the API key" in checks["provider"]["detail"]

    code, checks = run_doctor(env, "--timeout", "5")
    assert code == 0, checks
    assert checks["provider"]["status"] == "ok"
    assert "fake-model" in checks["provider"]["detail"]
    probe = fake_llm.last_request()
    assert probe.body["max_tokens"] == 1
    assert probe.headers["authorization"] == "Bearer sk-fake-test-key-0123456789abcdef"

    fake_llm.stop()
    code, checks = run_doctor(env, "--timeout", "5")

    assert code == 1
    assert checks["provider"]["status"] == "fail"
    assert "unavailable" in checks["provider"]["detail"]
    assert fake_llm.base_url in checks["provider"]["hint"]

    code, checks = run_doctor(env, "--no-provider")
    assert code == 0, checks
    assert checks["provider"]["status"] == "skipped"


# --- litellm ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "status", "words"),
    [
        ("1.82.7", "fail", "compromised"),
        ("1.82.8", "fail", "compromised"),
        ("1.82.6", "fail", "older than 1.83.7"),
        ("1.83.6", "fail", "older than 1.83.7"),
        ("1.83.7rc1", "fail", "older than 1.83.7"),
        ("1.83.7.dev2", "fail", "older than 1.83.7"),
        ("1.83.7", "ok", "litellm 1.83.7"),
        ("1.83.7.post1", "ok", "litellm 1.83.7.post1"),
        ("1.106.2", "ok", "litellm 1.106.2"),
        ("2.0.0", "ok", "litellm 2.0.0"),
        (None, "fail", "not installed"),
        ("unknown", "warn", "cannot read"),
    ],
)
def test_litellm_versions(version: str | None, status: str, words: str) -> None:
    check = check_litellm(version)

    assert check.status == status
    assert words in check.detail
    if status == "fail":
        assert "1.83.7" in check.hint


def test_the_malicious_pth_file_is_found(short_dir: Path) -> None:
    clean, infected = short_dir / "clean", short_dir / "infected"
    clean.mkdir()
    infected.mkdir()
    (infected / "litellm_init.pth").write_text("import os")

    found = doctor.malicious_pth_files([clean, infected])
    check = check_litellm("1.90.0", found)

    assert found == [infected / "litellm_init.pth"]
    assert check.status == "fail"
    assert "rotate" in check.hint


def test_a_compromised_install_fails_the_whole_doctor(
    local_env: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = by_name(diagnose(local_env, DoctorOptions(litellm_version=lambda: "1.82.8")))
    assert checks["litellm"].status == "fail"

    # The CLI reads the same source: metadata only, never an import.
    monkeypatch.setattr(doctor, "installed_litellm_version", lambda: "1.82.7")
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["ok"] is False
    assert data["checks"][-1]["status"] == "fail"
    assert "1.82.7" in data["checks"][-1]["detail"]


def test_the_version_is_read_from_metadata() -> None:
    from importlib.metadata import version

    assert doctor.installed_litellm_version() == version("litellm")


# --- Service ------------------------------------------------------------------------------------


class SystemctlShow:
    """Answers `systemctl --user show` with the given properties; records the calls."""

    def __init__(self, **props: str) -> None:
        self.props = props
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> service.RunResult:
        self.calls.append(tuple(argv))
        return service.RunResult(0, "".join(f"{k}={v}\n" for k, v in self.props.items()))


def _install_unit(short_dir: Path) -> None:
    unit = short_dir / "xdg" / "systemd" / "user" / "pyra.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")


def test_service_running_is_ok(local_env: Layout, short_dir: Path) -> None:
    _install_unit(short_dir)
    systemctl = SystemctlShow(
        LoadState="loaded",
        ActiveState="active",
        SubState="running",
        UnitFileState="enabled",
        MainPID="4242",
        ExecMainStatus="0",
        NRestarts="0",
    )

    checks = by_name(diagnose(local_env, DoctorOptions(run=systemctl, platform="linux")))

    assert checks["service"].status == "ok"
    assert "pid 4242" in checks["service"].detail
    assert systemctl.calls[0][:4] == ("systemctl", "--user", "show", "pyra.service")


def test_service_stopped_by_an_invalid_config_fails_and_points_to_the_config(
    local_env: Layout, short_dir: Path
) -> None:
    _install_unit(short_dir)
    systemctl = SystemctlShow(
        LoadState="loaded",
        ActiveState="failed",
        SubState="failed",
        UnitFileState="enabled",
        MainPID="0",
        ExecMainStatus="78",
        NRestarts="0",
    )

    checks = by_name(diagnose(local_env, DoctorOptions(run=systemctl, platform="linux")))

    assert checks["service"].status == "fail"
    assert "last exit status 78" in checks["service"].detail
    assert "config is invalid" in checks["service"].detail


def test_service_not_installed_or_unsupported_is_skipped(local_env: Layout) -> None:
    never = SystemctlShow()
    checks = by_name(diagnose(local_env, DoctorOptions(run=never, platform="linux")))
    assert checks["service"].status == "skipped"
    assert "service install" in checks["service"].hint

    checks = by_name(diagnose(local_env, DoctorOptions(run=never, platform="win32")))
    assert checks["service"].status == "skipped"
    assert "deploy.md" in checks["service"].hint


# --- Plugins ------------------------------------------------------------------------------------


def test_a_plugin_that_fails_to_load_fails_the_check(pyra_home: Path, env: dict[str, str]) -> None:
    plugin = pyra_home / "plugins" / "broken"
    plugin.mkdir(parents=True, mode=0o700)
    (plugin / "manifest.json").write_text('{"name": "broken", "version": "1.0"}')
    (plugin / "plugin.py").write_text("raise ImportError('the plugin is broken')\n")
    for path in (plugin / "manifest.json", plugin / "plugin.py"):
        path.chmod(0o600)
    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    handle.start()
    try:
        code, checks = run_doctor(env, "--no-provider")
    finally:
        handle.stop()

    assert code == 1
    assert checks["plugins"]["status"] == "fail"
    assert "plugin broken: " in checks["plugins"]["detail"]
    assert "the plugin is broken" in checks["plugins"]["detail"]
    assert "pyra plugin info" in checks["plugins"]["hint"]


def test_tasks_that_gave_up_fail_and_crash_looping_ones_warn() -> None:
    listed = msgspec.json.decode(
        b'{"plugins": [{"name": "system", "state": "active", "source": "entry-point"},'
        b' {"name": "off", "state": "disabled", "enabled": false}]}',
        type=doctor._PluginList,
    )
    tasks = [
        TaskStatus(name="telegram.poll", state="running", restarts=1, last_error="recovered"),
        TaskStatus(name="watcher", state="failed", restarts=5, last_error="boom"),
        TaskStatus(name="flaky", state="backoff", restarts=2),
    ]

    failures, warnings = doctor._plugin_findings(listed.plugins, tasks)

    assert failures == ["task watcher gave up after 5 restart(s) (boom)"]
    assert warnings == ["task flaky crashed, restarting"]
