"""The age vault and the Secret type, against real pyrage and real files.

No mocks: every test encrypts with pyrage into a ``tmp_path`` directory. Tests that run scrypt
(passphrase mode, ~1.5 s per wrap or unwrap here) are marked ``slow`` and kept few; everything
else uses identity mode, which costs milliseconds.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyrage
import pytest

from pyra_client.errors import AccessDenied, SecretNotFound, UsageError, VaultError, VaultLocked
from pyra_daemon.secret import Secret
from pyra_daemon.vault import (
    BACKUP_FILE,
    IDENTITY_FILE,
    NAME_RULE,
    PASSPHRASE_IDENTITY_FILE,
    SECRETS_FILE,
    Vault,
    VaultStatus,
    validate_name,
)

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = Secret("correct horse battery staple")
OTHER_PASSPHRASE = Secret("tr0ub4dor&3")


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "vault"


@pytest.fixture
def vault(vault_dir: Path) -> Vault:
    created = Vault(vault_dir)
    created.init()
    return created


@pytest.fixture
def private_umask() -> Iterator[None]:
    """A permissive umask, so that 0600/0700 can only come from the vault itself."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def identity_of(vault_dir: Path) -> object:
    """The X25519 identity stored in identity-mode's ``identity.txt``."""
    lines = (vault_dir / IDENTITY_FILE).read_text().splitlines()
    (key,) = [line for line in lines if line.startswith("AGE-SECRET-KEY-")]
    return pyrage.x25519.Identity.from_str(key)


def decrypts_with(path: Path, identity: object) -> bool:
    try:
        pyrage.decrypt(path.read_bytes(), [identity])
    except pyrage.DecryptError:
        return False
    return True


# --- Secret -----------------------------------------------------------------------------


def test_secret_text_forms_are_redacted() -> None:
    secret = Secret("sk-live-123456")
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}|{secret:>5}" == "***|  ***"
    assert "sk-live" not in repr([secret, {"key": secret}])
    assert "sk-live" not in str(VaultError("failed", value=secret).data)


def test_secret_reveals_its_value_from_str_or_utf8_bytes() -> None:
    assert Secret("pässword").reveal() == "pässword"
    assert Secret("pässword".encode()).reveal() == "pässword"


def test_secret_from_invalid_bytes_does_not_keep_them_in_the_error() -> None:
    with pytest.raises(ValueError, match="UTF-8") as caught:
        Secret(b"\xffsk-raw-bytes")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    with pytest.raises(TypeError):
        Secret(42)  # type: ignore[arg-type]


def test_secret_equality_is_constant_time_and_only_between_secrets() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    with pytest.raises(TypeError):
        hash(Secret("a"))


def test_secret_cannot_be_pickled_but_copies_are_itself() -> None:
    secret = Secret("sk-do-not-pickle")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(secret, protocol=protocol)
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret


def test_secret_is_immutable() -> None:
    secret = Secret("a")
    with pytest.raises(AttributeError):
        secret._value = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del secret._value
    assert secret.reveal() == "a"


