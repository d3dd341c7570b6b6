"""The age vault: Pyra's secrets, encrypted at rest, decrypted in memory only.

This is the only module that opens vault files and the only one that imports :mod:`pyrage`;
every pyrage error is translated here, once, into :class:`~pyra_client.errors.VaultError` and
friends. The API is synchronous and thread-safe: the daemon calls it through
``anyio.to_thread`` because unwrapping a passphrase-protected identity runs scrypt (over a
second of CPU).

Layout of a vault directory (mode 0700, every file 0600)::

    identity.txt      the X25519 identity in plain text, age-keygen format ("identity mode":
                      the daemon unlocks unattended), or instead
    identity.age      the same identity wrapped with a passphrase ("passphrase mode")
    secrets.age       a JSON object {name: value}, age-encrypted to the identity's recipient
    secrets.age.bak   the previous version of secrets.age
    .lock             flock(2) target that serialises writers across threads and processes

Secrets are encrypted to the identity's X25519 recipient, so saving never runs scrypt; only
unlocking, changing the passphrase and rotating do. The files are plain age, so the ``age``
command line tool reads and writes them too (``age -d -i identity.age secrets.age``).

Every write goes to a temporary file in the same directory that is fsynced and renamed over
the target, then the directory is fsynced; the previous ``secrets.age`` is kept as
``secrets.age.bak``. Writers re-read the file under the lock, so two processes setting
different names both keep theirs. A file that does not decrypt is never overwritten: the
vault refuses to write until :meth:`Vault.restore_backup` (or a person) repairs it.

Deliberately not here: IPC (``pyra_daemon.server`` exposes status/unlock/lock/set/list/delete,
and never a way to read values out), prompting for passphrases (frontends do that), the
system keyring, and memory wiping (CPython cannot promise it; the daemon disables core dumps
and ptrace instead). Secret values are never logged, and each value read or stored is
registered with the daemon's log redactor; names are logged at DEBUG only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets as random_tokens
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, NamedTuple, Protocol

import msgspec
import pyrage
from pyrage import passphrase as age_passphrase
from pyrage import x25519

from pyra_client.errors import AccessDenied, SecretNotFound, UsageError, VaultError, VaultLocked
from pyra_daemon.logs import redactor
from pyra_daemon.secret import Secret

__all__ = [
    "BACKUP_FILE",
    "IDENTITY_FILE",
    "LOCK_FILE",
    "NAME_RULE",
    "PASSPHRASE_IDENTITY_FILE",
    "SECRETS_FILE",
    "Vault",
    "VaultMode",
    "VaultStatus",
    "validate_name",
]

log = logging.getLogger(__name__)

IDENTITY_FILE: Final = "identity.txt"
PASSPHRASE_IDENTITY_FILE: Final = "identity.age"  # noqa: S105 - a file name
SECRETS_FILE: Final = "secrets.age"
BACKUP_FILE: Final = "secrets.age.bak"
DAMAGED_FILE: Final = "secrets.age.damaged"
LOCK_FILE: Final = ".lock"

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_AGE_MAGIC: Final = b"age-encryption.org/v1\n"
# Temporary files are ".<target>.tmp-<pid>-<random>"; any left over is from a crashed writer.
_TEMP_RE: Final = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{8}")
# pyrage reports a scrypt stanza that fails to unwrap (a wrong passphrase) with this message;
# every other DecryptError means the file itself is broken. test_vault pins the distinction.
_WRONG_PASSPHRASE_MESSAGE: Final = "Decryption failed"  # noqa: S105 - not a password

_PART: Final = r"[a-z0-9][a-z0-9_.-]{0,63}"
_NAME_RE: Final = re.compile(rf"provider:{_PART}|plugin:{_PART}:{_PART}")
NAME_RULE: Final = (
    "a secret name is provider:<id> or plugin:<name>:<key>, "
    "where each part matches [a-z0-9][a-z0-9_.-]{0,63}"
)

VaultMode = Literal["identity", "passphrase"]

_decode_secrets = msgspec.json.Decoder(dict[str, str]).decode
_encode_secrets = msgspec.json.Encoder(order="sorted").encode


class VaultStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Vault.status` reports; holds no names and no values."""

    initialized: bool
    mode: VaultMode | None
    locked: bool
    count: int | None
    """Number of secrets; ``None`` while locked."""


