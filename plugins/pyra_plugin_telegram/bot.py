"""The Telegram bot: python-telegram-bot 22 long polling, as an IPC frontend of the daemon.

The bot keeps no state of its own that matters. The daemon's gatekeeper decides who may talk
(``gate.*``), its inbox holds every update until it is answered (``inbox.*``), and its broker
decides approvals (``interactions.*``). This module is the adapter between those methods and
Telegram, the one place that imports ``telegram`` and translates its errors.

How an update flows, and why nothing is lost or answered twice:

1. The updater long-polls ``getUpdates`` and puts each update in the application's queue.
   That queue is a :class:`_DurableQueue`: ``put`` first records the update with
   ``inbox.accept`` and only returns once the daemon has it on disk. PTB confirms updates to
   Telegram (the ``offset`` of the next ``getUpdates``, or of its stop-time call) only after
   every ``put`` of a batch returned, so an update is durable before Telegram forgets it. An
   update the inbox already has (a redelivery) is dropped there.
2. A handler hands the update to this module's own task group; a per-chat lock keeps each
   chat's messages in order while chats and button presses run side by side. Long work
   never runs inside PTB's tasks, so stopping is prompt.
3. A message goes through ``gate.check`` (allow, challenge, refuse, ...). An allowed one is
   answered with ``inbox.ask``, which runs the turn once and replays the stored answer on a
   retry; the answer streams into a message edited at most once per ``edit_interval``, split
   at 4096 characters, and each part's message id is recorded with ``inbox.sent``, so a retry
   edits those messages instead of sending new ones. ``inbox.done`` ends the item.
4. On start (and every minute) unfinished inbox items are resumed; messages older than
   ``stale_after`` get one short note per chat instead of a late answer.

Approvals: the bot subscribes as an approver. Each ``interaction.request`` for a Telegram
conversation goes to its chat, any other to the approver chat, as a message with the tool,
its full arguments (a file when long) and Allow once / Always / Deny buttons whose callback
data are tokens from ``gate.prompt``. A press is checked by ``gate.press`` (chat, sender, once,
expiry) and then answered with ``interactions.answer``; ``interaction.resolved`` edits the
message to show the outcome and removes the buttons, whoever decided.

Never deaf: Bot API calls are retried on timeouts, network errors, 5xx and 429 (waiting
``retry_after``) with back-off; PTB's polling loop does the same for ``getUpdates``; a
watchdog rebuilds polling that made no progress for ``watchdog_after`` seconds; losing the
daemon ends :meth:`TelegramBot.run` and :func:`run_telegram` reconnects.

What this module deliberately does not do: import the daemon (an import-linter contract
forbids it), keep secrets beyond the token it was handed, or use ``run_polling`` (which owns
the event loop and the signals).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dtm
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler
from telegram.request import HTTPXRequest

from pyra_client.connection import AsyncConnection
from pyra_client.errors import (
    ApprovalRefused,
    DaemonUnreachable,
    MethodNotFound,
    NotConfigured,
    NotFound,
    PyraError,
    ShuttingDown,
)
from pyra_client.paths import Layout
from pyra_client.protocol import (
    PERMISSION_DECISIONS,
    CommandRunParams,
    CommandRunResult,
    Empty,
    Event,
    GateChatParams,
    GateCheckParams,
    GateConversationResult,
    GateInfoResult,
    GatePlatformParams,
    GatePressParams,
    GatePressResult,
    GatePromptClosedParams,
    GatePromptParams,
    GatePromptResult,
    GatePromptSentParams,
    GatePromptsParams,
    GatePromptsResult,
    GateResult,
    InboxAcceptParams,
    InboxAcceptResult,
    InboxAskResult,
    InboxItem,
    InboxItemParams,
    InboxPendingParams,
    InboxPendingResult,
    InboxSentParams,
    Interaction,
    InteractionAnswerParams,
    InteractionAnswerResult,
    InteractionResolved,
    InteractionSubscribeParams,
    InteractionSubscribeResult,
    OkResult,
    StatusResult,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    UnknownEvent,
)
from pyra_plugin_telegram.render import (
    outcome_line,
    render_request,
    split_text,
    to_markdown_v2,
    utf16_len,
)

__all__ = ["DEFAULT_API_BASE_URL", "BotSettings", "TelegramBot", "run_telegram"]

log = logging.getLogger(__name__)

# Opt in to PTB's future time API (read when an attribute is read, not at import):
# ``RetryAfter.retry_after`` is a timedelta, without a deprecation warning.
os.environ.setdefault("PTB_TIMEDELTA", "true")

T = TypeVar("T")
PLATFORM = "telegram"
DEFAULT_API_BASE_URL = "https://api.telegram.org/bot"
#: Seconds a daemon call (other than a turn) may take.
_RPC_TIMEOUT = 30.0
#: One stale-message note per chat within this many seconds.
_STALE_NOTE_WINDOW = 60.0
_COMMANDS = (
    ("new", "Start a fresh conversation"),
    ("status", "What Pyra runs and which conversation this is"),
    ("help", "What this bot does"),
)
HELP = (
    "I am Pyra, your assistant on your own machine. Write to me and I answer here.\n\n"
    "/new starts a fresh conversation\n"
    "/status shows the model and this chat's conversation\n"
    "/help shows this\n\n"
    "When Pyra wants to run a tool that needs your approval, you get a message with the tool "
    "and its arguments and the buttons Allow once, Always and Deny."
)
_PRESSED = {"allow": "Allowed once", "always": "Allowed always", "deny": "Denied"}
#: Refusals of a press after which the buttons can never work (see ``gate.press``).
_FINAL_REFUSALS = frozenset({"unknown button", "withdrawn", "expired", "already answered"})


class BotSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[plugins.telegram]``: how the bot talks to Telegram (who may talk is the gatekeeper's).

    All times are seconds. ``watchdog_after`` 0 means ``poll_timeout + 45``.
    """

    #: The Bot API server without the token, e.g. ``http://127.0.0.1:8081/bot`` when
    #: self-hosted (``/bot`` is added when missing).
    api_base_url: str = DEFAULT_API_BASE_URL
    #: Long-poll duration of one ``getUpdates``.
    poll_timeout: float = 30.0
    #: Least time between two edits of a streamed answer (Telegram allows about one a second).
    edit_interval: float = 1.0
    #: A message this old when it is handled (after an outage) gets a note, not an answer.
    stale_after: float = 900.0
    watchdog_after: float = 0.0
    #: Read timeout of ordinary Bot API calls.
    request_timeout: float = 20.0
    #: Attempts of a Bot API call before giving up on it (timeouts, 5xx, 429, network).
    retry_attempts: int = 6
    #: First back-off delay; it doubles up to ``retry_max``.
    retry_base: float = 1.0
    retry_max: float = 30.0
    #: How often the typing indicator is renewed while a turn runs.
    typing_interval: float = 4.0
    #: How often unfinished inbox items are looked for (after a failed send, say).
    resume_interval: float = 60.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BotSettings:
        try:
            return msgspec.convert(dict(values), cls, strict=False)
        except msgspec.ValidationError as exc:
            raise NotConfigured(f"invalid [plugins.telegram] settings: {exc}") from exc

    @property
    def base_url(self) -> str:
        url = self.api_base_url.rstrip("/")
        return url if url.endswith("/bot") else f"{url}/bot"

    @property
    def base_file_url(self) -> str:
        return self.base_url.removesuffix("/bot") + "/file/bot"

    @property
    def watchdog_seconds(self) -> float:
        return self.watchdog_after or self.poll_timeout + 45.0


