"""The daemon's side of the vault: its RPC methods and the provider key source.

:class:`VaultService` owns the daemon's one :class:`~pyra_daemon.vault.Vault`. It creates the
vault at start (identity mode) when there is none, runs every vault call in a worker thread
(unlocking a passphrase-mode vault runs over a second of scrypt; any call may wait on the
writers' flock), and serves ``vault.*``: status, unlock, lock, set, list, delete, passwd,
rotate and restore_backup.

Secret values travel in only. No method here returns a value or decrypts anything it is handed;
``vault.list`` returns names. :meth:`VaultService.provider_key` is the one way a value leaves
the vault, into the LLM adapter at call time: it is read per call, never kept on a long-lived
object and never put in ``os.environ``, and the vault registers it with the log redactor.

Deliberately not here: prompting (frontends do that), the file format and its durability
(:mod:`pyra_daemon.vault`), and the system keyring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from pyra_client.errors import (
    AccessDenied,
    NotConfigured,
    SecretNotFound,
    UsageError,
    VaultError,
    VaultLocked,
)
from pyra_client.protocol import (
    Empty,
    OkResult,
    VaultListResult,
    VaultNameParams,
    VaultPasswdParams,
    VaultRotateParams,
    VaultSetParams,
    VaultStatusResult,
    VaultUnlockParams,
)
from pyra_client.providers import Provider
from pyra_daemon import hardening
from pyra_daemon.config import LLMConfig
from pyra_daemon.logs import redactor
from pyra_daemon.secret import Secret
from pyra_daemon.server import Call, Method, MethodTable
from pyra_daemon.vault import BACKUP_FILE, SECRETS_FILE, Vault

__all__ = ["LOCKED_MESSAGE", "VaultService", "provider_secret_name"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCKED_MESSAGE = "the vault is locked; run `pyra vault unlock`"


def provider_secret_name(provider: Provider) -> str:
    """The vault name of a provider's API key."""
    return f"provider:{provider.id}"


def _secret(value: str) -> Secret:
    """Wrap a value from a request, registering it with the log redactor first."""
    redactor.add(value)
    return Secret(value)


def _optional_secret(value: str | None) -> Secret | None:
    return None if value is None else _secret(value)


