"""Self-test of the fake Bot API: the real python-telegram-bot 22 drives it over loopback HTTP.

Besides proving the fake, these tests pin down what PTB does on the wire (start-up and stop
sequence, how a 429 surfaces), which the Telegram adapter relies on.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, InvalidToken, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from tests.fakes.telegram_server import FakeBotAPI

USER = 4242


@pytest.fixture
def srv() -> Iterator[FakeBotAPI]:
    with FakeBotAPI(username="pyra_test_bot") as server:
        yield server


def build_app(srv: FakeBotAPI) -> Application:  # type: ignore[type-arg]
    # Small timeouts keep a misbehaving test short; a long poll may add its own `timeout`.
    return (
        ApplicationBuilder()
        .token(srv.token)
        .base_url(srv.base_url)
        .base_file_url(srv.file_base_url)
        .connect_timeout(2)
        .read_timeout(2)
        .write_timeout(2)
        .pool_timeout(2)
        .get_updates_connect_timeout(2)
        .get_updates_read_timeout(2)
        .get_updates_pool_timeout(2)
        .build()
    )


class Recorder:
    """The bot under test: reverses text, greets on /start, offers and handles a menu."""

    def __init__(self) -> None:
        self.update_ids: list[int] = []
        self.errors: list[BaseException] = []

    def install(self, app: Application) -> None:  # type: ignore[type-arg]
        app.add_handler(TypeHandler(Update, self.record), group=-1)
        app.add_handler(CommandHandler("start", self.start))
        app.add_handler(CommandHandler("menu", self.menu))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, self.reverse))
        app.add_handler(CallbackQueryHandler(self.button))
        app.add_error_handler(self.error)

    async def record(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.update_ids.append(update.update_id)

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user
        assert update.message
        await update.message.reply_text(f"Hello, {update.effective_user.first_name}!")

    async def menu(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message
        keyboard = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton("Yes", callback_data="yes")],
                [InlineKeyboardButton("No", callback_data="no")],
            ]
        )
        await update.message.reply_text("Pick one", reply_markup=keyboard)

    async def reverse(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message
        assert update.message.text
        await update.message.reply_text(update.message.text[::-1])

    async def button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query
        await query.answer(f"got {query.data}")
        await query.edit_message_text(f"You chose {query.data}")

    async def error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert context.error is not None
        self.errors.append(context.error)


@asynccontextmanager
async def polling(
    srv: FakeBotAPI, recorder: Recorder, *, poll_timeout: int = 1
) -> AsyncIterator[Application]:  # type: ignore[type-arg]
    app = build_app(srv)
    recorder.install(app)
    await app.initialize()
    try:
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=poll_timeout)  # type: ignore[union-attr]
        yield app
    finally:
        if app.updater and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()


def methods(srv: FakeBotAPI) -> list[str]:
    return [c.method for c in srv.calls]


async def test_startup_sequence_and_prompt_stop_with_a_long_poll_pending(srv: FakeBotAPI) -> None:
    recorder = Recorder()
    async with polling(srv, recorder, poll_timeout=10) as app:
        await srv.wait_for_call("getUpdates")
        await asyncio.sleep(0.2)  # the long poll is now held by the server
        started = time.monotonic()
        await app.updater.stop()  # type: ignore[union-attr]
        stop_seconds = time.monotonic() - started

    assert stop_seconds < 1.0
    calls = srv.calls
    assert [c.method for c in calls] == ["getMe", "deleteWebhook", "getUpdates", "getUpdates"]
    assert calls[1].params == {}  # drop_pending_updates is left out unless asked for
    assert calls[2].params == {"offset": "0", "timeout": "10"}
    # On stop PTB abandons the held poll and confirms with a non-blocking call.
    assert calls[3].params == {"offset": "0", "timeout": "0"}
    assert recorder.errors == []


async def test_text_message_gets_the_reversed_reply(srv: FakeBotAPI) -> None:
    async with polling(srv, Recorder()):
        update = srv.send_text(USER, "hello pyra")
        reply = await srv.wait_for_message(USER)

    assert update["message"]["message_id"] == 1
    assert reply["text"] == "aryp olleh"
    assert reply["message_id"] == 2  # per chat, shared with the user's messages
    assert reply["chat"] == {"id": USER, "type": "private", "first_name": f"User{USER}"}
    assert reply["from"]["is_bot"] is True
    assert srv.calls_to("sendMessage") == [{"chat_id": str(USER), "text": "aryp olleh"}]


async def test_command_reaches_the_command_handler_only(srv: FakeBotAPI) -> None:
    async with polling(srv, Recorder()):
        update = srv.send_text(USER, "/start", username="alice", first_name="Alice")
        await srv.wait_for_message(USER, lambda m: m["text"] == "Hello, Alice!")
        srv.send_text(USER, "/start@pyra_test_bot now")
        await srv.wait_for(lambda calls: len([c for c in calls if c.method == "sendMessage"]) == 2)

    assert update["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert [m["text"] for m in srv.sent_messages(USER)] == ["Hello, Alice!", "Hello, Alice!"]


async def test_button_press_is_answered_and_edits_the_message(srv: FakeBotAPI) -> None:
    async with polling(srv, Recorder()):
        srv.send_text(USER, "/menu")
        menu = await srv.wait_for_message(USER, lambda m: m["text"] == "Pick one")
        assert menu["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "yes"

        update = srv.press_button(USER, menu, "yes")
        answer = await srv.wait_for_call("answerCallbackQuery")
        edited = await srv.wait_for_message(USER, lambda m: m["text"] == "You chose yes")

    query = update["callback_query"]
    assert query["message"]["message_id"] == menu["message_id"]
    assert query["from"]["id"] == USER
    assert answer == {"callback_query_id": query["id"], "text": "got yes"}
    assert srv.calls_to("editMessageText") == [
        {"chat_id": str(USER), "message_id": str(menu["message_id"]), "text": "You chose yes"}
    ]
    # An edit without reply_markup removes the keyboard, so its buttons cannot be pressed again.
    assert edited["message_id"] == menu["message_id"]
    assert "reply_markup" not in edited
    assert "edit_date" in edited
    assert len(srv.sent_messages(USER)) == 1
    with pytest.raises(ValueError, match="no button"):
        srv.press_button(USER, menu, "no")


async def test_injected_429_surfaces_as_retry_after(
    srv: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opt in to PTB's future timedelta API; the int form warns PTBDeprecationWarning since 22.2.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    recorder = Recorder()
    srv.inject_error("sendMessage", 429, retry_after=3)
    async with polling(srv, recorder) as app:
        srv.send_text(USER, "first")
        await srv.wait_for(lambda _: recorder.errors)
        # The failure was for one call only: the next message gets its reply.
        srv.send_text(USER, "second")
        await srv.wait_for_message(USER, lambda m: m["text"] == "dnoces")

        srv.inject_error("sendMessage", 429, retry_after=7)
        with pytest.raises(RetryAfter) as caught:
            await app.bot.send_message(USER, "direct")

    [error] = recorder.errors
    assert isinstance(error, RetryAfter)
    assert error.retry_after == dtm.timedelta(seconds=3)
    assert str(error) == "Flood control exceeded. Retry in 0:00:03"
    assert caught.value.retry_after == dtm.timedelta(seconds=7)
    # PTB does not retry by itself (no rate limiter configured): one attempt each.
    assert [p["text"] for p in srv.calls_to("sendMessage")] == ["tsrif", "dnoces", "direct"]
    assert [m["text"] for m in srv.sent_messages(USER)] == ["dnoces"]


async def test_confirmed_updates_are_not_redelivered_to_a_new_application(
    srv: FakeBotAPI,
) -> None:
    first, second = Recorder(), Recorder()
    async with polling(srv, first):
        sent = [srv.send_text(USER, f"m{i}")["update_id"] for i in range(3)]
        await srv.wait_for(lambda calls: sum(c.method == "sendMessage" for c in calls) == 3)
    assert srv.pending_updates == []  # the stop-time getUpdates confirmed all three

    async with polling(srv, second):
        sent.append(srv.send_text(USER, "m3")["update_id"])
        await srv.wait_for_message(USER, lambda m: m["text"] == "3m")

    assert first.update_ids == sent[:3]
    assert second.update_ids == sent[3:]
    assert sorted(set(srv.delivered_update_ids)) == srv.delivered_update_ids == sent
    offsets = srv.get_updates_offsets
    assert offsets[0] == 0
    assert sent[2] + 1 in offsets
    assert offsets[-1] == sent[3] + 1


async def test_bot_methods_and_the_real_api_refusals(srv: FakeBotAPI) -> None:
    srv.send_text(USER, "hi")
    bot = Bot(srv.token, base_url=srv.base_url, base_file_url=srv.file_base_url)
    async with bot:
        assert bot.username == "pyra_test_bot"
        await bot.send_chat_action(USER, "typing")
        doc = await bot.send_document(USER, b"a\r\nb\x00\xff", filename="notes.bin", caption="c")
        await bot.set_my_commands([("start", "Say hello"), ("menu", "Show the menu")])
        commands = await bot.get_my_commands()
        message = await bot.send_message(USER, "to delete")
        assert await bot.delete_message(USER, message.message_id)

        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(999, "nobody wrote to the bot from here")
        with pytest.raises(BadRequest, match="Message is too long"):
            await bot.send_message(USER, "x" * 4097)
        too_long = InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data="x" * 65)]])
        with pytest.raises(BadRequest, match="Button_data_invalid"):
            await bot.send_message(USER, "buttons", reply_markup=too_long)
        same = await bot.send_message(USER, "same")
        with pytest.raises(BadRequest, match="Message is not modified"):
            await bot.edit_message_text("same", USER, same.message_id)
        with pytest.raises(BadRequest, match="Message to edit not found"):
            await bot.edit_message_text("gone", USER, message.message_id)
        with pytest.raises(BadRequest, match="Query is too old"):
            await bot.answer_callback_query("12345")

    [document] = srv.documents
    assert (document.filename, document.content, document.caption) == (
        "notes.bin",
        b"a\r\nb\x00\xff",
        "c",
    )
    assert doc.document is not None
    assert doc.document.file_size == 6
    assert document.message_id == doc.message_id
    assert [(c.command, c.description) for c in commands] == [
        ("start", "Say hello"),
        ("menu", "Show the menu"),
    ]
    assert [m["text"] for m in srv.sent_messages(USER) if "text" in m] == ["same"]


def test_wrong_token_is_401_and_unknown_method_is_404(srv: FakeBotAPI) -> None:
    with httpx.Client() as client:
        wrong = client.post(f"{srv.base_url}123:nope/getMe")
        unknown = client.post(f"{srv.base_url}{srv.token}/setWebhook", data={"url": "x"})
        lower = client.get(f"{srv.base_url}{srv.token}/getme")
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert lower.json()["result"]["username"] == "pyra_test_bot"
    assert methods(srv) == ["getMe"]


def test_json_and_form_bodies_are_recorded_as_strings(srv: FakeBotAPI) -> None:
    srv.send_text(USER, "hi")
    markup = {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
    url = f"{srv.base_url}{srv.token}/sendMessage"
    with httpx.Client() as client:
        as_json = client.post(url, json={"chat_id": USER, "text": "j", "reply_markup": markup})
        as_form = client.post(url, data={"chat_id": str(USER), "text": "f"})
    assert as_json.json()["result"]["reply_markup"] == markup
    assert as_form.json()["result"]["message_id"] == 3
    assert srv.calls_to("sendMessage") == [
        {"chat_id": str(USER), "text": "j", "reply_markup": json.dumps(markup)},
        {"chat_id": str(USER), "text": "f"},
    ]


def test_updates_are_redelivered_until_an_offset_confirms_them(srv: FakeBotAPI) -> None:
    first = srv.send_text(USER, "one")["update_id"]
    second = srv.send_text(USER, "two")["update_id"]
    url = f"{srv.base_url}{srv.token}/getUpdates"

    def ids(**params: int) -> list[int]:
        response = httpx.post(url, data={"timeout": "0", **params})
        return [u["update_id"] for u in response.json()["result"]]

    assert ids() == [first, second]
    assert ids() == [first, second]
    assert ids(limit=1) == [first]
    assert ids(offset=first + 1) == [second]
    assert ids() == [second]
    assert ids(offset=second + 1) == []
    assert srv.get_updates_offsets == [first + 1, second + 1]


async def test_get_updates_holds_until_an_update_and_zero_timeout_is_immediate(
    srv: FakeBotAPI,
) -> None:
    url = f"{srv.base_url}{srv.token}/getUpdates"
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        empty = await client.post(url, data={"timeout": "0"})
        assert empty.json() == {"ok": True, "result": []}
        assert time.monotonic() - started < 0.5

        poll = asyncio.ensure_future(client.post(url, data={"timeout": "5"}))
        await asyncio.sleep(0.3)
        assert not poll.done()
        srv.send_text(USER, "wake up")
        response = await asyncio.wait_for(poll, 2)
    assert [u["message"]["text"] for u in response.json()["result"]] == ["wake up"]
    assert time.monotonic() - started < 2


async def test_a_newer_get_updates_ends_the_held_one_with_conflict(srv: FakeBotAPI) -> None:
    url = f"{srv.base_url}{srv.token}/getUpdates"
    async with httpx.AsyncClient(timeout=10) as one, httpx.AsyncClient(timeout=10) as two:
        held = asyncio.ensure_future(one.post(url, data={"timeout": "5"}))
        await srv.wait_for_call("getUpdates")
        await asyncio.sleep(0.1)
        newer = await two.post(url, data={"timeout": "0"})
        older = await asyncio.wait_for(held, 2)
    assert newer.status_code == 200
    assert older.status_code == 409
    assert older.json()["description"].startswith("Conflict: terminated by other getUpdates")


async def test_stop_is_prompt_and_drops_a_pending_long_poll(srv: FakeBotAPI) -> None:
    url = f"{srv.base_url}{srv.token}/getUpdates"
    async with httpx.AsyncClient(timeout=10) as client:
        poll = asyncio.ensure_future(client.post(url, data={"timeout": "30"}))
        await srv.wait_for_call("getUpdates")
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(httpx.HTTPError):
            await asyncio.wait_for(poll, 2)


async def test_injected_errors_and_stalls_on_get_updates(srv: FakeBotAPI) -> None:
    srv.inject_error("getUpdates", 502, "Bad Gateway", times=2)
    url = f"{srv.base_url}{srv.token}/getUpdates"
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await client.post(url, data={"timeout": "0"})).status_code for _ in range(3)]
        srv.stall_get_updates(0.4)
        started = time.monotonic()
        stalled = await client.post(url, data={"timeout": "0"})
    assert statuses == [502, 502, 200]
    assert stalled.status_code == 200
    assert time.monotonic() - started >= 0.4


async def test_ptb_reports_a_bad_token_as_invalid_token(srv: FakeBotAPI) -> None:
    bot = Bot("123:wrong", base_url=srv.base_url)
    # PTB turns the 401 into InvalidToken with its own wording.
    with pytest.raises(InvalidToken, match="rejected by the server"):
        await bot.initialize()
    assert srv.calls == []
