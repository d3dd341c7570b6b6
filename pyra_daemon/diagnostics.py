"""The daemon's half of ``pyra doctor``: the checks only the daemon can make, as a method.

The client (:mod:`pyra_client.doctor`) cannot import pydantic, litellm or pyrage, so it asks
the running daemon, through the ``doctor`` method, for three findings:

* ``config``: the config file validated as the daemon would load it (pydantic), and whether
  it changed since the daemon loaded it (a reload or restart is then due);
* ``vault``: initialised, locked, damaged, and its permission findings;
* ``provider``: one 1-token completion against the configured model, within a short deadline,
  or ``skipped`` with the reason (not configured, or not asked for).

What it deliberately does not do: repair anything (``--fix`` is the client's, and only for
what is safe without the daemon's state), check file permissions outside the vault, look at
the service manager or at litellm's installed version (the client reads those without a
daemon), or raise: every failure becomes a finding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from pyra_client.errors import (
    ConfigError,
    NotConfigured,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    PyraError,
    VaultError,
    VaultLocked,
)
from pyra_client.paths import Layout
from pyra_client.protocol import DoctorCheck, DoctorParams, DoctorResult
from pyra_client.providers import PROVIDERS
from pyra_daemon.config import Config, load_config
from pyra_daemon.llm import LiteLLMClient
from pyra_daemon.server import Call
from pyra_daemon.vault import Vault

__all__ = ["Diagnostics", "check_config", "check_provider", "check_vault"]

log = logging.getLogger(__name__)

_RELOAD_HINT = "apply it with `pyra config reload` (some settings need `pyra daemon restart`)"


def check_config(layout: Layout, running: Config) -> DoctorCheck:
    """The config file validated now, compared with the config the daemon runs with."""
    path = layout.config_file
    try:
        on_disk = load_config(path)
    except ConfigError as exc:
        return DoctorCheck(
            name="config",
            status="fail",
            detail=str(exc),
            hint=(
                "fix the named key(s); the running daemon keeps its previous config, "
                "but a restart would exit with status 78 until then"
            ),
        )
    where = str(path) if path.exists() else f"{path} absent, all defaults"
    if on_disk != running:
        return DoctorCheck(
            name="config",
            status="warn",
            detail=f"valid ({where}), but changed since the daemon loaded it",
            hint=_RELOAD_HINT,
        )
    return DoctorCheck(name="config", status="ok", detail=f"valid ({where})")


def check_vault(vault: Vault) -> DoctorCheck:
    """Whether the vault exists, is unlocked and decrypts; modes and symlinks in it.

    Blocking (an identity-mode vault decrypts here): run it in a worker thread.
    """
    try:
        findings = vault.check_permissions(repair=False)
        state = vault.status()
    except VaultError as exc:
        return DoctorCheck(
            name="vault",
            status="fail",
            detail=f"damaged or unreadable: {exc}",
            hint="`pyra vault restore-backup` brings back the previous version (secrets.age.bak)",
        )
    except PyraError as exc:  # AccessDenied: a vault file that is a symlink
        return DoctorCheck(name="vault", status="fail", detail=str(exc))
    if not state.initialized:
        return DoctorCheck(
            name="vault",
            status="ok",
            detail=f"not initialised yet ({vault.directory}): no secrets stored",
            hint="`pyra setup` stores a provider key in a new vault",
        )
    if state.locked:
        check = DoctorCheck(
            name="vault",
            status="warn",
            detail=f"locked ({state.mode} mode): secrets are unavailable",
            hint="unlock it with `pyra vault unlock`",
        )
    else:
        check = DoctorCheck(
            name="vault",
            status="ok",
            detail=f"unlocked ({state.mode} mode), {state.count} secret(s)",
        )
    if findings:
        check.status = "warn" if check.status == "ok" else check.status
        check.detail += "; " + "; ".join(findings)
        check.hint = check.hint or "`pyra doctor --fix` repairs modes; symlinks need a person"
    return check


async def check_provider(llm: LiteLLMClient, config: Config, within: float) -> DoctorCheck:
    """One 1-token completion against the configured model (see :meth:`LiteLLMClient.probe`)."""
    settings = config.llm
    if settings.provider is None or settings.model is None:
        return DoctorCheck(
            name="provider",
            status="skipped",
            detail="no provider configured",
            hint="run `pyra setup`",
        )
    name = PROVIDERS[settings.provider].name
    started = time.monotonic()
    try:
        model = await llm.probe(within)
    except NotConfigured as exc:
        return DoctorCheck(name="provider", status="fail", detail=str(exc), hint="`pyra setup`")
    except VaultLocked as exc:
        return DoctorCheck(
            name="provider", status="skipped", detail=str(exc), hint="`pyra vault unlock`"
        )
    except ProviderAuthError as exc:
        return DoctorCheck(
            name="provider",
            status="fail",
            detail=str(exc),
            hint="store the right key with `pyra setup`",
        )
    except ProviderRateLimited as exc:
        return DoctorCheck(
            name="provider",
            status="warn",
            detail=f"reachable, but {exc}",
            hint="wait, or check the plan and quota of your account",
        )
    except ProviderBadRequest as exc:
        return DoctorCheck(
            name="provider",
            status="fail",
            detail=str(exc),
            hint=f"check the model name ({settings.model}) with `pyra setup`",
        )
    except ProviderError as exc:
        base = settings.base_url or PROVIDERS[settings.provider].default_base_url
        return DoctorCheck(
            name="provider",
            status="fail",
            detail=str(exc),
            hint=f"is {base} up and reachable?" if base else "check the network and its status",
        )
    elapsed = (time.monotonic() - started) * 1000
    return DoctorCheck(
        name="provider",
        status="ok",
        detail=f"{name} answered for {model} in {elapsed:.0f} ms",
    )


@dataclass
class Diagnostics:
    """The ``doctor`` method, over the daemon's live config, LLM client and vault.

    ``vault`` returns the daemon's own vault when it holds one (so "locked" means locked for
    the daemon); otherwise a fresh :class:`Vault` over ``vault/`` is inspected.
    """

    layout: Layout
    config: Callable[[], Config]
    llm: LiteLLMClient
    vault: Callable[[], Vault | None] = lambda: None

    async def run(self, params: DoctorParams) -> DoctorResult:
        config = self.config()
        vault = self.vault() or Vault(self.layout.vault_dir)
        checks = [
            check_config(self.layout, config),
            await anyio.to_thread.run_sync(check_vault, vault),
        ]
        if params.provider:
            checks.append(await check_provider(self.llm, config, params.timeout))
        else:
            checks.append(
                DoctorCheck(name="provider", status="skipped", detail="not asked to probe it")
            )
        for check in checks:
            if check.status in {"warn", "fail"}:
                log.info("doctor: %s %s: %s", check.name, check.status, check.detail)
        return DoctorResult(checks=checks)

    async def m_doctor(self, call: Call, params: DoctorParams) -> DoctorResult:
        return await self.run(params)