def _seconds(value: object) -> float:
    if isinstance(value, dtm.timedelta):
        return value.total_seconds()
    return float(value) if isinstance(value, int | float) else 1.0


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in exc.message.lower()


def _cannot_parse(exc: BadRequest) -> bool:
    return "can't parse" in exc.message.lower() or "can not parse" in exc.message.lower()


def _chat_of(conversation: str | None) -> int | None:
    """The chat of a Telegram conversation id (``telegram:<chat>[:<suffix>]``)."""
    if not conversation or not conversation.startswith(f"{PLATFORM}:"):
        return None
    head = conversation.split(":")[1]
    return int(head) if head.lstrip("-").isdigit() else None


@dataclass
class _Item:
    """A message to handle: live from Telegram or resumed from the inbox."""

    update_id: int
    chat: int
    sender: int
    chat_type: str
    message_id: int | None
    text: str | None
    date: float
    parts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, item: InboxItem) -> _Item:
        return cls(
            update_id=item.update_id,
            chat=int(item.chat),
            sender=int(item.sender),
            chat_type=item.chat_type,
            message_id=item.message_id,
            text=item.text,
            date=item.date,
            parts=list(item.parts),
        )


class _ProgressRequest(HTTPXRequest):
    """The ``getUpdates`` transport; every answered poll counts as progress for the watchdog."""

    def __init__(self, on_progress: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_progress = on_progress

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        result = await super().do_request(*args, **kwargs)
        self._on_progress()
        return result


class _DurableQueue(asyncio.Queue[object]):
    """The application's update queue: an update is put only once the daemon recorded it."""

    def __init__(self, bot: TelegramBot) -> None:
        super().__init__()
        self._bot = bot

    async def put(self, item: object) -> None:
        if isinstance(item, Update) and not await self._bot.accept(item):
            return
        await super().put(item)


class TelegramBot:
    """One connection's worth of bot; :meth:`run` until cancelled or the daemon goes away.

    ``conn`` is an open :class:`~pyra_client.connection.AsyncConnection` (client
    ``telegram``); ``clock`` (epoch seconds) is a seam for tests of stale messages.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        token: str,
        settings: BotSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._token = token
        self._settings = settings
        self._clock = clock
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._updates_in, self._updates_out = anyio.create_memory_object_stream[Update](1000)
        self._chat_locks: dict[int, tuple[anyio.Lock, int]] = {}
        self._in_flight: set[int] = set()
        # Updates finished by this bot: a resume listed before they were done skips them.
        self._finished: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._last_progress = time.monotonic()
        self._polling = False
        self._restart_lock = anyio.Lock()
        self._stale_noted: dict[int, float] = {}
        self._approver: str | None = None
        # Approval messages: rendered text per request (to show the outcome below it), the
        # name of the person whose press decided, and one lock per request.
        self._request_text: dict[str, str] = {}
        self._pressed_by: dict[str, str] = {}
        self._request_locks: dict[str, anyio.Lock] = {}
        self.username = ""

    # --- life cycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Poll Telegram and serve until cancelled; raises when the daemon connection ends."""
        info = await self._rpc("gate.info", GatePlatformParams(platform=PLATFORM), GateInfoResult)
        if not info.allowed:
            log.warning(
                "nobody may talk to the Telegram bot yet: `pyra setup telegram --allow USER_ID`"
            )
        try:
            # Without an approver chat the bot can show only its own chats' requests; saying so
            # keeps the daemon's fast "no approver connected" deny for everyone else's.
            subscribed = await self._rpc(
                "interactions.subscribe",
                InteractionSubscribeParams(
                    scope="all" if self._approver_chat(info) is not None else "own"
                ),
                InteractionSubscribeResult,
            )
            self._approver = subscribed.approver
        except MethodNotFound:
            log.warning("this daemon has no interactions.subscribe: approvals stay off")
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._notifications)
                tasks.start_soon(self._dispatch)
                await self._start_polling()
                tasks.start_soon(self._watchdog)
                await self._close_orphaned_prompts()
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await self._stop_polling()

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        s = self._settings
        app = (
            ApplicationBuilder()
            .token(self._token)
            .base_url(s.base_url)
            .base_file_url(s.base_file_url)
            .request(
                HTTPXRequest(
                    connection_pool_size=16,
                    connect_timeout=10.0,
                    read_timeout=s.request_timeout,
                    write_timeout=s.request_timeout,
                    pool_timeout=10.0,
                )
            )
            .get_updates_request(
                _ProgressRequest(
                    self._progress,
                    connect_timeout=10.0,
                    read_timeout=10.0,
                    write_timeout=10.0,
                    pool_timeout=10.0,
                )
            )
            .update_queue(_DurableQueue(self))
            .job_queue(None)
            .build()
        )
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_error)
        return app

    async def _start_polling(self) -> None:
        """Build the application, resume unfinished items, then poll; retry network trouble.

        Unfinished items are started before polling, so each chat's older messages take its
        lock before anything new arrives: the order of a chat is kept across restarts.
        """
        attempt = 0
        while True:
            app = self._build()
            try:
                await app.initialize()
                await app.start()
                self._app = app
                self.username = app.bot.username or ""
                await self._resume()
                assert app.updater is not None
                await app.updater.start_polling(
                    poll_interval=0.0,
                    timeout=dtm.timedelta(seconds=self._settings.poll_timeout),
                    allowed_updates=["message", "callback_query"],
                    drop_pending_updates=False,
                )
            except InvalidToken as exc:
                self._app = None
                with anyio.CancelScope(shield=True):
                    await self._shutdown(app)
                raise NotConfigured(
                    "Telegram refused the bot token; store the right one with "
                    "`pyra vault set plugin:telegram:token`"
                ) from exc
            except (NetworkError, RetryAfter) as exc:
                self._app = None
                with anyio.CancelScope(shield=True):
                    await self._shutdown(app)
                attempt += 1
                wait = self._backoff(attempt, exc)
                log.warning("cannot reach Telegram (%s); retrying in %.1f s", exc, wait)
                await anyio.sleep(wait)
                continue
            break
        self._last_progress = time.monotonic()
        self._polling = True
        log.info("telegram bot @%s polling %s", self.username, self._settings.base_url)
        with contextlib.suppress(TelegramError):
            await app.bot.set_my_commands(list(_COMMANDS))

    async def _stop_polling(self) -> None:
        app, self._app = self._app, None
        self._polling = False
        if app is not None:
            await self._shutdown(app)

    async def _shutdown(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Stop *app* in the order PTB wants; a polling task that died is only logged."""
        if app.updater is not None and app.updater.running:
            try:
                # Confirms (offset) exactly the updates the durable queue recorded.
                await app.updater.stop()
            except Exception:
                log.exception("the polling task had failed")
        if app.running:
            await app.stop()
        with contextlib.suppress(Exception):
            await app.shutdown()

    async def _restart_polling(self, why: str) -> None:
        async with self._restart_lock:
            log.warning("restarting Telegram polling: %s", why)
            await self._stop_polling()
            await self._start_polling()

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    async def _watchdog(self) -> None:
        """Rebuild polling that stopped making progress; resume unfinished items now and then."""
        check = min(5.0, self._settings.watchdog_seconds / 4)
        last_resume = time.monotonic()
        while True:
            await anyio.sleep(check)
            idle = time.monotonic() - self._last_progress
            if self._polling and idle > self._settings.watchdog_seconds:
                await self._restart_polling(f"no progress for {idle:.0f} s")
                last_resume = time.monotonic()
            elif time.monotonic() - last_resume > self._settings.resume_interval:
                await self._resume()
                last_resume = time.monotonic()

    # --- daemon calls ----------------------------------------------------------------------

    async def _rpc(self, method: str, params: object, result: type[T]) -> T:
        with anyio.fail_after(_RPC_TIMEOUT):
            return await self._conn.request(method, params, result)

    async def accept(self, update: Update) -> bool:
        """Record *update* in the daemon's inbox (called before Telegram is told we have it).

        Returns False for an update the inbox already had. Raises when the daemon cannot be
        reached, which stops the polling task before it confirms anything.
        """
        params = _accept_params(update)
        if params is None:
            return True  # nothing we handle; PTB may confirm it
        result = await self._rpc("inbox.accept", params, InboxAcceptResult)
        self._progress()
        return result.status == "new"

    # --- Bot API calls with retries ---------------------------------------------------------

    def _backoff(self, attempt: int, exc: Exception) -> float:
        if isinstance(exc, RetryAfter):
            # Telegram says how long; a little slack avoids a second 429.
            return _seconds(exc.retry_after) + 0.1
        s = self._settings
        delay: float = min(s.retry_max, s.retry_base * 2 ** (attempt - 1))
        # Jitter spreads the retries of many calls; not a secret, so plain random is fine.
        return delay * (0.5 + random.random() / 2)  # noqa: S311

    async def _api(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Bot API call, retrying timeouts, network errors, 5xx and 429 with back-off.

        Refusals (400, 403) are raised at once: retrying cannot change them.
        """
        attempt = 0
        while True:
            try:
                return await call()
            except (BadRequest, Forbidden, InvalidToken):
                raise
            except (NetworkError, RetryAfter) as exc:
                attempt += 1
                if attempt >= self._settings.retry_attempts:
                    raise
                wait = self._backoff(attempt, exc)
                log.info("%s failed (%s); retry %d in %.1f s", what, exc, attempt, wait)
                await anyio.sleep(wait)

    @property
    def app(self) -> Application[Any, Any, Any, Any, Any, Any]:
        if self._app is None:
            # A NetworkError: calls wait (with back-off) while polling is being rebuilt.
            raise NetworkError("the Telegram application is restarting")
        return self._app

    async def _send(
        self,
        chat: int,
        text: str,
        *,
        markdown: bool = False,
        reply_to: int | None = None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        """Send *text*; as MarkdownV2 when asked, falling back to plain text if refused."""
        if markdown:
            formatted = to_markdown_v2(text)
            if utf16_len(formatted) <= 4096:
                try:
                    return await self._api(
                        "sendMessage",
                        lambda: self.app.bot.send_message(
                            chat,
                            formatted,
                            parse_mode=ParseMode.MARKDOWN_V2,
                            reply_parameters=_reply(reply_to),
                            reply_markup=markup,
                        ),
                    )
                except BadRequest as exc:
                    if not _cannot_parse(exc):
                        raise
                    log.info("Telegram refused the formatting (%s); sending plain text", exc)
        return await self._api(
            "sendMessage",
            lambda: self.app.bot.send_message(
                chat, text, reply_parameters=_reply(reply_to), reply_markup=markup
            ),
        )

    async def _edit(
        self,
        chat: int,
        message_id: int,
        text: str,
        *,
        markdown: bool = False,
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """Edit a message; "not modified" is success (a retry of an edit that went through)."""
        try:
            if markdown:
                formatted = to_markdown_v2(text)
                if utf16_len(formatted) <= 4096:
                    try:
                        await self._api(
                            "editMessageText",
                            lambda: self.app.bot.edit_message_text(
                                formatted,
                                chat,
                                message_id,
                                parse_mode=ParseMode.MARKDOWN_V2,
                                reply_markup=markup,
                            ),
                        )
                        return
                    except BadRequest as exc:
                        if not _cannot_parse(exc):
                            raise
                        log.info("Telegram refused the formatting (%s); editing as plain", exc)
            await self._api(
                "editMessageText",
                lambda: self.app.bot.edit_message_text(text, chat, message_id, reply_markup=markup),
            )
        except BadRequest as exc:
            if not _not_modified(exc):
                raise

    async def _delete(self, chat: int, message_id: int | None) -> None:
        if message_id is None:
            return
        try:
            await self._api("deleteMessage", lambda: self.app.bot.delete_message(chat, message_id))
        except TelegramError as exc:
            # Too old (48 h) or already gone: nothing more can be done about it.
            log.warning("could not delete message %s in chat %s: %s", message_id, chat, exc)

    # --- updates -----------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Inside PTB's task: hand over and return, so stopping never waits for a turn.
        await self._updates_in.send(update)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram update handling failed: %r", context.error)

    async def _dispatch(self) -> None:
        async for update in self._updates_out:
            tasks = self._tasks
            if tasks is None:
                return
            if update.callback_query is not None:
                tasks.start_soon(self._on_press, update)
            elif update.message is not None:
                tasks.start_soon(self._handle, _item_of(update))

    @contextlib.asynccontextmanager
    async def _chat_lock(self, chat: int) -> AsyncIterator[None]:
        lock, users = self._chat_locks.get(chat, (anyio.Lock(), 0))
        self._chat_locks[chat] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._chat_locks[chat]
            if users <= 1:
                del self._chat_locks[chat]
            else:
                self._chat_locks[chat] = (lock, users - 1)

    async def _resume(self, chat: int | None = None, *, held: bool = False) -> None:
        """Handle inbox items not done yet (after a restart, a failure, or a passphrase)."""
        pending = await self._rpc(
            "inbox.pending",
            InboxPendingParams(
                platform=PLATFORM, chat=None if chat is None else str(chat), held=held
            ),
            InboxPendingResult,
        )
        tasks = self._tasks
        if tasks is None:
            return
        for item in pending.items:
            if item.update_id not in self._in_flight:
                log.info("resuming %s update %d (%s)", PLATFORM, item.update_id, item.state)
                tasks.start_soon(self._handle, _Item.of(item))

    async def _handle(self, item: _Item) -> None:
        if item.update_id in self._in_flight or item.update_id in self._finished:
            return
        self._in_flight.add(item.update_id)
        try:
            async with self._chat_lock(item.chat):
                await self._process(item)
        except (DaemonUnreachable, ShuttingDown):
            raise
        except (BadRequest, Forbidden) as exc:
            # Telegram refuses to deliver to this chat (blocked, deleted): give the item up.
            log.warning("giving up on update %d in chat %d: %s", item.update_id, item.chat, exc)
            await self._done(item)
        except (TelegramError, PyraError, TimeoutError):
            # Left in the inbox: the next resume tries again.
            log.exception("update %d failed; it will be retried", item.update_id)
        finally:
            self._in_flight.discard(item.update_id)

    async def _done(self, item: _Item) -> None:
        await self._rpc(
            "inbox.done", InboxItemParams(platform=PLATFORM, update_id=item.update_id), OkResult
        )
        self._finished[item.update_id] = None
        while len(self._finished) > 1000:
            self._finished.popitem(last=False)

    async def _reply_once(self, item: _Item, text: str, *, record: bool = True) -> None:
        """A short reply to *item*, sent once even when the item is handled again.

        Without *record* the reply is not kept as the item's reply (a challenge to a held
        message, whose real answer comes later).
        """
        if not text or item.parts:
            return
        message = await self._send(item.chat, text, reply_to=item.message_id)
        if not record:
            return
        item.parts.append(message.message_id)
        await self._rpc(
            "inbox.sent",
            InboxSentParams(
                platform=PLATFORM,
                update_id=item.update_id,
                part=0,
                message_id=message.message_id,
            ),
            OkResult,
        )

    async def _process(self, item: _Item) -> None:
        if item.text is None:
            # A passphrase attempt from before a restart: its text was never stored.
            await self._done(item)
            return
        gate = await self._rpc(
            "gate.check",
            GateCheckParams(
                platform=PLATFORM,
                sender=str(item.sender),
                chat=str(item.chat),
                text=item.text,
                chat_type=item.chat_type,
                update_id=item.update_id,
            ),
            GateResult,
        )
        if gate.delete:
            await self._delete(item.chat, item.message_id)
        if gate.action != "allow":
            held = gate.action == "challenge" and not gate.delete
            await self._reply_once(item, gate.reply, record=not held)
            if held:
                # The message that triggered the challenge waits for the passphrase.
                await self._rpc(
                    "inbox.hold",
                    InboxItemParams(platform=PLATFORM, update_id=item.update_id),
                    OkResult,
                )
                return
            await self._done(item)
            if gate.resume:
                await self._resume(item.chat, held=True)
            return
        conversation = gate.conversation or f"{PLATFORM}:{item.chat}"
        if self._clock() - item.date > self._settings.stale_after:
            await self._stale(item)
        elif not item.text.strip():
            await self._reply_once(item, "I can read text messages only, for now.")
        elif item.text.startswith("/"):
            await self._command(item, conversation)
        else:
            await self._answer(item)
        await self._done(item)

    async def _stale(self, item: _Item) -> None:
        now = self._clock()
        noted = self._stale_noted.get(item.chat, 0.0)
        self._stale_noted = {c: t for c, t in self._stale_noted.items() if now - t < 3600}
        if now - noted < _STALE_NOTE_WINDOW:
            return
        self._stale_noted[item.chat] = now
        when = dtm.datetime.fromtimestamp(item.date).strftime("%Y-%m-%d %H:%M")  # noqa: DTZ006
        await self._reply_once(
            item,
            f"⏰ I was offline when you wrote this ({when}) and did not answer it then. "
            "Send it again if it still matters.",
        )

    # --- commands ----------------------------------------------------------------------------

    async def _command(self, item: _Item, conversation: str) -> None:
        assert item.text is not None
        head, _, args = item.text.partition(" ")
        name, _, target = head[1:].partition("@")
        if target and self.username and target.lower() != self.username.lower():
            return  # a command for another bot in a group
        name = name.lower()
        if name in ("help", "start"):
            await self._reply_once(item, HELP)
        elif name == "new":
            fresh = await self._rpc(
                "gate.new_conversation",
                GateChatParams(platform=PLATFORM, chat=str(item.chat)),
                GateConversationResult,
            )
            await self._reply_once(item, f"🆕 New conversation ({fresh.conversation}).")
        elif name == "status":
            await self._reply_once(item, await self._status(conversation))
        else:
            await self._reply_once(item, await self._plugin_command(name, args, conversation))

    async def _status(self, conversation: str) -> str:
        status = await self._rpc("status", Empty(), StatusResult)
        model = f"{status.provider or '?'} / {status.model or '?'}"
        hours = status.uptime / 3600
        return (
            f"Pyra {status.version}, model {model}\n"
            f"This chat's conversation: {conversation}\n"
            f"Daemon up {hours:.1f} h, {status.active_turns} turn(s) running"
        )

    async def _plugin_command(self, name: str, args: str, conversation: str) -> str:
        try:
            result = await self._rpc(
                "commands.run",
                CommandRunParams(name=name, args=args.strip(), conversation=conversation),
                CommandRunResult,
            )
        except (MethodNotFound, NotFound):
            return f"Unknown command /{name}. /help lists what I understand."
        return result.text or "(done)"

    # --- answers -----------------------------------------------------------------------------

    async def _answer(self, item: _Item) -> None:
        stream = _AnswerStream(self, item)
        failure: PyraError | None = None
        # Helpers never raise, and the turn's own failure is kept outside the task group, so
        # it is not wrapped in an exception group.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._typing, item.chat)
            tasks.start_soon(stream.run)
            try:
                result = await self._conn.request(
                    "inbox.ask",
                    InboxItemParams(platform=PLATFORM, update_id=item.update_id),
                    InboxAskResult,
                    on_event=stream.on_event,
                )
            except PyraError as exc:
                failure = exc
            tasks.cancel_scope.cancel()
        if isinstance(failure, DaemonUnreachable | ShuttingDown):
            raise failure
        if failure is not None:
            await stream.finish(f"⚠️ {failure.message}", markdown=False)
        else:
            await stream.finish(result.text or "(no answer)", markdown=True)

    async def _typing(self, chat: int) -> None:
        while True:
            with contextlib.suppress(TelegramError, DaemonUnreachable):
                await self.app.bot.send_chat_action(chat, ChatAction.TYPING)
            await anyio.sleep(self._settings.typing_interval)

    async def _record_part(self, item: _Item, part: int, message_id: int) -> None:
        await self._rpc(
            "inbox.sent",
            InboxSentParams(
                platform=PLATFORM, update_id=item.update_id, part=part, message_id=message_id
            ),
            OkResult,
        )

    # --- approvals ---------------------------------------------------------------------------

    async def _notifications(self) -> None:
        async for method, raw in self._conn.notifications():
            tasks = self._tasks
            if tasks is None:
                break
            if method == "interaction.request":
                tasks.start_soon(self._show_request, msgspec.json.decode(raw, type=Interaction))
            elif method == "interaction.resolved":
                resolved = msgspec.json.decode(raw, type=InteractionResolved)
                tasks.start_soon(self._show_resolved, resolved)
        raise DaemonUnreachable("the daemon closed the connection")

    def _request_lock(self, request_id: str) -> anyio.Lock:
        if len(self._request_locks) > 1000:
            self._request_locks = {k: v for k, v in self._request_locks.items() if v.locked()}
        return self._request_locks.setdefault(request_id, anyio.Lock())

    async def _target(self, request: Interaction) -> int | None:
        chat = _chat_of(request.conversation)
        if chat is not None:
            return chat
        info = await self._rpc("gate.info", GatePlatformParams(platform=PLATFORM), GateInfoResult)
        return self._approver_chat(info)

    @staticmethod
    def _approver_chat(info: GateInfoResult) -> int | None:
        if info.approver_chat and info.approver_chat.lstrip("-").isdigit():
            return int(info.approver_chat)
        return None

    async def _show_request(self, request: Interaction) -> None:
        try:
            async with self._request_lock(request.id):
                await self._send_request(request)
        except (DaemonUnreachable, ShuttingDown):
            raise
        except (TelegramError, PyraError, TimeoutError):
            log.exception("could not show approval request %s", request.id)

    async def _send_request(self, request: Interaction) -> None:
        chat = await self._target(request)
        if chat is None:
            log.info("approval request %s is for no Telegram chat; not shown", request.id)
            return
        if request.kind == "permission":
            options = list(request.options or PERMISSION_DECISIONS)
        else:
            options = list(request.options)
        if not options:
            # A free-text question: buttons cannot answer it, so say where it can be.
            rendered = render_request(request)
            text = f"{rendered.text}\n\nAnswer it where it was asked, or with `pyra approvals`."
            await self._send(chat, text)
            return
        prompt = await self._rpc(
            "gate.prompt",
            GatePromptParams(
                platform=PLATFORM,
                request_id=request.id,
                chat=str(chat),
                # In a one-to-one chat only that person may press; in a group any allowed one.
                sender=str(chat) if chat > 0 else None,
                expires_at=request.expires_at,
                options=options,
            ),
            GatePromptResult,
        )
        rendered = render_request(request)
        self._request_text[request.id] = rendered.text
        if len(self._request_text) > 500:
            self._request_text.pop(next(iter(self._request_text)))
        if prompt.message_id is not None or prompt.state != "open":
            return  # already shown (a reconnect re-delivers pending requests)
        labels = {"allow": "✅ Allow once", "always": "♾ Always", "deny": "❌ Deny"}
        keyboard = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(labels.get(option, option), callback_data=token)
                    for option in options
                    if (token := prompt.buttons.get(option)) is not None
                ]
            ]
        )
        if rendered.document is not None:
            document = rendered.document
            await self._api(
                "sendDocument",
                lambda: self.app.bot.send_document(
                    chat,
                    document,
                    filename=rendered.filename,
                    caption="Full arguments of the approval request below.",
                ),
            )
        message = await self._send(chat, rendered.text, markup=keyboard)
        await self._rpc(
            "gate.prompt_sent",
            GatePromptSentParams(
                platform=PLATFORM,
                request_id=request.id,
                chat=str(chat),
                message_id=message.message_id,
            ),
            OkResult,
        )

    async def _on_press(self, update: Update) -> None:
        query = update.callback_query
        assert query is not None
        try:
            await self._press(update)
        except (DaemonUnreachable, ShuttingDown):
            raise
        except (TelegramError, PyraError, TimeoutError):
            log.exception("button press %s failed", query.id)

    async def _answer_query(self, query_id: str, text: str) -> None:
        try:
            await self._api(
                "answerCallbackQuery",
                lambda: self.app.bot.answer_callback_query(query_id, text=text[:200]),
            )
        except BadRequest as exc:
            log.info("could not answer button press %s: %s", query_id, exc)

    async def _press(self, update: Update) -> None:
        query = update.callback_query
        assert query is not None
        message = query.message
        if message is None or not query.data:
            await self._answer_query(query.id, "This button no longer works.")
            return
        try:
            pressed = await self._rpc(
                "gate.press",
                GatePressParams(
                    platform=PLATFORM,
                    token=query.data,
                    chat=str(message.chat.id),
                    sender=str(query.from_user.id),
                ),
                GatePressResult,
            )
        except ApprovalRefused as exc:
            await self._answer_query(query.id, f"Refused: {exc.message}")
            reason = str(exc.data.get("reason", ""))
            if reason in _FINAL_REFUSALS and isinstance(message, Message) and message.reply_markup:
                # Buttons that can never work again (their request is gone): take them away,
                # e.g. from a message sent just before a crash, before its id was recorded.
                text = message.text or "🔐 Approval request"
                with contextlib.suppress(BadRequest):
                    await self._edit(
                        message.chat.id, message.message_id, f"{text}\n\n⚠️ {exc.message}"
                    )
            return
        name = query.from_user.first_name or str(query.from_user.id)
        self._pressed_by[pressed.request_id] = name
        try:
            answered = await self._rpc(
                "interactions.answer",
                InteractionAnswerParams(id=pressed.request_id, decision=pressed.decision),
                InteractionAnswerResult,
            )
        except ApprovalRefused as exc:
            await self._answer_query(query.id, f"Not applied: {exc.message}")
            reason = str(exc.data.get("reason", exc.message))
            await self._show_resolved(
                InteractionResolved(
                    id=pressed.request_id, decision="deny", by="system", reason=reason
                )
            )
            return
        await self._answer_query(query.id, _PRESSED.get(answered.decision, answered.decision))
        await self._show_resolved(
            InteractionResolved(id=answered.id, decision=answered.decision, by=answered.by)
        )

    async def _show_resolved(self, resolved: InteractionResolved) -> None:
        """Edit every message of the request to show how it ended, without its buttons."""
        try:
            async with self._request_lock(resolved.id):
                prompts = await self._rpc(
                    "gate.prompts",
                    GatePromptsParams(platform=PLATFORM, request_id=resolved.id),
                    GatePromptsResult,
                )
                by = self._pressed_by.get(resolved.id) if resolved.by == self._approver else None
                line = outcome_line(resolved, by=by)
                text = self._request_text.get(resolved.id, "🔐 Approval request")
                for prompt in prompts.prompts:
                    if prompt.state == "closed" or prompt.message_id is None:
                        continue
                    await self._close_prompt(
                        prompt.request_id, prompt.chat, prompt.message_id, f"{text}\n\n{line}"
                    )
        except (DaemonUnreachable, ShuttingDown):
            raise
        except (TelegramError, PyraError, TimeoutError):
            log.exception("could not show the outcome of request %s", resolved.id)

    async def _close_prompt(self, request_id: str, chat: str, message_id: int, text: str) -> None:
        try:
            await self._edit(int(chat), message_id, text)
        except BadRequest as exc:
            log.info("approval message %s in %s not edited: %s", message_id, chat, exc)
        await self._rpc(
            "gate.prompt_closed",
            GatePromptClosedParams(platform=PLATFORM, request_id=request_id, chat=chat),
            OkResult,
        )

    async def _close_orphaned_prompts(self) -> None:
        prompts = await self._rpc(
            "gate.prompts",
            GatePromptsParams(platform=PLATFORM, state="orphaned"),
            GatePromptsResult,
        )
        for prompt in prompts.prompts:
            if prompt.message_id is None:
                continue
            await self._close_prompt(
                prompt.request_id,
                prompt.chat,
                prompt.message_id,
                "🔐 Approval request\n\n⚠️ Pyra restarted before this was answered; the request "
                "was cancelled (denied).",
            )