# --- Names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "provider:openai",
        "provider:0",
        "plugin:telegram:bot_token",
        "plugin:a.b-c:k9",
        "provider:" + "a" * 64,
    ],
)
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "openai",
        "provider:",
        "provider:OpenAI",
        "provider:-x",
        "provider:a b",
        "provider:a:b",
        "plugin:telegram",
        "plugin:telegram:",
        "plugin::key",
        "provider:" + "a" * 65,
        "provider:openai\n",
        "sk-live-pasted-by-mistake",
    ],
)
def test_bad_names_are_refused_with_the_rule_and_without_echoing_them(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_name(name)
    assert NAME_RULE in str(caught.value)
    assert caught.value.data == {"rule": NAME_RULE}
    assert "pasted" not in str(caught.value)


def test_vault_methods_refuse_bad_names(vault: Vault) -> None:
    with pytest.raises(UsageError):
        vault.set("OPENAI_API_KEY", Secret("x"))
    with pytest.raises(UsageError):
        vault.get("provider")
    with pytest.raises(UsageError):
        vault.delete("plugin:x")


# --- Identity mode: round trips and life cycle ----------------------------------------


def test_status_of_a_directory_without_a_vault(vault_dir: Path) -> None:
    fresh = Vault(vault_dir)
    assert fresh.status() == VaultStatus(initialized=False, mode=None, locked=True, count=None)
    assert not vault_dir.exists()
    with pytest.raises(VaultError, match="no vault"):
        fresh.get("provider:openai")
    with pytest.raises(VaultError, match="no vault"):
        fresh.unlock()


def test_identity_mode_round_trip(vault: Vault, vault_dir: Path) -> None:
    assert vault.status() == VaultStatus(initialized=True, mode="identity", locked=False, count=0)
    vault.set("provider:openai", Secret("sk-first"))
    vault.set("plugin:telegram:bot_token", Secret("123:token"))
    vault.set("provider:openai", Secret("sk-second"))
    assert vault.get("provider:openai").reveal() == "sk-second"
    assert vault.names() == ["plugin:telegram:bot_token", "provider:openai"]
    assert vault.status().count == 2

    reopened = Vault(vault_dir)
    assert reopened.locked
    assert reopened.get("plugin:telegram:bot_token").reveal() == "123:token"
    assert not reopened.locked

    vault.delete("plugin:telegram:bot_token")
    assert reopened.names() == ["provider:openai"], "a write by another instance is seen"
    with pytest.raises(SecretNotFound) as caught:
        reopened.get("plugin:telegram:bot_token")
    assert caught.value.data == {"name": "plugin:telegram:bot_token"}


def test_deleting_a_missing_secret_raises_and_writes_nothing(vault: Vault, vault_dir: Path) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    before = file_bytes(vault_dir)
    with pytest.raises(SecretNotFound):
        vault.delete("provider:anthropic")
    assert file_bytes(vault_dir) == before


def test_empty_values_and_plain_strings_are_refused(vault: Vault) -> None:
    with pytest.raises(UsageError, match="empty"):
        vault.set("provider:openai", Secret(""))
    with pytest.raises(TypeError):
        vault.set("provider:openai", "sk-plain")  # type: ignore[arg-type]
    assert vault.names() == []


def test_init_refuses_an_existing_vault(vault: Vault, vault_dir: Path) -> None:
    vault.set("provider:openai", Secret("sk-keep"))
    before = file_bytes(vault_dir)
    with pytest.raises(VaultError, match="already initialized"):
        Vault(vault_dir).init()
    assert file_bytes(vault_dir) == before
    assert vault.get("provider:openai").reveal() == "sk-keep"


def test_init_refuses_a_stray_secrets_file(vault_dir: Path) -> None:
    vault_dir.mkdir(parents=True)
    (vault_dir / SECRETS_FILE).write_bytes(b"whatever was here")
    with pytest.raises(VaultError, match="without an identity"):
        Vault(vault_dir).init()
    assert (vault_dir / SECRETS_FILE).read_bytes() == b"whatever was here"


def test_lock_drops_keys_and_identity_mode_unlocks_again_on_use(vault: Vault) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    vault.lock()
    assert vault.locked
    assert vault._identity is None
    assert vault._secrets is None
    assert vault.get("provider:openai").reveal() == "sk-1"
    assert not vault.locked
    vault.lock()
    vault.unlock()
    assert not vault.locked
    with pytest.raises(UsageError, match="no passphrase"):
        vault.unlock(PASSPHRASE)


def test_values_never_reach_disk_or_logs_in_plaintext(
    vault: Vault, vault_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyra_daemon.vault")
    values = {
        "provider:openai": "sk-PLAINTEXT-openai-0123456789",
        "provider:anthropic": "sk-ant-PLAINTEXT-abcdef",
        "plugin:telegram:bot_token": "987654321:PLAINTEXT-telegram",
    }
    for name, value in values.items():
        vault.set(name, Secret(value))
    vault.set("provider:openai", Secret("sk-PLAINTEXT-replacement"))
    vault.delete("provider:anthropic")
    vault.get("plugin:telegram:bot_token")
    vault.rotate()

    everything = b"".join(file_bytes(vault_dir).values())
    for value in [*values.values(), "sk-PLAINTEXT-replacement"]:
        assert value.encode() not in everything
    assert b"PLAINTEXT" not in everything
    assert "PLAINTEXT" not in caplog.text
    assert "plugin:telegram:bot_token" in caplog.text, "names are logged at DEBUG"


def test_files_are_0600_in_a_0700_directory(
    private_umask: None, vault: Vault, vault_dir: Path
) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    vault.set("provider:openai", Secret("sk-2"))
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    names = {path.name for path in vault_dir.iterdir()}
    assert names == {".lock", IDENTITY_FILE, SECRETS_FILE, BACKUP_FILE}
    for path in vault_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert vault.check_permissions() == []


def test_permission_drift_is_reported_and_repaired(vault: Vault, vault_dir: Path) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    vault_dir.chmod(0o755)
    (vault_dir / SECRETS_FILE).chmod(0o644)
    (vault_dir / IDENTITY_FILE).chmod(0o640)
    (vault_dir / ".secrets.age.tmp-123-0123abcd").write_bytes(b"partial")
    (vault_dir / "elsewhere").symlink_to("/etc/hostname")

    findings = vault.check_permissions()
    text = "\n".join(findings)
    assert f"{vault_dir} has mode 0755, expected 0700" in text
    assert f"{vault_dir / SECRETS_FILE} has mode 0644, expected 0600" in text
    assert f"{vault_dir / IDENTITY_FILE} has mode 0640, expected 0600" in text
    assert "interrupted write" in text
    assert "symlink" in text
    assert not any(finding.endswith("(fixed)") for finding in findings)
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o755, "reporting changes nothing"

    repaired = vault.check_permissions(repair=True)
    assert sum(finding.endswith("(fixed)") for finding in repaired) == 4
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((vault_dir / SECRETS_FILE).stat().st_mode) == 0o600
    assert not (vault_dir / ".secrets.age.tmp-123-0123abcd").exists()
    remaining = vault.check_permissions()
    assert len(remaining) == 1
    assert "symlink" in remaining[0]
    assert vault.get("provider:openai").reveal() == "sk-1"


def test_a_write_restores_the_directory_mode(vault: Vault, vault_dir: Path) -> None:
    vault_dir.chmod(0o755)
    vault.set("provider:openai", Secret("sk-1"))
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700


def test_a_symlinked_vault_file_is_refused(vault: Vault, vault_dir: Path, tmp_path: Path) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    elsewhere = tmp_path / "elsewhere.age"
    (vault_dir / SECRETS_FILE).rename(elsewhere)
    (vault_dir / SECRETS_FILE).symlink_to(elsewhere)
    with pytest.raises(AccessDenied, match="symlink"):
        Vault(vault_dir).get("provider:openai")


# --- Rotation ---------------------------------------------------------------------------


def test_rotation_keeps_every_secret_and_retires_the_old_identity(
    vault: Vault, vault_dir: Path
) -> None:
    values = {f"provider:p{i}": f"sk-rotate-{i}" for i in range(5)}
    for name, value in values.items():
        vault.set(name, Secret(value))
    old = identity_of(vault_dir)
    other_instance = Vault(vault_dir)
    assert other_instance.get("provider:p0").reveal() == "sk-rotate-0"

    vault.rotate()

    new = identity_of(vault_dir)
    assert str(new) != str(old)
    for name in (SECRETS_FILE, BACKUP_FILE):
        assert not decrypts_with(vault_dir / name, old), name
        assert decrypts_with(vault_dir / name, new), name
    assert {name: vault.get(name).reveal() for name in vault.names()} == values
    assert {name: Vault(vault_dir).get(name).reveal() for name in values} == values
    # An instance that still held the old identity notices the new file and reloads it.
    assert other_instance.get("provider:p4").reveal() == "sk-rotate-4"
    with pytest.raises(UsageError, match="no passphrase"):
        vault.rotate(PASSPHRASE)


def test_the_backup_survives_rotation_and_can_be_restored(vault: Vault, vault_dir: Path) -> None:
    vault.set("provider:openai", Secret("sk-before"))
    vault.set("provider:openai", Secret("sk-after"))
    vault.rotate()
    (vault_dir / SECRETS_FILE).write_bytes(b"garbage")
    vault.restore_backup()
    assert vault.get("provider:openai").reveal() == "sk-before"


# --- Damage -----------------------------------------------------------------------------


def _truncate(data: bytes) -> bytes:
    return data[:-10]


def _truncate_header(data: bytes) -> bytes:
    return data[:30]


def _flip_payload_byte(data: bytes) -> bytes:
    return data[:-20] + bytes([data[-20] ^ 0x01]) + data[-19:]


def _flip_header_mac(data: bytes) -> bytes:
    at = data.index(b"\n--- ") + 8
    return data[:at] + (b"A" if data[at : at + 1] != b"A" else b"B") + data[at + 1 :]


def _not_age(_: bytes) -> bytes:
    return b'{"provider:openai": "sk-plain-json"}'


def _empty(_: bytes) -> bytes:
    return b""


def _to_another_identity(_: bytes) -> bytes:
    other = pyrage.x25519.Identity.generate()
    return pyrage.encrypt(b"{}", [other.to_public()])


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _truncate_header,
        _flip_payload_byte,
        _flip_header_mac,
        _not_age,
        _empty,
        _to_another_identity,
    ],
)
def test_a_damaged_secrets_file_is_reported_and_never_overwritten(
    vault: Vault, vault_dir: Path, damage: object
) -> None:
    vault.set("provider:openai", Secret("sk-version-1"))
    vault.set("provider:openai", Secret("sk-version-2"))
    path = vault_dir / SECRETS_FILE
    assert callable(damage)
    path.write_bytes(damage(path.read_bytes()))
    before = file_bytes(vault_dir)

    expected = (
        f"vault file is damaged or not an age file: {path}; the backup is {vault_dir / BACKUP_FILE}"
    )
    reopened = Vault(vault_dir)
    with pytest.raises(VaultError) as caught:
        reopened.get("provider:openai")
    assert str(caught.value) == expected
    assert "sk-" not in repr(caught.value.data)
    with pytest.raises(VaultError, match="damaged"):
        vault.get("provider:openai")
    with pytest.raises(VaultError, match="damaged"):
        vault.set("provider:anthropic", Secret("sk-new"))
    with pytest.raises(VaultError, match="damaged"):
        vault.delete("provider:openai")
    with pytest.raises(VaultError, match="damaged"):
        vault.rotate()
    assert file_bytes(vault_dir) == before, "nothing is overwritten"

    vault.restore_backup()
    assert vault.get("provider:openai").reveal() == "sk-version-1"
    assert (vault_dir / "secrets.age.damaged").read_bytes() == before[SECRETS_FILE]
    vault.set("provider:anthropic", Secret("sk-new"))
    assert reopened.names() == ["provider:anthropic", "provider:openai"]


