"""The gatekeeper: who may talk to Pyra through a messaging bot, and the bots' durable inbox.

One :class:`GateService` in the daemon serves every bot (Telegram now, Matrix and Signal
later), which are IPC frontends that hold no state worth keeping. It answers three questions:

* **May this sender say this?** (``gate.check``) Senders are allowed by their stable numeric
  platform id (``[gatekeeper.<platform>] allow``), never by a display or user name. Anyone else
  gets one short fixed refusal an hour at most (or silence) and a line in the security log. An
  allowed sender must give the shared passphrase (a bcrypt hash in the vault as
  ``plugin:gatekeeper:passphrase``; never in the config, the database or a log) before their
  first conversation and again after ``idle_challenge_after`` seconds of silence; the message
  that triggered the challenge is held and answered once the passphrase is right. ``max_failures``
  wrong passphrases in a row lock the sender out for ``lockout`` seconds, and the lockout is in
  SQLite, so a restart does not lift it. Each sender may send ``rate_limit`` messages an hour.
  Every allowed message is run through the injection scanner (:mod:`pyra_daemon.injection`);
  findings are flags on the conversation and lines in the security log. Every decision is a row
  of ``gate_log`` (never the message text).
* **Did we already take this update?** (``inbox.*``) A bot records each platform update with
  ``inbox.accept`` *before* it confirms the update to the platform, so a crash anywhere after
  that point loses nothing: unanswered items come back from ``inbox.pending``. ``inbox.ask``
  runs the turn for an allowed item once and keeps the answer until ``inbox.done``, so a retry
  after a bot crash replays the answer instead of asking the model again, and ``inbox.sent``
  records the platform ids of the reply parts, so a retry edits them instead of sending twice.
  A probable passphrase is never stored.
* **Is this button press the person's answer?** (``gate.prompt``/``gate.press``) An approval
  message gets one opaque random token per button (the platform's callback data). A press is
  accepted only from the chat the prompt was sent to, only from the sender it was sent for
  (any allowed sender in a group), only once, only before expiry, and only for a prompt of this
  daemon's life: prompts still open at start are ``orphaned``, since the broker forgets pending
  requests on restart. The bot then answers through ``interactions.answer``, where the broker
  applies its own binding to the connection.

What this module deliberately does not do: talk to any platform (the bots do), render
messages, decide tool approvals (the broker and the approval policies do), or keep anything
of a conversation but its id.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread
import bcrypt
import pydantic

from pyra_client.errors import (
    AccessDenied,
    ApprovalRefused,
    ConfigError,
    InvalidParams,
    NotFound,
    SecretNotFound,
    ShuttingDown,
    VaultLocked,
)
from pyra_client.paths import Layout
from pyra_client.protocol import (
    PERMISSION_DECISIONS,
    AskParams,
    Event,
    GateAction,
    GateChallengeParams,
    GateChatParams,
    GateCheckParams,
    GateConversationResult,
    GateInfoResult,
    GatePassphraseParams,
    GatePlatformParams,
    GatePressParams,
    GatePressResult,
    GatePromptClosedParams,
    GatePromptParams,
    GatePromptResult,
    GatePromptSentParams,
    GatePromptsParams,
    GatePromptsResult,
    GatePromptView,
    GateResult,
    GateSenderParams,
    GateSetupParams,
    GateSetupResult,
    InboxAcceptParams,
    InboxAcceptResult,
    InboxAskResult,
    InboxItem,
    InboxItemParams,
    InboxPendingParams,
    InboxPendingResult,
    InboxSentParams,
    OkResult,
    ToolCallEvent,
)
from pyra_daemon import injection
from pyra_daemon.config import Config, GatePlatformConfig, save_config
from pyra_daemon.db import Database, Row
from pyra_daemon.engine import Emit, Engine
from pyra_daemon.logs import redactor
from pyra_daemon.secret import Secret
from pyra_daemon.server import Call, Method, MethodTable

__all__ = [
    "PASSPHRASE_SECRET",
    "PLATFORMS",
    "REPLY_CHALLENGE",
    "GateHost",
    "GateService",
    "SecretStore",
    "hash_passphrase",
    "verify_passphrase",
]

log = logging.getLogger(__name__)

#: Platforms with a ``[gatekeeper.<platform>]`` table.
PLATFORMS = ("telegram", "matrix", "signal")
#: The vault name of the shared passphrase's bcrypt hash.
PASSPHRASE_SECRET = "plugin:gatekeeper:passphrase"  # noqa: S105 - a name, not a secret
MIN_PASSPHRASE = 8
#: Window of the per-sender rate limit, and of the one-refusal-an-hour rule.
_HOUR = 3600.0
#: Done inbox items are kept this long to recognise a redelivered update (Telegram keeps an
#: unconfirmed update for 24 hours).
_INBOX_KEEP = 2 * 86_400.0
_LOG_KEEP = 90 * 86_400.0
_PROMPT_KEEP = 7 * 86_400.0
_FOREVER = 1e18
#: A challenge left unanswered this long lapses: a message days later is a message, not an
#: attempt (which would be deleted and counted as a failure).
_CHALLENGE_TTL = 600.0

REPLY_CHALLENGE = (
    "🔒 Send Pyra's passphrase to continue. Your message is kept and answered once the "
    "passphrase is right; the message holding the passphrase is deleted."
)
REPLY_CHALLENGE_AGAIN = "🔒 Send Pyra's passphrase first (commands wait until then)."
REPLY_VERIFIED = "✅ Passphrase accepted."
REPLY_NO_PASSPHRASE = (
    "🔒 Pyra's owner has not set a passphrase yet (`pyra setup passphrase` on the machine)."  # noqa: S105 - a reply, not a password
)
REPLY_VAULT_LOCKED = (
    "🔒 Pyra's vault is locked; unlock it on the machine (`pyra vault unlock`) and try again."
)
REPLY_BAD_HASH = "🔒 Pyra's passphrase is misconfigured; set it again with `pyra setup passphrase`."


class SecretStore(Protocol):
    """The daemon's vault, as far as the gatekeeper needs it (blocking calls)."""

    def get(self, name: str) -> Secret: ...

    def set(self, name: str, value: Secret) -> None: ...


