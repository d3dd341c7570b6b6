"""The vault's files are plain age: the reference ``age`` command line tool reads and writes them.

Runs against Debian's ``age`` (1.1.1 here; ``apt-get install age``) and skips when it is not on
PATH. ``age`` reads passphrases only from a terminal, so the passphrase tests drive it through
a pseudo-terminal; they run scrypt on both sides and are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyra_daemon.secret import Secret
from pyra_daemon.vault import IDENTITY_FILE, PASSPHRASE_IDENTITY_FILE, SECRETS_FILE, Vault

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("age-keygen") is None,
    reason="the age command line tool is not installed (apt-get install age)",
)

PASSPHRASE = "correct horse battery staple"
_PROMPT = re.compile(rb"(?:Enter|Confirm) passphrase")


def run_in_pty(argv: list[str], passphrase: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``argv`` on a fresh pseudo-terminal, typing ``passphrase`` at every prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: age, with the pty as its controlling terminal
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    output, answered = b"", 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            while answered < len(_PROMPT.findall(output)):
                os.write(fd, passphrase.encode() + b"\n")
                answered += 1
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"{argv[0]} did not finish in {timeout} s: {output!r}")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def recipient_of(identity_file: Path) -> str:
    return subprocess.run(
        ["age-keygen", "-y", str(identity_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


def test_age_decrypts_what_the_vault_wrote(vault_dir: Path) -> None:
    vault = Vault(vault_dir)
    vault.init()
    vault.set("provider:openai", Secret("sk-interop-1"))
    vault.set("plugin:telegram:bot_token", Secret("123:interop"))

    decrypted = subprocess.run(
        ["age", "-d", "-i", str(vault_dir / IDENTITY_FILE), str(vault_dir / SECRETS_FILE)],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(decrypted) == {
        "plugin:telegram:bot_token": "123:interop",
        "provider:openai": "sk-interop-1",
    }


def test_the_vault_reads_what_age_encrypted_to_its_recipient(vault_dir: Path) -> None:
    vault = Vault(vault_dir)
    vault.init()
    recipient = recipient_of(vault_dir / IDENTITY_FILE)
    document = json.dumps({"provider:anthropic": "sk-from-age-cli"}).encode()
    encrypted = subprocess.run(
        ["age", "-r", recipient], input=document, capture_output=True, check=True, timeout=30
    ).stdout
    (vault_dir / SECRETS_FILE).write_bytes(encrypted)

    assert vault.get("provider:anthropic").reveal() == "sk-from-age-cli"
    assert Vault(vault_dir).names() == ["provider:anthropic"]


@pytest.mark.slow
def test_age_unwraps_the_vaults_passphrase_identity(vault_dir: Path, tmp_path: Path) -> None:
    vault = Vault(vault_dir)
    vault.init(Secret(PASSPHRASE))
    vault.set("provider:openai", Secret("sk-wrapped-interop"))
    out = tmp_path / "secrets.json"

    # age accepts a passphrase-encrypted identity file and asks for its passphrase.
    code, transcript = run_in_pty(
        [
            "age",
            "-d",
            "-i",
            str(vault_dir / PASSPHRASE_IDENTITY_FILE),
            "-o",
            str(out),
            str(vault_dir / SECRETS_FILE),
        ],
        PASSPHRASE,
    )
    assert code == 0, transcript
    assert json.loads(out.read_text()) == {"provider:openai": "sk-wrapped-interop"}


@pytest.mark.slow
def test_the_vault_unlocks_an_identity_wrapped_by_age(vault_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(plain)], capture_output=True, check=True, timeout=30)
    vault_dir.mkdir(mode=0o700)
    code, transcript = run_in_pty(
        ["age", "-p", "-o", str(vault_dir / PASSPHRASE_IDENTITY_FILE), str(plain)], PASSPHRASE
    )
    assert code == 0, transcript
    document = json.dumps({"provider:openai": "sk-age-wrapped"}).encode()
    encrypted = subprocess.run(
        ["age", "-r", recipient_of(plain)],
        input=document,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    (vault_dir / SECRETS_FILE).write_bytes(encrypted)

    vault = Vault(vault_dir)
    assert vault.status().mode == "passphrase"
    vault.unlock(Secret(PASSPHRASE))
    assert vault.get("provider:openai").reveal() == "sk-age-wrapped"
    vault.set("provider:anthropic", Secret("sk-written-back"))
    decrypted = subprocess.run(
        ["age", "-d", "-i", str(plain), str(vault_dir / SECRETS_FILE)],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(decrypted) == {
        "provider:anthropic": "sk-written-back",
        "provider:openai": "sk-age-wrapped",
    }