class _AnswerStream:
    """One answer on its way: streamed into edited messages, then finished with formatting."""

    def __init__(self, bot: TelegramBot, item: _Item) -> None:
        self._bot = bot
        self._item = item
        self._text = ""
        self._status = ""
        self._dirty = False
        self._shown: dict[int, str] = {}
        self._lock = anyio.Lock()

    def on_event(self, event: Event | UnknownEvent) -> None:
        # Called in the connection's reader: only note the change, never wait here.
        if isinstance(event, TextDelta):
            self._text += event.text
        elif isinstance(event, ToolCallEvent):
            # The engine keeps only the last round's text as the answer; so does the display.
            self._text, self._status = "", f"⚙️ {event.tool}…"
        elif isinstance(event, ToolResultEvent):
            self._status = ""
        else:
            return
        self._dirty = True

    async def run(self) -> None:
        interval = self._bot._settings.edit_interval
        while True:
            await anyio.sleep(interval)
            if not self._dirty:
                continue
            self._dirty = False
            display = "\n\n".join(p for p in (self._text.strip(), self._status) if p)
            if not display:
                continue
            try:
                async with self._lock:
                    await self._show(split_text(display), markdown=False)
            except (TelegramError, PyraError, TimeoutError) as exc:
                # The final answer is what must arrive; a missed edit on the way is not.
                log.info("streaming edit in chat %d failed: %s", self._item.chat, exc)

    async def finish(self, text: str, *, markdown: bool) -> None:
        async with self._lock:
            parts = split_text(text)
            await self._show(parts, markdown=markdown, final=True)
            # Streaming showed more parts than the answer has (a tool round's text, say).
            for message_id in self._item.parts[len(parts) :]:
                await self._bot._delete(self._item.chat, message_id)

    async def _show(self, parts: list[str], *, markdown: bool, final: bool = False) -> None:
        item = self._item
        for index, part in enumerate(parts):
            if index < len(item.parts):
                if final or self._shown.get(index) != part:
                    await self._bot._edit(item.chat, item.parts[index], part, markdown=markdown)
            else:
                message = await self._bot._send(
                    item.chat,
                    part,
                    markdown=markdown,
                    reply_to=item.message_id if index == 0 else None,
                )
                item.parts.append(message.message_id)
                await self._bot._record_part(item, index, message.message_id)
            self._shown[index] = part