class _AgeIdentity(Protocol):
    """The part of ``pyrage.x25519.Identity`` used here (pyrage ships no type stubs)."""

    def to_public(self) -> object: ...


class _Stamp(NamedTuple):
    """Identifies one version of a file: every write renames a new inode into place."""

    name: str
    device: int
    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, name: str, st: os.stat_result) -> _Stamp:
        return cls(name, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid secret name, else raise :class:`UsageError`.

    Valid: ``provider:<id>`` and ``plugin:<name>:<key>``, each part matching
    ``[a-z0-9][a-z0-9_.-]{0,63}``.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        # The rejected name is not echoed: a value pasted where the name belongs is a secret.
        raise UsageError(f"invalid secret name: {NAME_RULE}", rule=NAME_RULE)
    return name


class Vault:
    """The secrets in one vault directory.

    Constructing a ``Vault`` does no I/O. Every method may raise :class:`VaultError` (not
    initialized, damaged files, I/O failures) and :class:`AccessDenied` (a vault file that is a
    symlink); the others are listed per method. All methods are safe to call from several
    threads; writers in other processes are serialised by an flock on ``.lock``.

    In identity mode the vault unlocks itself on first use, so :meth:`lock` there only drops
    the keys and cached values until the next call. In passphrase mode it stays locked until
    :meth:`unlock` gets the passphrase.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)
        self._mutex = threading.RLock()
        self._identity: _AgeIdentity | None = None
        self._identity_stamp: _Stamp | None = None
        self._secrets: dict[str, str] | None = None
        self._secrets_stamp: _Stamp | None = None
        self._flock_held: int | None = None

    def __repr__(self) -> str:
        return f"Vault({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        """The vault directory."""
        return self._dir

    @property
    def locked(self) -> bool:
        """Whether no identity is in memory; no I/O (identity mode unlocks on first use)."""
        with self._mutex:
            return self._identity is None

    # --- Status, unlock, lock ------------------------------------------------------------

    def status(self) -> VaultStatus:
        """Whether the vault exists, its mode, whether it is locked and how many secrets it holds.

        An identity-mode vault is unlocked here, as on any first use.
        """
        with self._mutex:
            mode = self._mode_on_disk()
            if mode is None:
                return VaultStatus(initialized=False, mode=None, locked=True, count=None)
            self._check_identity_current()
            if mode == "identity" or self._identity is not None:
                count = len(self._load_secrets())
                return VaultStatus(initialized=True, mode=mode, locked=False, count=count)
            return VaultStatus(initialized=True, mode=mode, locked=True, count=None)

    def unlock(self, passphrase: Secret | None = None) -> None:
        """Load the identity into memory.

        Identity mode needs no passphrase (giving one is a :class:`UsageError`). Passphrase
        mode needs one: without it a locked vault raises :class:`VaultLocked`; a wrong one
        raises ``VaultError("wrong passphrase")`` and leaves the vault as it was. A passphrase
        is always checked, even when the vault is already unlocked.
        """
        with self._mutex:
            mode = self._require_mode()
            if mode == "identity":
                if passphrase is not None:
                    raise UsageError("this vault has no passphrase; unlock it without one")
                with self._flock(fcntl.LOCK_SH):
                    self._ensure_unlocked()
                return
            if passphrase is None:
                self._ensure_unlocked()  # VaultLocked unless already unlocked
                return
            identity, stamp = self._unwrap_identity(passphrase)
            self._forget()
            self._identity, self._identity_stamp = identity, stamp
            log.info("vault unlocked")

    def lock(self) -> None:
        """Drop the identity and every cached secret from memory."""
        with self._mutex:
            self._forget()
            log.info("vault locked")

    # --- Secrets ---------------------------------------------------------------------------

    def get(self, name: str) -> Secret:
        """The secret called ``name``.

        Raises :class:`UsageError` for an invalid name, :class:`VaultLocked` while a
        passphrase-mode vault is locked, :class:`SecretNotFound` if there is no such secret.
        """
        validate_name(name)
        with self._mutex:
            secrets = self._load_secrets()
            try:
                value = secrets[name]
            except KeyError:
                raise SecretNotFound(f"no secret named {name} in the vault", name=name) from None
            redactor.add(value)  # every value the vault hands out is masked in the logs
            log.debug("vault: read %s", name)
            return Secret(value)

    def set(self, name: str, value: Secret) -> None:
        """Store ``value`` under ``name``, replacing any previous value.

        Raises :class:`UsageError` for an invalid name or an empty value and
        :class:`VaultLocked` while a passphrase-mode vault is locked.
        """
        validate_name(name)
        if not isinstance(value, Secret):
            raise TypeError("Vault.set() takes the value as a Secret")
        if not value:
            raise UsageError(f"the value for {name} is empty", name=name)

        def store(secrets: dict[str, str]) -> None:
            secrets[name] = value.reveal()
            redactor.add(secrets[name])

        self._modify(store)
        log.debug("vault: stored %s", name)

    def delete(self, name: str) -> None:
        """Remove the secret called ``name``; :class:`SecretNotFound` if there is none."""
        validate_name(name)

        def remove(secrets: dict[str, str]) -> None:
            if secrets.pop(name, None) is None:
                raise SecretNotFound(f"no secret named {name} in the vault", name=name)

        self._modify(remove)
        log.debug("vault: deleted %s", name)

    def names(self) -> list[str]:
        """The names of all secrets, sorted; never their values."""
        with self._mutex:
            return sorted(self._load_secrets())

    # --- Life cycle ------------------------------------------------------------------------

    def init(self, passphrase: Secret | None = None) -> None:
        """Create the vault: a new identity and an empty ``secrets.age``.

        With ``passphrase`` the identity is wrapped with it (passphrase mode), otherwise it
        is stored in plain text, readable by this user only (identity mode). The vault is
        unlocked afterwards. Raises :class:`VaultError` if a vault (or a stray
        ``secrets.age``) is already there and :class:`UsageError` for an empty passphrase.
        """
        _check_new_passphrase(passphrase)
        with self._mutex:
            _make_private_dir(self._dir)
            with self._flock(fcntl.LOCK_EX):
                if self._mode_on_disk() is not None:
                    raise VaultError(
                        f"the vault is already initialized: {self._dir}", path=str(self._dir)
                    )
                secrets_path = self._path(SECRETS_FILE)
                if os.path.lexists(secrets_path):
                    raise VaultError(
                        f"found {secrets_path} without an identity to decrypt it; "
                        "move it away to create a new vault",
                        path=str(secrets_path),
                    )
                self._clean_temp_files()
                identity: _AgeIdentity = x25519.Identity.generate()
                # secrets.age first: the identity file is what marks the vault as initialized,
                # so a crash in between leaves no vault rather than a vault without secrets.
                self._write_secrets({}, [identity.to_public()], previous=None)
                self._install_identity(identity, passphrase)
            log.info("vault created in %s (%s mode)", self._dir, _mode_name(passphrase))

    def change_passphrase(self, old: Secret | None, new: Secret | None) -> None:
        """Wrap the identity with ``new``, or store it in plain text if ``new`` is ``None``.

        This switches identity mode to passphrase mode, changes the passphrase, or switches
        back. ``old`` is the current passphrase in passphrase mode (a wrong one raises
        ``VaultError("wrong passphrase")``) and must be ``None`` in identity mode. The
        identity itself, and so ``secrets.age``, stay the same. The vault is unlocked
        afterwards. Unlinking ``identity.txt`` does not erase copies of it (backups, disk
        blocks): :meth:`rotate` after switching to passphrase mode if that matters.
        """
        _check_new_passphrase(new)
        with self._mutex, self._flock(fcntl.LOCK_EX):
            identity = self._current_identity(old, action="change the passphrase")
            if new is None and not os.path.lexists(self._path(PASSPHRASE_IDENTITY_FILE)):
                raise UsageError("the vault already has no passphrase")
            self._prepare_write()
            self._install_identity(identity, new)
            log.info("vault switched to %s mode", _mode_name(new))

    def rotate(self, passphrase: Secret | None = None) -> None:
        """Replace the identity with a new one and re-encrypt every secret to it.

        The mode stays: a passphrase-mode vault needs its current ``passphrase`` (checked, and
        used to wrap the new identity); an identity-mode vault takes none. Afterwards the old
        identity decrypts neither ``secrets.age`` nor its backup. A crash part-way leaves
        files that the identity on disk decrypts: the intermediate ``secrets.age`` is
        encrypted to both the old and the new identity.
        """
        with self._mutex, self._flock(fcntl.LOCK_EX):
            old = self._current_identity(passphrase, action="rotate the identity")
            self._prepare_write()
            secrets, _, _ = self._read_secrets(old)
            backup = self._read_backup(old)
            new: _AgeIdentity = x25519.Identity.generate()
            # Encrypted to both identities first, so that whichever identity file a crash
            # leaves in place still decrypts secrets.age and its backup.
            both, only_new = [old.to_public(), new.to_public()], [new.to_public()]
            self._write_reencrypted(secrets, backup, both)
            self._install_identity(new, passphrase)
            self._write_reencrypted(secrets, backup, only_new)
            log.info("vault identity rotated; %d secrets re-encrypted", len(secrets))

    def restore_backup(self) -> None:
        """Replace a damaged or missing ``secrets.age`` with ``secrets.age.bak``.

        The damaged file is kept as ``secrets.age.damaged``. Raises :class:`UsageError` if
        ``secrets.age`` is intact (nothing to restore) and :class:`VaultError` if there is no
        backup or the backup is damaged too.
        """
        with self._mutex, self._flock(fcntl.LOCK_EX):
            identity = self._ensure_unlocked()
            self._prepare_write()
            backup_path = self._path(BACKUP_FILE)
            got = _read_file(backup_path)
            if got is None:
                raise VaultError(f"there is no backup to restore: {backup_path}")
            backup_data, _ = got
            try:
                backup = _decrypt_secrets(backup_data, identity)
            except _Undecryptable as exc:
                raise VaultError(
                    f"the backup is damaged too: {backup_path}", path=str(backup_path)
                ) from exc.__cause__
            secrets_path = self._path(SECRETS_FILE)
            current = _read_file(secrets_path)
            if current is not None:
                try:
                    _decrypt_secrets(current[0], identity)
                except _Undecryptable:
                    self._write_file(DAMAGED_FILE, current[0])
                else:
                    raise UsageError(f"{secrets_path} is intact; there is nothing to restore")
            self._write_file(SECRETS_FILE, backup_data)
            self._secrets, self._secrets_stamp = backup, _stamp_path(secrets_path)
            log.warning("vault restored %s from %s", secrets_path, backup_path)

    def check_permissions(self, repair: bool = False) -> list[str]:
        """Findings about the vault directory's modes and contents, one sentence each.

        Reports a directory not 0700, files not 0600, files owned by another user, symlinks,
        leftover temporary files and an interrupted mode change. With ``repair`` it fixes the
        modes and removes leftover temporary files (each such finding ends in "(fixed)");
        ownership and symlinks are left for a person. A missing directory yields no findings.
        """
        with self._mutex:
            try:
                st = os.lstat(self._dir)
            except FileNotFoundError:
                return []
            if stat.S_ISLNK(st.st_mode):
                return [f"{self._dir} is a symlink; the vault directory must be a real directory"]
            # Without a lock file there is no writer to exclude, and no reason to create one.
            if not os.path.lexists(self._path(LOCK_FILE)):
                return self._permission_findings(st, repair=repair)
            with self._flock(fcntl.LOCK_EX if repair else fcntl.LOCK_SH):
                return self._permission_findings(st, repair=repair)

    # --- Internals: identity -----------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self._dir / name

    def _mode_on_disk(self) -> VaultMode | None:
        # identity.txt wins when both exist (a mode change was interrupted): that is the
        # identity a thief would find, so it is the honest answer, and the next
        # change_passphrase() finishes the job.
        if os.path.lexists(self._path(IDENTITY_FILE)):
            return "identity"
        if os.path.lexists(self._path(PASSPHRASE_IDENTITY_FILE)):
            return "passphrase"
        return None

    def _require_mode(self) -> VaultMode:
        mode = self._mode_on_disk()
        if mode is None:
            raise self._not_initialized()
        return mode

    def _not_initialized(self) -> VaultError:
        return VaultError(
            f"there is no vault in {self._dir}; initialize it first", path=str(self._dir)
        )

    def _forget(self) -> None:
        self._identity = None
        self._identity_stamp = None
        self._secrets = None
        self._secrets_stamp = None

    def _check_identity_current(self) -> None:
        """Drop the keys if another process replaced the identity file (rotation, mode change)."""
        if self._identity_stamp is None:
            return
        if _stamp_path(self._path(self._identity_stamp.name)) != self._identity_stamp:
            log.info("vault identity changed on disk; dropping the keys held in memory")
            self._forget()

    def _ensure_unlocked(self) -> _AgeIdentity:
        self._check_identity_current()
        if self._identity is not None:
            return self._identity
        if self._require_mode() == "passphrase":
            raise VaultLocked("the vault is locked; unlock it with its passphrase")
        path = self._path(IDENTITY_FILE)
        got = _read_file(path)
        if got is None:
            raise VaultError(f"vault identity disappeared: {path}", path=str(path))
        data, stamp = got
        self._identity, self._identity_stamp = _parse_identity(data, path), stamp
        log.debug("vault unlocked from %s", path)
        return self._identity

    def _unwrap_identity(self, passphrase: Secret) -> tuple[_AgeIdentity, _Stamp]:
        path = self._path(PASSPHRASE_IDENTITY_FILE)
        got = _read_file(path)
        if got is None:
            raise VaultError(f"vault identity disappeared: {path}", path=str(path))
        data, stamp = got
        if not data.startswith(_AGE_MAGIC):
            raise _damaged(path)  # checked first: spares a second of scrypt
        try:
            plain: bytes = age_passphrase.decrypt(data, passphrase.reveal())
        except pyrage.DecryptError as exc:
            if str(exc) == _WRONG_PASSPHRASE_MESSAGE:
                raise VaultError("wrong passphrase") from exc
            raise _damaged(path) from exc
        return _parse_identity(plain, path), stamp

    def _current_identity(self, passphrase: Secret | None, *, action: str) -> _AgeIdentity:
        """The identity on disk, checking ``passphrase`` against the mode (under the lock)."""
        if self._require_mode() == "identity":
            if passphrase is not None:
                raise UsageError(f"this vault has no passphrase; {action} without one")
            return self._ensure_unlocked()
        if passphrase is None:
            raise UsageError(f"this vault has a passphrase; {action} with it")
        identity, stamp = self._unwrap_identity(passphrase)
        if self._identity_stamp != stamp:
            self._forget()
            self._identity, self._identity_stamp = identity, stamp
        return identity

    def _install_identity(self, identity: _AgeIdentity, passphrase: Secret | None) -> None:
        """Write the identity file for the mode and remove the other mode's file."""
        text = _identity_text(identity)
        if passphrase is None:
            name, other, data = IDENTITY_FILE, PASSPHRASE_IDENTITY_FILE, text
        else:
            name, other = PASSPHRASE_IDENTITY_FILE, IDENTITY_FILE
            try:
                data = age_passphrase.encrypt(text, passphrase.reveal())
            except pyrage.EncryptError as exc:
                raise VaultError("could not encrypt the vault identity") from exc
        self._write_file(name, data)
        # The new file is in place before the old one goes: a crash leaves both, never none.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(other))
            _fsync_dir(self._dir)
        self._identity, self._identity_stamp = identity, _stamp_path(self._path(name))

    # --- Internals: secrets --------------------------------------------------------------

    def _load_secrets(self) -> dict[str, str]:
        """The decrypted secrets, from the cache while ``secrets.age`` is unchanged."""
        self._check_identity_current()
        if (
            self._identity is not None
            and self._secrets is not None
            and _stamp_path(self._path(SECRETS_FILE)) == self._secrets_stamp
        ):
            return self._secrets
        with self._flock(fcntl.LOCK_SH):
            identity = self._ensure_unlocked()
            self._secrets, _, self._secrets_stamp = self._read_secrets(identity)
        return self._secrets

    def _read_secrets(self, identity: _AgeIdentity) -> tuple[dict[str, str], bytes, _Stamp]:
        """The secrets, the file's bytes and its stamp; damage raises :class:`VaultError`."""
        path = self._path(SECRETS_FILE)
        got = _read_file(path)
        if got is None:
            raise VaultError(f"vault file is missing: {path}{self._backup_hint()}", path=str(path))
        data, stamp = got
        try:
            return _decrypt_secrets(data, identity), data, stamp
        except _Undecryptable as exc:
            log.warning("vault file %s does not decrypt: %s", path, exc.reason)
            raise _damaged(path, self._backup_hint(), reason=exc.reason) from exc.__cause__

    def _read_backup(self, identity: _AgeIdentity) -> dict[str, str] | None:
        path = self._path(BACKUP_FILE)
        got = _read_file(path)
        if got is None:
            return None
        try:
            return _decrypt_secrets(got[0], identity)
        except _Undecryptable as exc:
            raise VaultError(
                f"the vault backup is damaged: {path}; move it away and try again",
                path=str(path),
                reason=exc.reason,
            ) from exc.__cause__

    def _write_reencrypted(
        self, secrets: dict[str, str], backup: dict[str, str] | None, recipients: list[object]
    ) -> None:
        if backup is not None:
            self._write_file(BACKUP_FILE, _encrypt(_encode_secrets(backup), recipients))
        self._write_secrets(secrets, recipients, previous=None)

    def _backup_hint(self) -> str:
        backup = self._path(BACKUP_FILE)
        return f"; the backup is {backup}" if os.path.lexists(backup) else "; there is no backup"

    def _modify(self, change: Callable[[dict[str, str]], None]) -> None:
        """Re-read ``secrets.age`` under the writer lock, apply ``change``, write it back."""
        with self._mutex, self._flock(fcntl.LOCK_EX):
            identity = self._ensure_unlocked()
            self._prepare_write()
            secrets, previous, _ = self._read_secrets(identity)
            change(secrets)
            self._write_secrets(secrets, [identity.to_public()], previous=previous)

    def _write_secrets(
        self, secrets: dict[str, str], recipients: list[object], *, previous: bytes | None
    ) -> None:
        data = _encrypt(_encode_secrets(secrets), recipients)
        if previous is not None:
            self._write_file(BACKUP_FILE, previous)
        self._write_file(SECRETS_FILE, data)
        self._secrets, self._secrets_stamp = secrets, _stamp_path(self._path(SECRETS_FILE))

    # --- Internals: files and locking ----------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, operation: int) -> Iterator[None]:
        """Hold ``.lock`` shared or exclusive; nested use inside a held lock is a no-op."""
        if self._flock_held is not None:
            # Upgrading shared to exclusive on a second descriptor would deadlock on ourselves.
            if operation == fcntl.LOCK_EX and self._flock_held != fcntl.LOCK_EX:
                raise RuntimeError("vault lock upgrade from shared to exclusive")
            yield
            return
        path = self._path(LOCK_FILE)
        if not os.path.isdir(self._dir):
            raise self._not_initialized()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            raise _os_error(exc, path) from exc
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != _FILE_MODE:
                os.fchmod(fd, _FILE_MODE)
            fcntl.flock(fd, operation)
            self._flock_held = operation
            try:
                yield
            finally:
                self._flock_held = None
        finally:
            os.close(fd)  # also releases the flock

    def _prepare_write(self) -> None:
        """Before writing (under the exclusive lock): 0700 directory, no crash leftovers."""
        mode = stat.S_IMODE(os.stat(self._dir).st_mode)
        if mode != _DIR_MODE:
            log.warning("vault directory %s had mode %04o; set to 0700", self._dir, mode)
            os.chmod(self._dir, _DIR_MODE)
        self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        # Under the exclusive lock no writer is running, so any temporary file is a leftover.
        for entry in os.scandir(self._dir):
            if _TEMP_RE.fullmatch(entry.name):
                log.info("vault: removing %s left by an interrupted write", entry.name)
                os.unlink(entry.path)

    def _write_file(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            _atomic_write(path, data)
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def _permission_findings(self, dir_stat: os.stat_result, *, repair: bool) -> list[str]:
        findings: list[str] = []
        uid = os.geteuid()
        fixed = " (fixed)" if repair else ""

        def check_owner(path: Path, st: os.stat_result) -> None:
            if st.st_uid != uid:
                findings.append(f"{path} is owned by uid {st.st_uid}, not by uid {uid}")

        check_owner(self._dir, dir_stat)
        mode = stat.S_IMODE(dir_stat.st_mode)
        if mode != _DIR_MODE:
            findings.append(f"{self._dir} has mode {mode:04o}, expected 0700{fixed}")
            if repair:
                os.chmod(self._dir, _DIR_MODE)
        for entry in sorted(os.scandir(self._dir), key=lambda e: e.name):
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                findings.append(f"{path} is a symlink; the vault does not follow symlinks")
                continue
            check_owner(path, st)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                findings.append(f"{path} is a directory the vault does not use")
            elif _TEMP_RE.fullmatch(entry.name):
                findings.append(f"{path} is left over from an interrupted write{fixed}")
                if repair:
                    os.unlink(path)
            elif mode != _FILE_MODE:
                findings.append(f"{path} has mode {mode:04o}, expected 0600{fixed}")
                if repair:
                    os.chmod(path, _FILE_MODE)
        if os.path.lexists(self._path(IDENTITY_FILE)) and os.path.lexists(
            self._path(PASSPHRASE_IDENTITY_FILE)
        ):
            findings.append(
                f"both {IDENTITY_FILE} and {PASSPHRASE_IDENTITY_FILE} exist (an interrupted "
                f"passphrase change); the vault uses {IDENTITY_FILE}: change the passphrase "
                "again to finish"
            )
        return findings


# --- Module helpers ----------------------------------------------------------------------


class _Undecryptable(Exception):
    """A secrets file that does not decrypt or decode; ``reason`` holds no plaintext."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decrypt_secrets(data: bytes, identity: _AgeIdentity) -> dict[str, str]:
    try:
        plain: bytes = pyrage.decrypt(data, [identity])
    except pyrage.DecryptError as exc:
        raise _Undecryptable(str(exc)) from exc
    try:
        return _decode_secrets(plain)
    except msgspec.DecodeError:
        # ``from None``: a decoder's message or context may quote the decrypted document.
        raise _Undecryptable("decrypted, but not a JSON object of strings") from None


def _encrypt(plain: bytes, recipients: list[object]) -> bytes:
    try:
        data: bytes = pyrage.encrypt(plain, recipients)
    except pyrage.EncryptError as exc:
        raise VaultError("could not encrypt the vault's secrets") from exc
    return data


def _parse_identity(data: bytes, path: Path) -> _AgeIdentity:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if len(keys) != 1 or not keys[0].startswith("AGE-SECRET-KEY-"):
        raise _damaged(path)
    try:
        identity: _AgeIdentity = x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError as exc:
        raise _damaged(path) from exc
    return identity


def _identity_text(identity: _AgeIdentity) -> bytes:
    """The identity in age-keygen's format, so ``age -i`` reads the file as it is."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n").encode(
        "ascii"
    )


def _damaged(path: Path, backup_hint: str = "", reason: str | None = None) -> VaultError:
    return VaultError(
        f"vault file is damaged or not an age file: {path}{backup_hint}",
        path=str(path),
        reason=reason,
    )


def _os_error(exc: OSError, path: Path) -> AccessDenied | VaultError:
    if exc.errno == errno.ELOOP:
        return AccessDenied(
            f"vault file is a symlink; refusing to follow it: {path}", path=str(path)
        )
    return VaultError(f"cannot access vault file {path}: {exc.strerror}", path=str(path))


def _check_new_passphrase(passphrase: Secret | None) -> None:
    if passphrase is not None and not passphrase:
        raise UsageError("the passphrase must not be empty")


def _mode_name(passphrase: Secret | None) -> VaultMode:
    return "identity" if passphrase is None else "passphrase"


def _read_file(path: Path) -> tuple[bytes, _Stamp] | None:
    """A file's bytes and stamp (from the same descriptor), or ``None`` if it is missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error(exc, path) from exc
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise VaultError(f"vault file is not a regular file: {path}", path=str(path))
        return file.read(), _Stamp.of(path.name, st)


def _stamp_path(path: Path) -> _Stamp | None:
    try:
        return _Stamp.of(path.name, os.lstat(path))
    except FileNotFoundError:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{random_tokens.token_hex(4)}")
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE
    )
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _FILE_MODE)  # exactly 0600, whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_dir(directory: Path) -> None:
    """Create ``directory`` (0700) if needed; parents get the default mode."""
    try:
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(os.stat(directory).st_mode) != _DIR_MODE:
            os.chmod(directory, _DIR_MODE)
    except OSError as exc:
        raise VaultError(
            f"cannot create the vault directory {directory}: {exc.strerror}",
            path=str(directory),
        ) from exc