def test_a_missing_secrets_file_is_reported_and_restorable(vault: Vault, vault_dir: Path) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    vault.set("provider:openai", Secret("sk-2"))
    (vault_dir / SECRETS_FILE).unlink()
    with pytest.raises(VaultError, match=r"missing.*the backup is"):
        Vault(vault_dir).names()
    with pytest.raises(VaultError, match="missing"):
        vault.set("provider:x", Secret("sk-x"))
    assert not (vault_dir / SECRETS_FILE).exists()
    vault.restore_backup()
    assert vault.get("provider:openai").reveal() == "sk-1"


def test_restore_backup_refuses_an_intact_vault_and_a_missing_backup(
    vault: Vault, vault_dir: Path
) -> None:
    with pytest.raises(VaultError, match="no backup"):
        vault.restore_backup()
    vault.set("provider:openai", Secret("sk-1"))
    with pytest.raises(UsageError, match="intact"):
        vault.restore_backup()
    (vault_dir / BACKUP_FILE).write_bytes(b"junk")
    (vault_dir / SECRETS_FILE).write_bytes(b"junk")
    with pytest.raises(VaultError, match="backup is damaged too"):
        vault.restore_backup()


def test_a_damaged_identity_is_reported_and_nothing_is_written(
    vault: Vault, vault_dir: Path
) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    identity = vault_dir / IDENTITY_FILE
    identity.write_text("AGE-SECRET-KEY-1NOTAVALIDKEY\n")
    before = file_bytes(vault_dir)
    with pytest.raises(VaultError, match=re.escape(f"damaged or not an age file: {identity}")):
        Vault(vault_dir).get("provider:openai")
    identity.write_text("# nothing but a comment\n")
    with pytest.raises(VaultError, match="damaged"):
        Vault(vault_dir).set("provider:x", Secret("sk-x"))
    assert file_bytes(vault_dir) == before | {IDENTITY_FILE: identity.read_bytes()}