def _reply(message_id: int | None) -> ReplyParameters | None:
    # The message may be gone (a deleted passphrase): send the reply anyway.
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def _item_of(update: Update) -> _Item:
    message = update.message
    assert message is not None
    user = message.from_user
    return _Item(
        update_id=update.update_id,
        chat=message.chat.id,
        sender=user.id if user is not None else message.chat.id,
        chat_type=message.chat.type,
        message_id=message.message_id,
        text=message.text or message.caption or "",
        date=message.date.timestamp(),
    )


def _accept_params(update: Update) -> InboxAcceptParams | None:
    if update.message is not None:
        item = _item_of(update)
        return InboxAcceptParams(
            platform=PLATFORM,
            update_id=item.update_id,
            kind="message",
            chat=str(item.chat),
            sender=str(item.sender),
            message_id=item.message_id,
            text=item.text or "",
            chat_type=item.chat_type,
            date=item.date,
        )
    query = update.callback_query
    if query is not None:
        chat = query.message.chat.id if query.message is not None else 0
        return InboxAcceptParams(
            platform=PLATFORM,
            update_id=update.update_id,
            kind="callback",
            chat=str(chat),
            sender=str(query.from_user.id),
        )
    return None


async def run_telegram(
    token: str,
    settings: BotSettings,
    *,
    layout: Layout | None = None,
    reconnect_delay: float = 1.0,
) -> None:
    """Run the bot until cancelled, reconnecting to the daemon when the connection ends.

    Raises :class:`~pyra_client.errors.NotConfigured` when Telegram refuses the token, so the
    supervisor backs off instead of hammering Telegram.
    """
    delay = reconnect_delay
    while True:
        started = time.monotonic()
        try:
            async with await AsyncConnection.open(layout, client=PLATFORM) as conn:
                await TelegramBot(conn, token, settings).run()
        except* (DaemonUnreachable, ShuttingDown) as lost:
            log.warning("lost the daemon (%s); reconnecting in %.1f s", lost.exceptions[0], delay)
        if time.monotonic() - started > 60:
            delay = reconnect_delay
        await anyio.sleep(delay)
        delay = min(30.0, delay * 2)