class GateHost(Protocol):
    """What the service needs of the daemon: where things are, the live config, the engine."""

    layout: Layout
    config: Config
    engine: Engine | None


#: Marks a conversation as holding untrusted content (the tool registry's ``taint``).
Taint = Callable[[str, str], Awaitable[object]]


def _prehash(passphrase: str) -> bytes:
    # bcrypt reads at most 72 bytes and stops at NUL: hash first, so every byte counts.
    return base64.b64encode(hashlib.sha256(passphrase.encode("utf-8")).digest())


def hash_passphrase(passphrase: str, *, rounds: int = 12) -> str:
    """The bcrypt hash kept in the vault (blocking: about 0.25 s at 12 rounds)."""
    return bcrypt.hashpw(_prehash(passphrase), bcrypt.gensalt(rounds)).decode("ascii")


def verify_passphrase(passphrase: str, hashed: str) -> bool:
    """Constant-time check of *passphrase* against a :func:`hash_passphrase` hash (blocking).

    Raises ``ValueError`` when *hashed* is not a bcrypt hash.
    """
    return bcrypt.checkpw(_prehash(passphrase), hashed.encode("ascii"))


def _duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass
class _Sender:
    verified_at: float | None = None
    last_seen: float | None = None
    challenged_at: float | None = None
    failures: int = 0
    locked_until: float | None = None

    @classmethod
    def of(cls, row: Row | None) -> _Sender:
        if row is None:
            return cls()
        return cls(
            verified_at=row["verified_at"],
            last_seen=row["last_seen"],
            challenged_at=row["challenged_at"],
            failures=row["failures"],
            locked_until=row["locked_until"],
        )

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def awaiting(self, now: float) -> bool:
        """A challenge is outstanding: the next message is taken as the passphrase."""
        return self.challenged_at is not None and now - self.challenged_at < _CHALLENGE_TTL

    def needs_passphrase(self, now: float, idle: float) -> bool:
        if self.verified_at is None:
            return True
        seen = self.last_seen or self.verified_at
        return bool(idle) and now - seen > idle


