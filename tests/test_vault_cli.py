"""``pyra vault`` end to end: the real CLI, a real daemon, real age files, litellm to the fake.

Values go in through stdin or a hidden prompt on a real pseudo-terminal and must never come
back out: not on stdout, not on stderr, not on the terminal. Passphrase mode runs scrypt
(~1.4 s per wrap or unwrap), so one ``slow`` test covers it end to end.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from pyra_client.errors import ExitCode
from pyra_client.protocol import (
    SECRET_NAME_PATTERN,
    SetupModelsParams,
    VaultPasswdParams,
    VaultRotateParams,
    VaultSetParams,
    VaultUnlockParams,
)
from pyra_daemon import vault as vault_module
from tests.conftest import FAKE_KEY, PYRA, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer
from tests.terminal import Terminal

NEW_KEY = "vault-key-for-the-fake-0123456789"
OTHER_KEY = "another-vault-key-9876543210"


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """The shared test home, without litellm's background import: most tests here never ask,
    and a daemon stops only once an import in flight has finished."""
    config = pyra_home / "config.toml"
    config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nwarm_up = false\n"))
    return pyra_home


def status_of(daemon: DaemonHandle) -> dict[str, object]:
    result = daemon.cli("vault", "status", "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def bearer(fake_llm: FakeLLMServer) -> str:
    return fake_llm.last_request().headers["authorization"].removeprefix("Bearer ")


def test_a_new_daemon_creates_an_identity_mode_vault_and_hardens_itself(
    daemon: DaemonHandle,
) -> None:
    status = status_of(daemon)
    assert status["initialized"] is True
    assert status["mode"] == "identity"
    assert status["locked"] is False
    assert status["count"] == 0
    assert status["damaged"] is False
    assert status["hardened"] is True
    vault_dir = daemon.layout.vault_dir
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    for name in ("identity.txt", "secrets.age"):
        assert stat.S_IMODE((vault_dir / name).stat().st_mode) == 0o600

    human = daemon.cli("vault", "status")
    assert human.returncode == 0
    assert "unlocked (identity-file mode: unlocks by itself), 0 secrets" in human.stdout
    assert "core dumps and ptrace disabled" in human.stdout
    unlock = daemon.cli("vault", "unlock")
    assert unlock.returncode == 0
    assert "has no passphrase" in unlock.stdout


def test_set_list_and_rm_take_values_in_and_give_names_out(daemon: DaemonHandle) -> None:
    stored = daemon.cli("vault", "set", "provider:openai", "--stdin", input=NEW_KEY + "\n")
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout == "stored provider:openai\n"
    assert (
        daemon.cli("vault", "set", "plugin:weather:token", "--stdin", input="tok-123456").returncode
        == 0
    )

    listed = daemon.cli("vault", "list")
    assert listed.stdout.splitlines() == ["plugin:weather:token", "provider:openai"]
    assert json.loads(daemon.cli("vault", "list", "--json").stdout) == [
        "plugin:weather:token",
        "provider:openai",
    ]
    assert status_of(daemon)["count"] == 2

    removed = daemon.cli("vault", "rm", "plugin:weather:token")
    assert removed.returncode == 0, removed.stderr
    assert daemon.cli("vault", "list").stdout == "provider:openai\n"
    missing = daemon.cli("vault", "rm", "plugin:weather:token")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert "no secret named plugin:weather:token" in missing.stderr

    everything = (
        "".join(r.stdout + r.stderr for r in (stored, listed, removed, missing)) + daemon.stderr()
    )
    assert NEW_KEY not in everything
    assert NEW_KEY.encode() not in (daemon.layout.vault_dir / "secrets.age").read_bytes()


def test_values_on_the_command_line_and_bad_names_are_refused_without_echo(
    daemon: DaemonHandle,
) -> None:
    in_argv = daemon.cli("vault", "set", "provider:openai", NEW_KEY)
    assert in_argv.returncode == ExitCode.USAGE
    assert "never taken from the command line" in in_argv.stderr
    assert NEW_KEY not in in_argv.stderr + in_argv.stdout

    pasted_as_name = daemon.cli("vault", "set", NEW_KEY, "--stdin", input="x")
    assert pasted_as_name.returncode == ExitCode.USAGE
    assert "invalid secret name" in pasted_as_name.stderr
    assert NEW_KEY not in pasted_as_name.stderr

    no_terminal = daemon.cli("vault", "set", "provider:openai")
    assert no_terminal.returncode == ExitCode.USAGE
    assert "--stdin" in no_terminal.stderr
    empty = daemon.cli("vault", "set", "provider:openai", "--stdin", input="\n")
    assert empty.returncode == ExitCode.USAGE
    assert daemon.cli("vault", "list").stdout == ""


def test_vault_set_on_a_terminal_asks_twice_and_never_shows_the_value(
    daemon: DaemonHandle,
) -> None:
    mismatch = Terminal([PYRA, "vault", "set", "provider:openai"], daemon.env)
    mismatch.expect("Value for provider:openai: ")
    mismatch.send(NEW_KEY)
    mismatch.expect("Again, to confirm: ")
    mismatch.send(OTHER_KEY)
    assert mismatch.wait() == ExitCode.USAGE
    assert "the two entries differ" in mismatch.output

    match = Terminal([PYRA, "vault", "set", "provider:openai"], daemon.env)
    match.expect("Value for provider:openai: ")
    match.send(NEW_KEY)
    match.expect("Again, to confirm: ")
    match.send(NEW_KEY)
    assert match.wait() == 0, match.output
    assert "stored provider:openai" in match.output
    for terminal in (mismatch, match):
        assert NEW_KEY not in terminal.output
        assert OTHER_KEY not in terminal.output
    assert daemon.cli("vault", "list").stdout == "provider:openai\n"


def test_the_provider_key_is_read_from_the_vault_at_call_time(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    assert daemon.cli("ask", "one").returncode == 0
    assert bearer(fake_llm) == FAKE_KEY  # no vault entry: the configured variable

    name = "provider:openai-compatible"
    assert daemon.cli("vault", "set", name, "--stdin", input=NEW_KEY).returncode == 0
    assert daemon.cli("ask", "two").returncode == 0
    assert bearer(fake_llm) == NEW_KEY  # the vault wins, without a restart

    assert daemon.cli("vault", "set", name, "--stdin", input=OTHER_KEY).returncode == 0
    assert daemon.cli("ask", "three").returncode == 0
    assert bearer(fake_llm) == OTHER_KEY  # never cached: a replaced key applies at once

    assert daemon.cli("vault", "rm", name).returncode == 0
    assert daemon.cli("ask", "four").returncode == 0
    assert bearer(fake_llm) == FAKE_KEY


def test_without_a_key_anywhere_the_error_names_the_vault_and_the_variable(
    pyra_home: Path, fake_llm: FakeLLMServer
) -> None:
    env = clean_env(pyra_home)
    env.pop("OPENAI_API_KEY", None)
    handle = DaemonHandle(home=pyra_home, env=env)
    handle.start()
    try:
        setup = handle.cli(
            "setup",
            "--provider",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            fake_llm.base_url,
        )
        assert setup.returncode == 0, setup.stderr
        result = handle.cli("ask", "hi")
        assert result.returncode == ExitCode.NOT_CONFIGURED
        assert "`pyra vault set provider:openai`" in result.stderr
        assert "$OPENAI_API_KEY" in result.stderr
        assert not fake_llm.requests

        stored = handle.cli("vault", "set", "provider:openai", "--stdin", input=NEW_KEY)
        assert stored.returncode == 0
        assert handle.cli("ask", "hi").returncode == 0
        assert bearer(fake_llm) == NEW_KEY
    finally:
        handle.stop()


def test_rotation_keeps_the_secrets_and_retires_the_old_identity(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    name = "provider:openai-compatible"
    assert daemon.cli("vault", "set", name, "--stdin", input=NEW_KEY).returncode == 0
    identity = daemon.layout.vault_dir / "identity.txt"
    before = identity.read_text()
    rotated = daemon.cli("vault", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "rotated" in rotated.stdout
    assert identity.read_text() != before
    assert daemon.cli("ask", "still works").returncode == 0
    assert bearer(fake_llm) == NEW_KEY


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last payload chunk: age's MAC catches it
    path.write_bytes(bytes(data))


def test_a_damaged_vault_is_reported_with_a_hint_and_the_daemon_keeps_serving(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    name = "provider:openai-compatible"
    assert daemon.cli("vault", "set", name, "--stdin", input=OTHER_KEY).returncode == 0
    assert daemon.cli("vault", "set", name, "--stdin", input=NEW_KEY).returncode == 0
    secrets_file = daemon.layout.vault_dir / "secrets.age"
    corrupt(secrets_file)
    damaged = secrets_file.read_bytes()

    status = daemon.cli("vault", "status")
    assert status.returncode == 1
    assert "DAMAGED" in status.stdout
    assert "`pyra vault restore-backup`" in status.stdout
    assert status_of(daemon)["damaged"] is True

    ask = daemon.cli("ask", "hi")
    assert ask.returncode == 1
    assert "damaged" in ask.stderr
    refused = daemon.cli("vault", "set", name, "--stdin", input=OTHER_KEY)
    assert refused.returncode == 1
    assert secrets_file.read_bytes() == damaged  # nothing overwrote the evidence
    assert daemon.cli("status").returncode == 0  # the daemon is still there

    restored = daemon.cli("vault", "restore-backup")
    assert restored.returncode == 0, restored.stderr
    assert status_of(daemon)["damaged"] is False
    assert (daemon.layout.vault_dir / "secrets.age.damaged").read_bytes() == damaged
    assert daemon.cli("ask", "hi").returncode == 0
    assert bearer(fake_llm) == OTHER_KEY  # the previous version


def test_a_daemon_starts_on_a_damaged_identity_and_says_what_to_do(
    daemon: DaemonHandle,
) -> None:
    daemon.stop()
    (daemon.layout.vault_dir / "identity.txt").write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    daemon.start()
    status = status_of(daemon)
    assert status["damaged"] is True
    assert "identity" in str(status["hint"])
    assert "vault unusable" in daemon.layout.log_file.read_text()


@pytest.mark.slow
def test_passphrase_mode_starts_locked_unlocks_from_stdin_and_locks_again(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    name = "provider:openai-compatible"
    assert daemon.cli("vault", "set", name, "--stdin", input=NEW_KEY).returncode == 0
    passphrase = "correct horse battery staple"
    passwd = daemon.cli("vault", "passwd", "--stdin", input=passphrase + "\n")
    assert passwd.returncode == 0, passwd.stderr
    assert "pyra vault rotate" in passwd.stdout
    assert not (daemon.layout.vault_dir / "identity.txt").exists()

    # Without the variable the vault is the only place the key can come from.
    daemon.stop()
    del daemon.env["FAKE_KEY"]
    daemon.start()
    assert status_of(daemon)["locked"] is True
    locked = daemon.cli("ask", "hi")
    assert locked.returncode == ExitCode.VAULT_LOCKED
    assert "vault is locked; run `pyra vault unlock`" in locked.stderr
    assert not fake_llm.requests

    wrong = daemon.cli("vault", "unlock", "--stdin", input="not it\n")
    assert wrong.returncode == 1
    assert "wrong passphrase" in wrong.stderr
    unlocked = daemon.cli("vault", "unlock", "--stdin", input=passphrase + "\n")
    assert unlocked.returncode == 0, unlocked.stderr
    assert "unlocked (passphrase mode), 1 secret" in unlocked.stdout
    assert daemon.cli("ask", "hi").returncode == 0
    assert bearer(fake_llm) == NEW_KEY

    assert daemon.cli("vault", "lock").returncode == 0
    assert daemon.cli("ask", "hi").returncode == ExitCode.VAULT_LOCKED

    removed = daemon.cli("vault", "passwd", "--remove", "--stdin", input=passphrase + "\n")
    assert removed.returncode == 0, removed.stderr
    assert status_of(daemon)["mode"] == "identity"
    assert daemon.cli("ask", "hi").returncode == 0
    log = daemon.layout.log_file.read_text() + daemon.stderr()
    assert passphrase not in log
    assert NEW_KEY not in log


def test_the_clients_name_rule_is_the_vaults() -> None:
    assert vault_module._NAME_RE.pattern == SECRET_NAME_PATTERN
    assert re.fullmatch(SECRET_NAME_PATTERN, "plugin:weather:token")


def test_params_that_carry_secrets_never_show_them_in_repr() -> None:
    values = [
        VaultSetParams(name="provider:openai", value=NEW_KEY),
        VaultUnlockParams(passphrase=NEW_KEY),
        VaultPasswdParams(old=NEW_KEY, new=NEW_KEY),
        VaultRotateParams(passphrase=NEW_KEY),
        SetupModelsParams(provider="openai", api_key=NEW_KEY),
    ]
    for value in values:
        assert NEW_KEY not in repr(value)
        assert NEW_KEY not in f"{value} {[value]}"