class VaultService:
    """The daemon's vault and its ``vault.*`` methods; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.vault = Vault(directory)

    async def _run(self, function: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(function)
        except VaultLocked:
            raise VaultLocked(LOCKED_MESSAGE) from None

    # --- start ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the vault (identity mode) if there is none, and report its state.

        A damaged vault is logged, never raised: the daemon serves anyway, and
        ``vault.status`` explains what is wrong and what to do.
        """
        try:
            status = await anyio.to_thread.run_sync(self.vault.status)
            if not status.initialized:
                await anyio.to_thread.run_sync(self.vault.init)
            elif status.locked:
                log.info("the vault is locked (passphrase mode); `pyra vault unlock` opens it")
            for finding in await anyio.to_thread.run_sync(self.vault.check_permissions, True):
                log.warning("vault: %s", finding)
        except (VaultError, AccessDenied) as exc:
            log.error("vault unusable: %s; see `pyra vault status`", exc)  # noqa: TRY400

    # --- key source ------------------------------------------------------------------------

    async def provider_key(self, provider: Provider, config: LLMConfig) -> Secret | None:
        """The provider's key at call time: ``provider:<id>`` in the vault, else the variable
        named by ``llm.api_key_env`` (or the provider's usual one) in the daemon's environment.

        A locked vault falls back to the variable too, and without one raises
        :class:`VaultLocked`, even for a provider that may go without a key: the vault may
        hold one for it, and a request without it would fail less clearly.
        """
        name = provider_secret_name(provider)
        locked = False
        try:
            return await anyio.to_thread.run_sync(self.vault.get, name)
        except SecretNotFound:
            pass
        except VaultLocked:
            locked = True
        env = config.api_key_env or provider.api_key_env
        value = os.environ.get(env) if env else None
        if value:
            redactor.add(value)
            return Secret(value)
        if locked:
            raise VaultLocked(LOCKED_MESSAGE, provider=provider.id)
        if provider.needs_key:
            where = f", or set ${env} in the daemon's environment" if env else ""
            raise NotConfigured(
                f"no API key for {provider.name}: store one with `pyra vault set {name}` "
                f"(or `pyra setup`){where}",
                provider=provider.id,
            )
        return None

    # --- methods ---------------------------------------------------------------------------

    def methods(self) -> MethodTable:
        return {
            "vault.status": Method(Empty, self.m_status),
            "vault.unlock": Method(VaultUnlockParams, self.m_unlock),
            "vault.lock": Method(Empty, self.m_lock),
            "vault.set": Method(VaultSetParams, self.m_set),
            "vault.list": Method(Empty, self.m_list),
            "vault.delete": Method(VaultNameParams, self.m_delete),
            "vault.passwd": Method(VaultPasswdParams, self.m_passwd),
            "vault.rotate": Method(VaultRotateParams, self.m_rotate),
            "vault.restore_backup": Method(Empty, self.m_restore_backup),
        }

    async def m_status(self, call: Call, params: Empty) -> VaultStatusResult:
        return await self.status()

    async def status(self) -> VaultStatusResult:
        directory = str(self.vault.directory)
        hardened = hardening.is_dumpable()
        hardened = None if hardened is None else not hardened
        try:
            state = await anyio.to_thread.run_sync(self.vault.status)
        except (VaultError, AccessDenied) as exc:
            return VaultStatusResult(
                initialized=True,
                path=directory,
                damaged=True,
                problem=exc.message,
                hint=self._repair_hint(exc),
                hardened=hardened,
            )
        hint = None
        if not state.initialized:
            hint = "`pyra vault set NAME` or `pyra setup` creates it"
        elif state.locked:
            hint = "run `pyra vault unlock`"
        return VaultStatusResult(
            initialized=state.initialized,
            mode=state.mode,
            locked=state.locked,
            count=state.count,
            path=directory,
            hint=hint,
            hardened=hardened,
        )

    def _repair_hint(self, exc: VaultError | AccessDenied) -> str:
        path = str(exc.data.get("path") or "")
        if isinstance(exc, AccessDenied):
            return "replace the symlink with the real file, or restore the vault folder"
        if path.endswith(SECRETS_FILE):
            if os.path.lexists(self.vault.directory / BACKUP_FILE):
                return (
                    "`pyra vault restore-backup` goes back to the previous version "
                    f"(the damaged file is kept as {SECRETS_FILE}.damaged)"
                )
            return f"there is no backup; move {path} away and store the secrets again"
        if "identity" in os.path.basename(path):
            return (
                f"the identity that decrypts the vault is unreadable; restore {path} from your "
                "own backup (without it the secrets cannot be decrypted)"
            )
        return "see the daemon log (`pyra doctor` checks the vault too)"

    async def m_unlock(self, call: Call, params: VaultUnlockParams) -> VaultStatusResult:
        if not params.passphrase:
            raise UsageError("the passphrase is empty")
        await self._run(lambda: self.vault.unlock(_secret(params.passphrase)))
        return await self.status()

    async def m_lock(self, call: Call, params: Empty) -> VaultStatusResult:
        await self._run(self.vault.lock)
        return await self.status()

    async def m_set(self, call: Call, params: VaultSetParams) -> OkResult:
        await self._ensure_initialized()
        await self._run(lambda: self.vault.set(params.name, _secret(params.value)))
        log.info("vault: stored %s (by %s)", params.name, call.session.id)
        return OkResult()

    async def m_list(self, call: Call, params: Empty) -> VaultListResult:
        return VaultListResult(names=await self._run(self.vault.names))

    async def m_delete(self, call: Call, params: VaultNameParams) -> OkResult:
        await self._run(lambda: self.vault.delete(params.name))
        log.info("vault: deleted %s (by %s)", params.name, call.session.id)
        return OkResult()

    async def m_passwd(self, call: Call, params: VaultPasswdParams) -> VaultStatusResult:
        await self._ensure_initialized()
        old, new = _optional_secret(params.old), _optional_secret(params.new)
        await self._run(lambda: self.vault.change_passphrase(old, new))
        return await self.status()

    async def m_rotate(self, call: Call, params: VaultRotateParams) -> VaultStatusResult:
        passphrase = _optional_secret(params.passphrase)
        await self._run(lambda: self.vault.rotate(passphrase))
        return await self.status()

    async def m_restore_backup(self, call: Call, params: Empty) -> VaultStatusResult:
        await self._run(self.vault.restore_backup)
        return await self.status()

    async def _ensure_initialized(self) -> None:
        """Create the vault if it is missing (it is created at start; this covers a removal)."""
        state = await self._run(self.vault.status)
        if not state.initialized:
            await self._run(self.vault.init)