class GateService:
    """The gatekeeper, the inbox and the approval buttons of every bot; see the module doc.

    Seams for tests: ``clock`` (epoch seconds, for idle periods, lockouts, rate limits and
    expiry) and ``rounds`` (bcrypt cost). Bound to the database by :meth:`open`.
    """

    def __init__(
        self,
        host: GateHost,
        *,
        secrets_store: SecretStore | None,
        taint: Taint | None = None,
        clock: Callable[[], float] = time.time,
        rounds: int = 12,
    ) -> None:
        self._host = host
        self._secrets = secrets_store
        self._taint = taint
        self._clock = clock
        self._rounds = rounds
        self._db: Database | None = None
        # Decisions read and then write a sender's state: one at a time keeps them exact.
        self._lock = anyio.Lock()
        self._config_lock = anyio.Lock()

    async def open(self, db: Database) -> None:
        """Bind to *db*; orphan the prompts of the previous run and prune old rows."""
        self._db = db
        now = self._clock()
        async with db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE gate_prompts SET state = 'orphaned' WHERE state IN ('open', 'pressed')"
            )
            orphaned = cursor.rowcount
            await conn.execute(
                "DELETE FROM gate_prompts WHERE state IN ('closed', 'orphaned') AND created_at < ?",
                (now - _PROMPT_KEEP,),
            )
            await conn.execute(
                "DELETE FROM inbox WHERE state IN ('done', 'held') AND received_at < ?",
                (now - _INBOX_KEEP,),
            )
            await conn.execute("DELETE FROM gate_log WHERE at < ?", (now - _LOG_KEEP,))
        if orphaned:
            log.info(
                "%d approval prompt(s) of the previous run can no longer be answered", orphaned
            )

    def methods(self) -> MethodTable:
        return {
            "gate.check": Method(GateCheckParams, self.m_check),
            "gate.answer_challenge": Method(GateChallengeParams, self.m_answer_challenge),
            "gate.info": Method(GatePlatformParams, self.m_info),
            "gate.setup": Method(GateSetupParams, self.m_setup),
            "gate.set_passphrase": Method(GatePassphraseParams, self.m_set_passphrase),
            "gate.unlock": Method(GateSenderParams, self.m_unlock),
            "gate.conversation": Method(GateChatParams, self.m_conversation),
            "gate.new_conversation": Method(GateChatParams, self.m_new_conversation),
            "gate.prompt": Method(GatePromptParams, self.m_prompt),
            "gate.prompt_sent": Method(GatePromptSentParams, self.m_prompt_sent),
            "gate.press": Method(GatePressParams, self.m_press),
            "gate.prompts": Method(GatePromptsParams, self.m_prompts),
            "gate.prompt_closed": Method(GatePromptClosedParams, self.m_prompt_closed),
            "inbox.accept": Method(InboxAcceptParams, self.m_accept),
            "inbox.pending": Method(InboxPendingParams, self.m_pending),
            "inbox.hold": Method(InboxItemParams, self.m_hold),
            "inbox.ask": Method(InboxItemParams, self.m_ask),
            "inbox.sent": Method(InboxSentParams, self.m_sent),
            "inbox.done": Method(InboxItemParams, self.m_done),
        }

    # --- helpers -------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        if self._db is None:
            raise ShuttingDown("the daemon is not serving")
        return self._db

    def settings(self, platform: str) -> GatePlatformConfig:
        if platform not in PLATFORMS:
            raise InvalidParams(
                f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}", platform=platform
            )
        config: GatePlatformConfig = getattr(self._host.config.gatekeeper, platform)
        return config

    async def _record(
        self, platform: str, sender: str, chat: str, event: str, *, action: str, detail: str = ""
    ) -> None:
        level = logging.INFO if action in ("allow", "verified") else logging.WARNING
        log.log(
            level,
            "gate %s: %s %s from %s in %s%s",
            platform,
            event,
            action,
            sender,
            chat or "-",
            f" ({detail})" if detail else "",
        )
        await self.db.execute(
            "INSERT INTO gate_log (at, platform, sender, chat, event, action, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self._clock(), platform, sender, chat, event, action, detail),
        )

    async def _sender(self, platform: str, sender: str) -> _Sender:
        row = await self.db.fetchone(
            "SELECT * FROM gate_senders WHERE platform = ? AND sender = ?", (platform, sender)
        )
        return _Sender.of(row)

    async def _save_sender(self, platform: str, sender: str, state: _Sender) -> None:
        await self.db.execute(
            "INSERT INTO gate_senders "
            "(platform, sender, verified_at, last_seen, challenged_at, failures, locked_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, sender) DO UPDATE SET "
            "verified_at = excluded.verified_at, last_seen = excluded.last_seen, "
            "challenged_at = excluded.challenged_at, failures = excluded.failures, "
            "locked_until = excluded.locked_until",
            (
                platform,
                sender,
                state.verified_at,
                state.last_seen,
                state.challenged_at,
                state.failures,
                state.locked_until,
            ),
        )

    async def _passphrase_hash(self) -> str | None:
        if self._secrets is None:
            return None
        store = self._secrets
        try:
            secret = await anyio.to_thread.run_sync(store.get, PASSPHRASE_SECRET)
        except SecretNotFound:
            return None
        return secret.reveal()

    async def _recent(self, platform: str, sender: str, action: str, since: float) -> bool:
        return (
            await self.db.fetchval(
                "SELECT 1 FROM gate_log WHERE platform = ? AND sender = ? AND action = ? "
                "AND at >= ? LIMIT 1",
                (platform, sender, action, since),
            )
            is not None
        )

    async def _mark(
        self, platform: str, update_id: int | None, action: str, conversation: str | None = None
    ) -> None:
        if update_id is None:
            return
        await self.db.execute(
            "UPDATE inbox SET action = ?, conversation = COALESCE(?, conversation) "
            "WHERE platform = ? AND update_id = ?",
            (action, conversation, platform, update_id),
        )

    # --- gate.check ------------------------------------------------------------------------

    async def m_check(self, call: Call, params: GateCheckParams) -> GateResult:
        async with self._lock:
            result = await self.check(params)
        await self._mark(params.platform, params.update_id, result.action, result.conversation)
        return result

    async def check(self, p: GateCheckParams) -> GateResult:
        """The decision on one incoming message (see the module docstring)."""
        cfg = self.settings(p.platform)
        now = self._clock()
        if p.update_id is not None:
            row = await self.db.fetchone(
                "SELECT action, conversation FROM inbox WHERE platform = ? AND update_id = ?",
                (p.platform, p.update_id),
            )
            if row is not None and row["action"] == "allow" and row["conversation"]:
                return GateResult(action="allow", conversation=row["conversation"])
        if cfg.private_only and p.chat_type != "private":
            await self._record(
                p.platform, p.sender, p.chat, "message", action="silent", detail="not private"
            )
            return GateResult(action="silent")
        if p.sender not in cfg.allow:
            return await self._refuse_stranger(p, cfg, now)
        state = await self._sender(p.platform, p.sender)
        if state.locked(now):
            return await self._locked(p, state, now)
        if state.locked_until is not None:  # a lockout that ran out: start afresh
            state.locked_until, state.failures = None, 0
            await self._save_sender(p.platform, p.sender, state)
        if cfg.challenge and state.needs_passphrase(now, cfg.idle_challenge_after):
            if state.awaiting(now) and _is_attempt(p.text):
                return await self._attempt(
                    p.platform, p.sender, p.chat, p.text, cfg=cfg, state=state
                )
            return await self._challenge(p, state, now)
        if cfg.rate_limit:
            limited = await self._rate_limited(p, cfg, now)
            if limited is not None:
                return limited
        conversation = await self.conversation_for(p.platform, p.chat)
        flags = await self._scan(p, conversation)
        state.last_seen = now
        await self._save_sender(p.platform, p.sender, state)
        await self._record(p.platform, p.sender, p.chat, "message", action="allow")
        return GateResult(action="allow", conversation=conversation, flags=flags)

    async def _refuse_stranger(
        self, p: GateCheckParams, cfg: GatePlatformConfig, now: float
    ) -> GateResult:
        # One refusal an hour at most: a stranger cannot make the bot talk on demand.
        repeated = await self._recent(p.platform, p.sender, "refuse", now - _HOUR)
        action: GateAction = "refuse" if cfg.refusal and not repeated else "silent"
        await self._record(
            p.platform, p.sender, p.chat, "message", action=action, detail="not allowed"
        )
        return GateResult(action=action, reply=cfg.refusal if action == "refuse" else "")

    async def _locked(self, p: GateCheckParams, state: _Sender, now: float) -> GateResult:
        await self._record(p.platform, p.sender, p.chat, "message", action="locked")
        return GateResult(action="locked", reply=_locked_reply(state, now))

    async def _challenge(self, p: GateCheckParams, state: _Sender, now: float) -> GateResult:
        problem = await self._passphrase_problem()
        if problem is not None:
            await self._record(
                p.platform, p.sender, p.chat, "message", action="refuse", detail=problem[0]
            )
            return GateResult(action="refuse", reply=problem[1])
        again = state.awaiting(now)
        if not again:
            state.challenged_at = now
            await self._save_sender(p.platform, p.sender, state)
        await self._record(p.platform, p.sender, p.chat, "message", action="challenge")
        return GateResult(
            action="challenge", reply=REPLY_CHALLENGE_AGAIN if again else REPLY_CHALLENGE
        )

    async def _passphrase_problem(self) -> tuple[str, str] | None:
        try:
            hashed = await self._passphrase_hash()
        except VaultLocked:
            return "vault locked", REPLY_VAULT_LOCKED
        if hashed is None:
            return "no passphrase set", REPLY_NO_PASSPHRASE
        return None

    async def _rate_limited(
        self, p: GateCheckParams, cfg: GatePlatformConfig, now: float
    ) -> GateResult | None:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM gate_log WHERE platform = ? "
            "AND sender = ? AND event = 'message' AND action = 'allow' AND at > ?",
            (p.platform, p.sender, now - _HOUR),
        )
        if row is None or row["n"] < cfg.rate_limit:
            return None
        wait = row["oldest"] + _HOUR - now
        # Say it once per full window; the messages that follow are dropped quietly.
        told = await self._recent(p.platform, p.sender, "rate_limited", row["oldest"])
        await self._record(
            p.platform,
            p.sender,
            p.chat,
            "message",
            action="rate_limited",
            detail=f"{row['n']} in the hour",
        )
        reply = (
            ""
            if told
            else f"⏳ That makes {cfg.rate_limit} messages in the last hour, the limit. "
            f"Try again in {_duration(wait)}."
        )
        return GateResult(action="rate_limited", reply=reply)

    async def _scan(self, p: GateCheckParams, conversation: str) -> list[str]:
        findings = injection.scan(p.text)
        if not findings:
            return []
        flags = injection.flags_for(findings)
        rules = ", ".join(f.rule for f in findings)
        async with self.db.transaction() as conn:
            for flag in flags:
                await conn.execute(
                    "INSERT OR IGNORE INTO gate_flags (conversation, flag, at) VALUES (?, ?, ?)",
                    (conversation, flag, self._clock()),
                )
        await self._record(
            p.platform,
            p.sender,
            p.chat,
            "injection",
            action="flagged",
            detail=f"{rules} ({injection.VERSION})",
        )
        if self._taint is not None:
            await self._taint(conversation, f"incoming message flagged by the scanner: {rules}")
        return flags

    async def conversation_flags(self, conversation: str) -> list[str]:
        """Scanner flags raised by incoming messages of *conversation* (for the tool gate)."""
        rows = await self.db.fetchall(
            "SELECT flag FROM gate_flags WHERE conversation = ? ORDER BY flag", (conversation,)
        )
        return [row["flag"] for row in rows]

    # --- passphrase ------------------------------------------------------------------------

    async def m_answer_challenge(self, call: Call, params: GateChallengeParams) -> GateResult:
        cfg = self.settings(params.platform)
        async with self._lock:
            if params.sender not in cfg.allow:
                await self._record(
                    params.platform, params.sender, params.chat, "passphrase", action="refuse"
                )
                return GateResult(action="silent")
            state = await self._sender(params.platform, params.sender)
            if state.locked(self._clock()):
                return await self._locked(
                    GateCheckParams(
                        platform=params.platform, sender=params.sender, chat=params.chat
                    ),
                    state,
                    self._clock(),
                )
            return await self._attempt(
                params.platform, params.sender, params.chat, params.attempt, cfg=cfg, state=state
            )

    async def _attempt(
        self,
        platform: str,
        sender: str,
        chat: str,
        attempt: str,
        *,
        cfg: GatePlatformConfig,
        state: _Sender,
    ) -> GateResult:
        try:
            hashed = await self._passphrase_hash()
        except VaultLocked:
            await self._record(
                platform, sender, chat, "passphrase", action="refuse", detail="vault locked"
            )
            return GateResult(action="refuse", reply=REPLY_VAULT_LOCKED, delete=True)
        if hashed is None:
            await self._record(
                platform, sender, chat, "passphrase", action="refuse", detail="no passphrase"
            )
            return GateResult(action="refuse", reply=REPLY_NO_PASSPHRASE, delete=True)
        try:
            ok = await anyio.to_thread.run_sync(verify_passphrase, attempt.strip(), hashed)
        except ValueError:
            log.error("the passphrase in the vault is not a bcrypt hash")  # noqa: TRY400
            await self._record(
                platform, sender, chat, "passphrase", action="refuse", detail="bad hash"
            )
            return GateResult(action="refuse", reply=REPLY_BAD_HASH, delete=True)
        now = self._clock()
        if ok:
            state.verified_at = state.last_seen = now
            state.challenged_at, state.failures, state.locked_until = None, 0, None
            await self._save_sender(platform, sender, state)
            await self._record(platform, sender, chat, "passphrase", action="verified")
            return GateResult(action="verified", reply=REPLY_VERIFIED, delete=True, resume=True)
        state.failures += 1
        if state.failures >= cfg.max_failures:
            state.locked_until = now + cfg.lockout if cfg.lockout else _FOREVER
            state.challenged_at = None
            await self._save_sender(platform, sender, state)
            await self._record(
                platform,
                sender,
                chat,
                "passphrase",
                action="locked",
                detail=f"{state.failures} failures",
            )
            return GateResult(action="locked", reply=_locked_reply(state, now), delete=True)
        await self._save_sender(platform, sender, state)
        await self._record(
            platform,
            sender,
            chat,
            "passphrase",
            action="wrong",
            detail=f"{state.failures} failures",
        )
        left = cfg.max_failures - state.failures
        plural = "" if left == 1 else "s"
        return GateResult(
            action="challenge",
            reply=f"❌ Wrong passphrase. {left} attempt{plural} left.",
            delete=True,
        )

    async def m_set_passphrase(self, call: Call, params: GatePassphraseParams) -> OkResult:
        passphrase = params.passphrase.strip()
        if len(passphrase) < MIN_PASSPHRASE:
            raise InvalidParams(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
        if passphrase.startswith("/"):
            raise InvalidParams(
                "the passphrase must not start with / (chats read that as a command)"
            )
        if self._secrets is None:
            raise AccessDenied("this daemon has no vault to keep the passphrase in")
        redactor.add(passphrase)
        hashed = await anyio.to_thread.run_sync(
            lambda: hash_passphrase(passphrase, rounds=self._rounds)
        )
        store = self._secrets
        await anyio.to_thread.run_sync(store.set, PASSPHRASE_SECRET, Secret(hashed))
        # A new passphrase is asked of everyone again.
        await self.db.execute("UPDATE gate_senders SET verified_at = NULL, challenged_at = NULL")
        await self._record("*", call.session.id, "", "passphrase-set", action="ok")
        return OkResult()

    async def m_unlock(self, call: Call, params: GateSenderParams) -> OkResult:
        self.settings(params.platform)
        async with self._lock:
            await self.db.execute(
                "UPDATE gate_senders SET locked_until = NULL, failures = 0, verified_at = NULL, "
                "challenged_at = NULL WHERE platform = ? AND sender = ?",
                (params.platform, params.sender),
            )
        await self._record(
            params.platform, params.sender, "", "unlock", action="ok", detail=call.session.id
        )
        return OkResult()

    # --- settings ----------------------------------------------------------------------------

    async def m_info(self, call: Call, params: GatePlatformParams) -> GateInfoResult:
        return await self.info(params.platform)

    async def info(self, platform: str) -> GateInfoResult:
        cfg = self.settings(platform)
        try:
            passphrase_set = await self._passphrase_hash() is not None
        except VaultLocked:
            passphrase_set = False
        return GateInfoResult(
            platform=platform,
            allowed=list(cfg.allow),
            approver_chat=cfg.approver_chat,
            private_only=cfg.private_only,
            challenge=cfg.challenge,
            passphrase_set=passphrase_set,
        )

    async def m_setup(self, call: Call, params: GateSetupParams) -> GateSetupResult:
        self.settings(params.platform)
        for sender in params.allow or ():
            if params.platform == "telegram" and not sender.lstrip("-").isdigit():
                raise InvalidParams(
                    f"{sender!r} is not a numeric Telegram user id (usernames can change hands; "
                    "ask @userinfobot for your id)"
                )
        async with self._config_lock:
            data: dict[str, Any] = self._host.config.model_dump(mode="json")
            section = data["gatekeeper"][params.platform]
            if params.allow is not None:
                section["allow"] = list(dict.fromkeys(params.allow))
            if params.approver_chat is not None:
                section["approver_chat"] = params.approver_chat
            if params.clear_approver_chat:
                section["approver_chat"] = None
            if params.api_base_url is not None:
                plugin = data["plugins"].setdefault(params.platform, {})
                plugin["api_base_url"] = params.api_base_url
            try:
                config = Config.model_validate(data)
            except pydantic.ValidationError as exc:
                errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
                raise ConfigError("; ".join(errors), errors=errors) from exc
            path = self._host.layout.config_file
            await anyio.to_thread.run_sync(save_config, config, path)
            self._host.config = config
        await self._record(params.platform, call.session.id, "", "setup", action="ok")
        return GateSetupResult(config_path=str(path), info=await self.info(params.platform))

    # --- conversations -----------------------------------------------------------------------

    async def conversation_for(self, platform: str, chat: str) -> str:
        """The chat's current conversation (``<platform>:<chat>`` until ``/new``)."""
        current = await self.db.fetchval(
            "SELECT conversation FROM gate_chats WHERE platform = ? AND chat = ?",
            (platform, chat),
        )
        return str(current) if current else f"{platform}:{chat}"

    async def m_conversation(self, call: Call, params: GateChatParams) -> GateConversationResult:
        self.settings(params.platform)
        return GateConversationResult(
            conversation=await self.conversation_for(params.platform, params.chat)
        )

    async def m_new_conversation(
        self, call: Call, params: GateChatParams
    ) -> GateConversationResult:
        self.settings(params.platform)
        conversation = f"{params.platform}:{params.chat}:{uuid.uuid4().hex[:8]}"
        await self.db.execute(
            "INSERT INTO gate_chats (platform, chat, conversation, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (platform, chat) DO UPDATE SET "
            "conversation = excluded.conversation, updated_at = excluded.updated_at",
            (params.platform, params.chat, conversation, self._clock()),
        )
        return GateConversationResult(conversation=conversation)

    # --- inbox -------------------------------------------------------------------------------

    async def m_accept(self, call: Call, params: InboxAcceptParams) -> InboxAcceptResult:
        if params.kind not in ("message", "callback"):
            raise InvalidParams("kind must be message or callback")
        cfg = self.settings(params.platform)
        secret = False
        if params.kind == "message" and params.sender in cfg.allow and cfg.challenge:
            state = await self._sender(params.platform, params.sender)
            now = self._clock()
            secret = (
                state.awaiting(now)
                and not state.locked(now)
                and state.needs_passphrase(now, cfg.idle_challenge_after)
                and _is_attempt(params.text)
            )
        async with (
            self.db.transaction() as conn,
            conn.execute(
                "INSERT OR IGNORE INTO inbox (platform, update_id, kind, chat, sender, chat_type, "
                "message_id, text, date, received_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    params.platform,
                    params.update_id,
                    params.kind,
                    params.chat,
                    params.sender,
                    params.chat_type,
                    params.message_id,
                    None if secret else params.text,
                    params.date,
                    self._clock(),
                    # A button press is kept only to recognise it if it comes again.
                    "done" if params.kind == "callback" else "new",
                ),
            ) as cursor,
        ):
            new = cursor.rowcount > 0
        if not new:
            log.info("%s update %d was already recorded", params.platform, params.update_id)
        return InboxAcceptResult(status="new" if new else "duplicate", secret=secret)

    async def m_pending(self, call: Call, params: InboxPendingParams) -> InboxPendingResult:
        held = 1 if params.held else 0
        rows = await self.db.fetchall(
            "SELECT * FROM inbox WHERE platform = ? AND kind = 'message' "
            "AND (state = 'held') = ? AND state != 'done' AND (? IS NULL OR chat = ?) "
            "ORDER BY update_id",
            (params.platform, held, params.chat, params.chat),
        )
        return InboxPendingResult(
            items=[
                InboxItem(
                    update_id=row["update_id"],
                    chat=row["chat"],
                    sender=row["sender"],
                    message_id=row["message_id"],
                    text=row["text"],
                    chat_type=row["chat_type"],
                    date=row["date"],
                    state=row["state"],
                    conversation=row["conversation"],
                    parts=await self._parts(params.platform, row["update_id"]),
                )
                for row in rows
            ]
        )

    async def _parts(self, platform: str, update_id: int) -> list[int]:
        rows = await self.db.fetchall(
            "SELECT message_id FROM inbox_replies WHERE platform = ? AND update_id = ? "
            "ORDER BY part",
            (platform, update_id),
        )
        return [row["message_id"] for row in rows]

    async def _item(self, platform: str, update_id: int) -> Row:
        row = await self.db.fetchone(
            "SELECT * FROM inbox WHERE platform = ? AND update_id = ?", (platform, update_id)
        )
        if row is None:
            raise NotFound(f"no {platform} update {update_id} in the inbox", update_id=update_id)
        return row

    async def m_hold(self, call: Call, params: InboxItemParams) -> OkResult:
        await self._item(params.platform, params.update_id)
        await self.db.execute(
            "UPDATE inbox SET state = 'held' WHERE platform = ? AND update_id = ? "
            "AND state = 'new'",
            (params.platform, params.update_id),
        )
        return OkResult()

    async def m_ask(self, call: Call, params: InboxItemParams) -> InboxAskResult:
        row = await self._item(params.platform, params.update_id)
        parts = await self._parts(params.platform, params.update_id)
        if row["state"] == "answered" and row["answer"] is not None:
            return InboxAskResult(
                conversation=row["conversation"], text=row["answer"], replayed=True, parts=parts
            )
        if row["action"] != "allow" or not row["conversation"]:
            raise AccessDenied("the gatekeeper has not allowed this message (gate.check first)")
        if row["state"] == "done" or row["text"] is None:
            raise NotFound(f"{params.platform} update {params.update_id} has nothing to answer")
        engine = self._host.engine
        if engine is None:
            raise ShuttingDown("the daemon is shutting down")
        await self.db.execute(
            "UPDATE inbox SET state = 'answering' WHERE platform = ? AND update_id = ?",
            (params.platform, params.update_id),
        )
        result = await engine.ask(
            AskParams(prompt=row["text"], conversation=row["conversation"]),
            kind=params.platform,
            request=call.request_id,
            origin=call.session.id,
            emit=await self._tainting(call, row["conversation"]),
        )
        await self.db.execute(
            "UPDATE inbox SET state = 'answered', answer = ?, conversation = ? "
            "WHERE platform = ? AND update_id = ?",
            (result.text, result.conversation, params.platform, params.update_id),
        )
        return InboxAskResult(conversation=result.conversation, text=result.text, parts=parts)

    async def _tainting(self, call: Call, conversation: str) -> Emit:
        """The turn's event sink; for a flagged conversation it taints it before a tool runs.

        Taint is kept only for a conversation that exists, and a first message's conversation
        does not exist until its turn begins. The tool executor announces each call
        (``tool_call`` event) before it asks the approval gate, so tainting there is in time
        for the gate of the very turn that brought the flagged text in.
        """
        flags = await self.conversation_flags(conversation)
        taint = self._taint
        if not flags or taint is None:
            return call.emit
        done = False

        async def emit(event: Event) -> None:
            nonlocal done
            if not done and isinstance(event, ToolCallEvent):
                done = True
                await taint(conversation, f"an incoming message was flagged: {', '.join(flags)}")
            await call.emit(event)

        return emit

    async def m_sent(self, call: Call, params: InboxSentParams) -> OkResult:
        await self._item(params.platform, params.update_id)
        await self.db.execute(
            "INSERT INTO inbox_replies (platform, update_id, part, message_id) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (platform, update_id, part) "
            "DO UPDATE SET message_id = excluded.message_id",
            (params.platform, params.update_id, params.part, params.message_id),
        )
        return OkResult()

    async def m_done(self, call: Call, params: InboxItemParams) -> OkResult:
        async with self.db.transaction() as conn:
            # The text and answer live on in the conversation (if any); the row stays only to
            # recognise a redelivered update.
            await conn.execute(
                "UPDATE inbox SET state = 'done', text = NULL, answer = NULL "
                "WHERE platform = ? AND update_id = ?",
                (params.platform, params.update_id),
            )
            await conn.execute(
                "DELETE FROM inbox_replies WHERE platform = ? AND update_id = ?",
                (params.platform, params.update_id),
            )
        return OkResult()

    # --- approval buttons --------------------------------------------------------------------

    async def m_prompt(self, call: Call, params: GatePromptParams) -> GatePromptResult:
        self.settings(params.platform)
        key = (params.platform, params.request_id, params.chat)
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT message_id, state FROM gate_prompts "
                "WHERE platform = ? AND request_id = ? AND chat = ?",
                key,
            ) as cursor:
                existing = await cursor.fetchone()
            if existing is None:
                options = list(dict.fromkeys(params.options or PERMISSION_DECISIONS))
                await conn.execute(
                    "INSERT INTO gate_prompts (platform, request_id, chat, sender, expires_at, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, params.sender, params.expires_at, self._clock()),
                )
                for option in options:
                    # 24 random bytes: unguessable, and 32 characters fit Telegram's 64.
                    await conn.execute(
                        "INSERT INTO gate_buttons (token, platform, request_id, chat, option) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (secrets.token_urlsafe(24), *key, option),
                    )
            async with conn.execute(
                "SELECT token, option FROM gate_buttons "
                "WHERE platform = ? AND request_id = ? AND chat = ? ORDER BY rowid",
                key,
            ) as cursor:
                buttons = {row["option"]: row["token"] for row in await cursor.fetchall()}
        if existing is None:
            return GatePromptResult(buttons=buttons)
        return GatePromptResult(
            buttons=buttons, message_id=existing["message_id"], state=existing["state"]
        )

    async def m_prompt_sent(self, call: Call, params: GatePromptSentParams) -> OkResult:
        await self.db.execute(
            "UPDATE gate_prompts SET message_id = ? "
            "WHERE platform = ? AND request_id = ? AND chat = ?",
            (params.message_id, params.platform, params.request_id, params.chat),
        )
        return OkResult()

    async def m_press(self, call: Call, params: GatePressParams) -> GatePressResult:
        cfg = self.settings(params.platform)
        async with self._lock:
            try:
                result = await self._press(params, cfg)
            except ApprovalRefused as exc:
                await self._record(
                    params.platform,
                    params.sender,
                    params.chat,
                    "press",
                    action="refuse",
                    detail=str(exc.data.get("reason", exc.message)),
                )
                raise
        await self._record(
            params.platform,
            params.sender,
            params.chat,
            "press",
            action="allow",
            detail=f"{result.decision} on {result.request_id}",
        )
        return result

    async def _press(self, p: GatePressParams, cfg: GatePlatformConfig) -> GatePressResult:
        now = self._clock()
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT b.option, b.request_id, b.chat, g.sender, g.state, g.expires_at "
                "FROM gate_buttons AS b JOIN gate_prompts AS g USING (platform, request_id, chat) "
                "WHERE b.token = ? AND b.platform = ?",
                (p.token, p.platform),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise _refused("unknown button", "This button is not known (or too old).")
            request_id = row["request_id"]
            if row["chat"] != p.chat:
                raise _refused("wrong chat", "This button belongs to another chat.", request_id)
            if row["sender"] is not None and row["sender"] != p.sender:
                raise _refused("wrong sender", "This request was not sent to you.", request_id)
            if p.sender not in cfg.allow:
                raise _refused("not allowed", "You may not answer requests.", request_id)
            state = await self._sender(p.platform, p.sender)
            if state.locked(now):
                raise _refused("locked", "You are locked out.", request_id)
            if row["state"] == "orphaned":
                raise _refused(
                    "withdrawn", "Pyra restarted since: this request is gone.", request_id
                )
            if row["expires_at"] and now >= row["expires_at"]:
                raise _refused("expired", "This request has expired.", request_id)
            if row["state"] != "open":
                raise _refused("already answered", "This request was already answered.", request_id)
            await conn.execute(
                "UPDATE gate_prompts SET state = 'pressed', decision = ?, pressed_by = ? "
                "WHERE platform = ? AND request_id = ? AND chat = ? AND state = 'open'",
                (row["option"], p.sender, p.platform, request_id, p.chat),
            )
        return GatePressResult(request_id=request_id, decision=row["option"])

    async def m_prompts(self, call: Call, params: GatePromptsParams) -> GatePromptsResult:
        query = "SELECT * FROM gate_prompts WHERE platform = ?"
        args: list[Any] = [params.platform]
        if params.request_id is not None:
            query += " AND request_id = ?"
            args.append(params.request_id)
        if params.state is not None:
            query += " AND state = ?"
            args.append(params.state)
        rows = await self.db.fetchall(query + " ORDER BY created_at", args)
        return GatePromptsResult(
            prompts=[
                GatePromptView(
                    request_id=row["request_id"],
                    chat=row["chat"],
                    message_id=row["message_id"],
                    state=row["state"],
                    decision=row["decision"],
                    pressed_by=row["pressed_by"],
                )
                for row in rows
            ]
        )

    async def m_prompt_closed(self, call: Call, params: GatePromptClosedParams) -> OkResult:
        await self.db.execute(
            "UPDATE gate_prompts SET state = 'closed' "
            "WHERE platform = ? AND request_id = ? AND chat = ?",
            (params.platform, params.request_id, params.chat),
        )
        return OkResult()


def _is_attempt(text: str) -> bool:
    """Whether a message from a challenged sender is a passphrase attempt (not a command, a
    photo or a sticker, which arrive with no text)."""
    return bool(text.strip()) and not text.startswith("/")


def _locked_reply(state: _Sender, now: float) -> str:
    until = state.locked_until or now
    if until >= _FOREVER:
        return (
            "⛔ Locked after too many wrong passphrases, until the owner lifts it on the machine "
            "(`pyra setup telegram --unlock ID`)."
        )
    return f"⛔ Locked after too many wrong passphrases. Try again in {_duration(until - now)}."


def _refused(reason: str, message: str, request_id: str | None = None) -> ApprovalRefused:
    data: dict[str, str] = {"reason": reason}
    if request_id is not None:
        data["request_id"] = request_id
    return ApprovalRefused(message, **data)