# --- Durability and concurrency ---------------------------------------------------------


def test_a_leftover_temporary_file_is_ignored_and_cleaned_at_the_next_write(
    vault: Vault, vault_dir: Path
) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    leftover = vault_dir / f".{SECRETS_FILE}.tmp-99999-deadbeef"
    leftover.write_bytes(b"age-encryption.org/v1\n-> X25519 half a fi")
    assert Vault(vault_dir).get("provider:openai").reveal() == "sk-1"
    assert leftover.exists()
    vault.set("provider:anthropic", Secret("sk-2"))
    assert not leftover.exists()
    assert vault.names() == ["provider:anthropic", "provider:openai"]


_CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path

from pyra_daemon.secret import Secret
from pyra_daemon.vault import Vault

real_replace = os.replace

def crash_before_renaming_secrets(src, dst):
    if Path(dst).name == "secrets.age":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = crash_before_renaming_secrets
Vault(Path(sys.argv[1])).set("provider:new", Secret("sk-never-stored"))
"""


def test_a_crash_before_the_rename_leaves_the_old_vault_intact(
    vault: Vault, vault_dir: Path
) -> None:
    vault.set("provider:openai", Secret("sk-1"))
    vault.set("provider:openai", Secret("sk-2"))
    before = (vault_dir / SECRETS_FILE).read_bytes()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(vault_dir)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    leftovers = [path for path in vault_dir.iterdir() if ".tmp-" in path.name]
    assert len(leftovers) == 1
    assert (vault_dir / SECRETS_FILE).read_bytes() == before
    assert (vault_dir / BACKUP_FILE).read_bytes() == before, "the backup was written first"
    reopened = Vault(vault_dir)
    assert reopened.names() == ["provider:openai"]
    assert reopened.get("provider:openai").reveal() == "sk-2"

    reopened.set("provider:anthropic", Secret("sk-3"))
    assert not any(".tmp-" in path.name for path in vault_dir.iterdir())
    assert Vault(vault_dir).names() == ["provider:anthropic", "provider:openai"]


def _set_names_in_process(directory: str, process: int, count: int, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    target = Vault(Path(directory))
    for index in range(count):
        target.set(f"plugin:proc{process}:key{index}", Secret(f"value-{process}-{index}"))


def test_processes_writing_different_names_lose_none(vault: Vault, vault_dir: Path) -> None:
    processes, per_process = 4, 5
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    workers = [
        context.Process(
            target=_set_names_in_process, args=(str(vault_dir), i, per_process, barrier)
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    expected = {
        f"plugin:proc{p}:key{i}": f"value-{p}-{i}"
        for p in range(processes)
        for i in range(per_process)
    }
    assert vault.names() == sorted(expected)
    assert {name: vault.get(name).reveal() for name in expected} == expected


def test_threads_writing_different_names_lose_none(vault: Vault, vault_dir: Path) -> None:
    def write(thread: int) -> None:
        # Odd threads share one instance, even ones bring their own: both paths must hold.
        target = vault if thread % 2 else Vault(vault_dir)
        for index in range(4):
            target.set(f"plugin:thread{thread}:key{index}", Secret(f"v-{thread}-{index}"))
            target.get(f"plugin:thread{thread}:key{index}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(8)))
    expected = [f"plugin:thread{t}:key{i}" for t in range(8) for i in range(4)]
    assert Vault(vault_dir).names() == sorted(expected)
    assert vault.names() == sorted(expected)


# --- Passphrase mode (real scrypt) ------------------------------------------------------


@pytest.mark.slow
def test_passphrase_mode_round_trip_lock_and_wrong_passphrase(vault_dir: Path) -> None:
    created = Vault(vault_dir)
    created.init(PASSPHRASE)
    created.set("provider:openai", Secret("sk-passphrase-mode"))
    assert not created.locked, "init leaves the vault unlocked"
    assert not (vault_dir / IDENTITY_FILE).exists()
    assert (vault_dir / PASSPHRASE_IDENTITY_FILE).exists()
    everything = b"".join(file_bytes(vault_dir).values())
    assert b"AGE-SECRET-KEY" not in everything
    assert b"sk-passphrase-mode" not in everything

    reopened = Vault(vault_dir)
    assert reopened.status() == VaultStatus(
        initialized=True, mode="passphrase", locked=True, count=None
    )
    with pytest.raises(VaultLocked):
        reopened.get("provider:openai")
    with pytest.raises(VaultLocked):
        reopened.set("provider:x", Secret("sk-x"))
    with pytest.raises(VaultLocked):
        reopened.unlock()
    with pytest.raises(VaultError, match=r"^wrong passphrase$"):
        reopened.unlock(OTHER_PASSPHRASE)
    assert reopened.locked
    reopened.unlock(PASSPHRASE)
    assert reopened.get("provider:openai").reveal() == "sk-passphrase-mode"
    assert reopened.status().count == 1
    reopened.lock()
    with pytest.raises(VaultLocked):
        reopened.names()

    # A damaged identity is told apart from a wrong passphrase.
    wrapped = vault_dir / PASSPHRASE_IDENTITY_FILE
    wrapped.write_bytes(_flip_payload_byte(wrapped.read_bytes()))
    with pytest.raises(VaultError, match=re.escape(f"damaged or not an age file: {wrapped}")):
        reopened.unlock(PASSPHRASE)
    wrapped.write_bytes(b"AGE-SECRET-KEY-1 not wrapped at all")
    with pytest.raises(VaultError, match="damaged"):
        reopened.unlock(PASSPHRASE)


@pytest.mark.slow
def test_passphrase_changes_both_ways_keep_identity_and_secrets(
    vault: Vault, vault_dir: Path
) -> None:
    vault.set("provider:openai", Secret("sk-keep-me"))
    identity = str(identity_of(vault_dir))
    bystander = Vault(vault_dir)
    assert bystander.names() == ["provider:openai"]

    with pytest.raises(UsageError, match="already has no passphrase"):
        vault.change_passphrase(None, None)
    vault.change_passphrase(None, PASSPHRASE)
    assert not (vault_dir / IDENTITY_FILE).exists()
    assert vault.status().mode == "passphrase"
    assert vault.get("provider:openai").reveal() == "sk-keep-me", "still unlocked"
    with pytest.raises(VaultLocked):
        bystander.get("provider:openai")  # its plain identity file is gone

    with pytest.raises(UsageError, match="has a passphrase"):
        vault.change_passphrase(None, None)
    with pytest.raises(VaultError, match=r"^wrong passphrase$"):
        vault.change_passphrase(OTHER_PASSPHRASE, None)
    assert vault.status().mode == "passphrase"

    vault.change_passphrase(PASSPHRASE, None)
    assert not (vault_dir / PASSPHRASE_IDENTITY_FILE).exists()
    assert str(identity_of(vault_dir)) == identity
    assert Vault(vault_dir).get("provider:openai").reveal() == "sk-keep-me"
    assert stat.S_IMODE((vault_dir / IDENTITY_FILE).stat().st_mode) == 0o600


@pytest.mark.slow
def test_rotation_in_passphrase_mode_rewraps_with_the_passphrase(vault_dir: Path) -> None:
    created = Vault(vault_dir)
    created.init(PASSPHRASE)
    created.set("provider:openai", Secret("sk-rotated"))
    created.set("provider:openai", Secret("sk-rotated-2"))
    old_wrapped = (vault_dir / PASSPHRASE_IDENTITY_FILE).read_bytes()
    old_identity = created._identity  # taken from memory: unwrapping it here costs a scrypt
    with pytest.raises(UsageError, match="has a passphrase"):
        created.rotate()

    created.rotate(PASSPHRASE)

    assert (vault_dir / PASSPHRASE_IDENTITY_FILE).read_bytes() != old_wrapped
    assert not (vault_dir / IDENTITY_FILE).exists()
    for name in (SECRETS_FILE, BACKUP_FILE):
        assert not decrypts_with(vault_dir / name, old_identity), name
    assert created.get("provider:openai").reveal() == "sk-rotated-2"
    reopened = Vault(vault_dir)
    reopened.unlock(PASSPHRASE)
    assert reopened.get("provider:openai").reveal() == "sk-rotated-2"
