"""The interaction broker: fan-out, first valid answer wins, refusals, expiry, cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pyra_client.errors import ApprovalRefused, NotFound
from pyra_daemon.broker import (
    NO_APPROVER_REASON,
    Approver,
    AuditRecord,
    Decision,
    InteractionBroker,
    InteractionRequest,
    make_visible,
)

WAIT = 2.0  # seconds any single wait in these tests may take before it counts as a hang


class RecordingApprover:
    """An approver that records every request and resolution it is given."""

    def __init__(self, approver_id: str, kind: str = "cli") -> None:
        self.id = approver_id
        self.kind = kind
        self.delivered: list[InteractionRequest] = []
        self.resolutions: list[tuple[str, Decision]] = []
        self._changed = anyio.Event()

    def _note(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def deliver(self, request: InteractionRequest) -> None:
        await anyio.lowlevel.checkpoint()  # like a real send on a connection
        self.delivered.append(request)
        self._note()

    async def resolved(self, request_id: str, decision: Decision) -> None:
        await anyio.lowlevel.checkpoint()
        self.resolutions.append((request_id, decision))
        self._note()

    async def next_request(self, count: int = 1) -> InteractionRequest:
        """The ``count``-th request delivered, once it arrives."""
        with anyio.fail_after(WAIT):
            while len(self.delivered) < count:
                await self._changed.wait()
        return self.delivered[count - 1]


class FailingApprover(RecordingApprover):
    """An approver whose connection is broken: every call raises."""

    async def deliver(self, request: InteractionRequest) -> None:
        raise ConnectionResetError("peer went away")

    async def resolved(self, request_id: str, decision: Decision) -> None:
        raise ConnectionResetError("peer went away")


class HangingApprover(RecordingApprover):
    """An approver whose connection never drains: every call blocks forever."""

    async def deliver(self, request: InteractionRequest) -> None:
        await anyio.sleep_forever()

    async def resolved(self, request_id: str, decision: Decision) -> None:
        await anyio.sleep_forever()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Asker:
    """Runs one ``ask`` in the background and keeps its decision."""

    def __init__(self, broker: InteractionBroker, **kwargs: Any) -> None:
        self.broker = broker
        self.kwargs = {"kind": "permission", "prompt": "Run it?", "tool": "shell", **kwargs}
        self.decision: Decision | None = None
        self.done = anyio.Event()

    async def run(self) -> None:
        self.decision = await self.broker.ask(**self.kwargs)
        self.done.set()

    async def result(self) -> Decision:
        with anyio.fail_after(WAIT):
            await self.done.wait()
        assert self.decision is not None
        return self.decision


def refusal_reason(excinfo: pytest.ExceptionInfo[ApprovalRefused]) -> str:
    return str(excinfo.value.data["reason"])


def sequential_ids() -> Any:
    counter = iter(range(1, 1_000_000))
    return lambda: f"req-{next(counter)}"


@pytest.fixture
def broker() -> InteractionBroker:
    return InteractionBroker(id_factory=sequential_ids(), deliver_timeout=0.2)


# ------------------------------------------------------------------------------ fan-out


async def test_fan_out_first_answer_wins_and_everyone_is_told(broker: InteractionBroker) -> None:
    cli, phone = RecordingApprover("cli:conn-1"), RecordingApprover("telegram:42", "telegram")
    broker.subscribe(cli)
    broker.subscribe(phone)
    asker = Asker(
        broker, arguments='{"command": "ls"}', conversation="cli:abc", origin="cli:conn-1"
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        assert (await phone.next_request()).id == request.id
        decision = broker.answer(request.id, "allow", approver_id="telegram:42")
        assert await asker.result() == decision
    assert decision.value == "allow"
    assert decision.by == "telegram:42"
    assert decision.allowed
    for approver in (cli, phone):
        assert approver.resolutions == [(request.id, decision)]
    assert broker.pending() == []


async def test_racing_answers_exactly_one_wins(broker: InteractionBroker) -> None:
    cli, phone = RecordingApprover("cli:conn-1"), RecordingApprover("telegram:42")
    broker.subscribe(cli)
    broker.subscribe(phone)
    outcomes: dict[str, Decision | ApprovalRefused] = {}

    async def answer(approver_id: str, value: str, request_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        try:
            outcomes[approver_id] = broker.answer(request_id, value, approver_id=approver_id)
        except ApprovalRefused as exc:
            outcomes[approver_id] = exc

    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        await phone.next_request()
        async with anyio.create_task_group() as racers:
            racers.start_soon(answer, "cli:conn-1", "deny", request.id)
            racers.start_soon(answer, "telegram:42", "allow", request.id)
        decision = await asker.result()
    winners = [o for o in outcomes.values() if isinstance(o, Decision)]
    losers = [o for o in outcomes.values() if isinstance(o, ApprovalRefused)]
    assert winners == [decision]
    assert len(losers) == 1
    assert losers[0].data["reason"] == "already answered"
    assert str(losers[0]) == f"already answered by {decision.by}"


async def test_replayed_answer_is_refused(broker: InteractionBroker) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        broker.answer(request.id, "deny", approver_id=cli.id)
    assert (await asker.result()).value == "deny"
    with pytest.raises(ApprovalRefused, match="already answered by cli:conn-1") as excinfo:
        broker.answer(request.id, "allow", approver_id=cli.id)
    assert refusal_reason(excinfo) == "already answered"
    assert excinfo.value.data["by"] == "cli:conn-1"


async def test_unknown_request_is_refused(broker: InteractionBroker) -> None:
    broker.subscribe(RecordingApprover("cli:conn-1"))
    with pytest.raises(ApprovalRefused, match="unknown request") as excinfo:
        broker.answer("made-up", "allow", approver_id="cli:conn-1")
    assert refusal_reason(excinfo) == "unknown request"


async def test_after_a_restart_every_id_is_unknown() -> None:
    before = InteractionBroker(deliver_timeout=0.2)
    cli = RecordingApprover("cli:conn-1")
    before.subscribe(cli)
    async with anyio.create_task_group() as tg:
        tg.start_soon(Asker(before).run)
        request = await cli.next_request()
        tg.cancel_scope.cancel()  # the daemon stops
    after = InteractionBroker()
    after.subscribe(cli)
    with pytest.raises(ApprovalRefused) as excinfo:
        after.answer(request.id, "allow", approver_id=cli.id)
    assert refusal_reason(excinfo) == "unknown request"


async def test_answer_from_an_approver_not_asked_is_refused(broker: InteractionBroker) -> None:
    cli, phone = (
        RecordingApprover("cli:conn-1", "cli"),
        RecordingApprover("telegram:42", "telegram"),
    )
    broker.subscribe(cli)
    broker.subscribe(phone)

    def phones_only(approver: Approver) -> bool:
        return approver.kind == "telegram"

    asker = Asker(broker, eligible=phones_only)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await phone.next_request()
        for forger in ("cli:conn-1", "telegram:666"):
            with pytest.raises(ApprovalRefused, match="not asked to this approver"):
                broker.answer(request.id, "allow", approver_id=forger)
        assert broker.pending("cli:conn-1") == []
        assert broker.pending("telegram:42") == [request]
        broker.answer(request.id, "deny", approver_id=phone.id)
    assert (await asker.result()).by == "telegram:42"
    assert cli.delivered == []
    assert cli.resolutions == []
    # After resolution a foreign sender learns nothing about who answered.
    with pytest.raises(ApprovalRefused, match="not asked to this approver"):
        broker.answer(request.id, "allow", approver_id="cli:conn-1")


async def test_invalid_option_is_refused_and_the_request_stays_pending(
    broker: InteractionBroker,
) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        assert request.options == ["allow", "always", "deny"]
        for bad in ("yes", "ALLOW", ""):
            with pytest.raises(ApprovalRefused, match="invalid choice") as excinfo:
                broker.answer(request.id, bad, approver_id=cli.id)
            assert refusal_reason(excinfo) == "invalid choice"
        assert broker.get(request.id) == request
        broker.answer(request.id, "always", approver_id=cli.id)
    assert (await asker.result()).value == "always"


async def test_choice_validates_options_and_question_takes_free_text(
    broker: InteractionBroker,
) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    choice = Asker(
        broker, kind="choice", prompt="Which branch?", tool=None, options=["main", "dev"]
    )
    question = Asker(broker, kind="question", prompt="Your name?", tool=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(choice.run)
        picked = await cli.next_request(1)
        with pytest.raises(ApprovalRefused, match="invalid choice"):
            broker.answer(picked.id, "allow", approver_id=cli.id)
        broker.answer(picked.id, "dev", approver_id=cli.id)
        tg.start_soon(question.run)
        asked = await cli.next_request(2)
        assert asked.options == []
        with pytest.raises(ApprovalRefused, match="empty answer"):
            broker.answer(asked.id, "   ", approver_id=cli.id)
        broker.answer(asked.id, "Ada Lovelace", approver_id=cli.id)
    assert (await choice.result()).value == "dev"
    assert (await question.result()).value == "Ada Lovelace"


# ------------------------------------------------------------------------------ expiry


async def test_expiry_denies_tells_approvers_and_refuses_late_answers() -> None:
    broker = InteractionBroker(deliver_timeout=0.2)
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, timeout=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        decision = await asker.result()
    assert decision == Decision(value="deny", by="system", reason="expired after 0.05s")
    assert cli.resolutions == [(request.id, decision)]
    with pytest.raises(ApprovalRefused, match="expired") as excinfo:
        broker.answer(request.id, "allow", approver_id=cli.id)
    assert refusal_reason(excinfo) == "expired"


async def test_answer_past_the_deadline_is_refused_even_before_the_timer_fires() -> None:
    clock, wall = FakeClock(50.0), FakeClock(1_700_000_000.0)
    broker = InteractionBroker(clock=clock, wall=wall, deliver_timeout=0.2)
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, timeout=30)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        assert request.created_at == 1_700_000_000.0
        assert request.expires_at == 1_700_000_030.0
        clock.now += 30
        with pytest.raises(ApprovalRefused, match="expired"):
            broker.answer(request.id, "allow", approver_id=cli.id)
        decision = await asker.result()
    assert decision.value == "deny"
    assert decision.reason == "expired after 30s"
    assert cli.resolutions == [(request.id, decision)]


# ------------------------------------------------------------------------------ who is there


async def test_no_approver_connected_denies_at_once_with_a_hint(
    broker: InteractionBroker,
) -> None:
    with anyio.fail_after(0.5):
        decision = await broker.ask(kind="permission", prompt="Run it?", tool="shell", timeout=60)
    assert decision.value == "deny"
    assert decision.by == "system"
    assert decision.reason == NO_APPROVER_REASON
    assert "pyra approvals watch" in decision.reason
    assert "approver chat" in decision.reason

    # Subscribed approvers that may not answer this request count as nobody.
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    with anyio.fail_after(0.5):
        decision = await broker.ask(
            kind="permission", prompt="Run it?", timeout=60, eligible=lambda a: a.kind == "matrix"
        )
    assert decision.reason == NO_APPROVER_REASON
    assert cli.delivered == []
    assert broker.pending() == []


async def test_a_failing_or_hanging_approver_does_not_block_the_others() -> None:
    broker = InteractionBroker(deliver_timeout=0.4)
    broken, stuck, good = (
        FailingApprover("signal:1"),
        HangingApprover("matrix:2"),
        RecordingApprover("cli:conn-3"),
    )
    for approver in (broken, stuck, good):
        broker.subscribe(approver)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        with anyio.fail_after(0.2):  # well under the 0.4 s delivery deadline the others get
            request = await good.next_request()
        broker.answer(request.id, "allow", approver_id=good.id)
        with anyio.fail_after(1.5):  # the stuck `resolved` is cut at the deadline
            decision = await asker.result()
    assert decision.by == "cli:conn-3"
    assert good.resolutions == [(request.id, decision)]


async def test_an_eligibility_check_that_raises_skips_that_approver(
    broker: InteractionBroker,
) -> None:
    cli, phone = RecordingApprover("cli:conn-1", "cli"), RecordingApprover("telegram:4", "telegram")
    broker.subscribe(cli)
    broker.subscribe(phone)

    def picky(approver: Approver) -> bool:
        if approver.kind == "cli":
            raise KeyError("bug in a predicate")
        return True

    asker = Asker(broker, eligible=picky)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await phone.next_request()
        broker.answer(request.id, "deny", approver_id=phone.id)
    assert (await asker.result()).value == "deny"
    assert cli.delivered == []


async def test_a_late_subscriber_receives_pending_requests_and_may_answer(
    broker: InteractionBroker,
) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, eligible=lambda a: a.kind != "matrix")
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        phone, matrix = (
            RecordingApprover("telegram:42", "telegram"),
            RecordingApprover("m:1", "matrix"),
        )
        broker.subscribe(phone)
        broker.subscribe(matrix)
        assert await phone.next_request() == request
        assert broker.pending("telegram:42") == [request]
        broker.answer(request.id, "allow", approver_id=phone.id)
    assert (await asker.result()).by == "telegram:42"
    assert matrix.delivered == []
    assert [r for r, _ in cli.resolutions] == [request.id]
    assert [r for r, _ in phone.resolutions] == [request.id]


async def test_a_chat_reconnecting_under_its_stable_id_may_still_answer(
    broker: InteractionBroker,
) -> None:
    phone = RecordingApprover("telegram:42", "telegram")
    broker.subscribe(phone)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await phone.next_request()
        broker.unsubscribe(phone.id)
        broker.unsubscribe(phone.id)  # idempotent
        assert broker.approvers() == []
        again = RecordingApprover("telegram:42", "telegram")
        broker.subscribe(again)
        assert await again.next_request() == request
        broker.answer(request.id, "allow", approver_id="telegram:42")
    assert (await asker.result()).value == "allow"
    assert phone.resolutions == []  # gone: only the live connection is told
    assert [r for r, _ in again.resolutions] == [request.id]


async def test_cancelling_the_asker_withdraws_the_request(broker: InteractionBroker) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        tg.cancel_scope.cancel()
    assert asker.decision is None  # the cancellation propagated to the asker
    assert broker.pending() == []
    request_id, decision = cli.resolutions[0]
    assert request_id == request.id
    assert (decision.value, decision.by, decision.reason) == ("deny", "system", "cancelled")
    with pytest.raises(ApprovalRefused, match="withdrawn") as excinfo:
        broker.answer(request.id, "allow", approver_id=cli.id)
    assert refusal_reason(excinfo) == "withdrawn"


async def test_deny_pending_withdraws_everything_at_shutdown(broker: InteractionBroker) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    first, second = Asker(broker), Asker(broker, tool="write_file")
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        tg.start_soon(second.run)
        await cli.next_request(2)
        assert broker.deny_pending("daemon shutting down") == 2
    for asker in (first, second):
        assert (await asker.result()).reason == "daemon shutting down"
    assert len(cli.resolutions) == 2


# ------------------------------------------------------------------------------ bookkeeping


async def test_pending_and_get(broker: InteractionBroker) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, tool="shell")
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        assert broker.pending() == [request]
        assert broker.pending("cli:conn-1") == [request]
        assert broker.pending("someone-else") == []
        assert broker.get(request.id) == request
        broker.answer(request.id, "deny", approver_id=cli.id)
    await asker.result()
    with pytest.raises(NotFound):
        broker.get(request.id)


async def test_request_ids_are_random_and_server_side() -> None:
    broker = InteractionBroker(deliver_timeout=0.2)
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(Asker(broker, timeout=0.05).run)
        await cli.next_request(3)
    ids = {r.id for r in cli.delivered}
    assert len(ids) == 3
    assert all(len(i) == 16 for i in ids)  # token_urlsafe(12)


async def test_resolved_ids_are_remembered_in_a_bounded_lru() -> None:
    broker = InteractionBroker(id_factory=sequential_ids(), deliver_timeout=0.2, remember=3)
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    for index in range(1, 6):
        asker = Asker(broker)
        async with anyio.create_task_group() as tg:
            tg.start_soon(asker.run)
            request = await cli.next_request(index)
            broker.answer(request.id, "allow", approver_id=cli.id)
    with pytest.raises(ApprovalRefused, match="unknown request"):
        broker.answer("req-2", "allow", approver_id=cli.id)
    with pytest.raises(ApprovalRefused, match="already answered"):
        broker.answer("req-3", "allow", approver_id=cli.id)
    assert len(broker._closed) == 3


async def test_audit_records_every_request_and_decision() -> None:
    records: list[AuditRecord] = []

    async def audit(record: AuditRecord) -> None:
        records.append(record)

    wall = FakeClock(1_700_000_000.0)
    broker = InteractionBroker(id_factory=sequential_ids(), wall=wall, audit=audit)
    await broker.ask(kind="permission", prompt="Run?", tool="shell", arguments='{"a": 1}')
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, arguments='{"command": "ls"}', conversation="cli:c1", flags=["tainted"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        broker.answer(request.id, "allow", approver_id=cli.id)
    await asker.result()
    summary = [(r.request_id, r.event, r.decision, r.by) for r in records]
    assert summary == [
        ("req-1", "requested", None, None),
        ("req-1", "decided", "deny", "system"),
        ("req-2", "requested", None, None),
        ("req-2", "decided", "allow", "cli:conn-1"),
    ]
    last = records[-1]
    assert (last.kind, last.tool, last.arguments) == ("permission", "shell", '{"command": "ls"}')
    assert (last.conversation, last.flags, last.at) == ("cli:c1", ["tainted"], 1_700_000_000.0)
    assert last.reason == "answered by cli:conn-1"
    assert records[1].reason == NO_APPROVER_REASON


async def test_a_failing_audit_is_logged_and_does_not_change_the_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def audit(record: AuditRecord) -> None:
        raise OSError("disk full")

    broker = InteractionBroker(audit=audit, deliver_timeout=0.2)
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        broker.answer(request.id, "allow", approver_id=cli.id)
    assert (await asker.result()).value == "allow"
    assert "could not audit request" in caplog.text


# ------------------------------------------------------------------------------ showing it safely


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("rm -rf /\u202e", "rm -rf /<U+202E>"),
        ("\u2066evil\u2069 \u200e\u200f\u061c", "<U+2066>evil<U+2069> <U+200E><U+200F><U+061C>"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("nul\x00 del\x7f c1\x85\x9b", "nul\\x00 del\\x7f c1\\x85\\x9b"),
        (
            "zero\u200bwidth\u200c\u200d\u2060\ufeff",
            "zero<U+200B>width<U+200C><U+200D><U+2060><U+FEFF>",
        ),
        ("tag\U000e0041\U000e0042", "tag<U+E0041><U+E0042>"),
        ("line\u2028para\u2029", "line<U+2028>para<U+2029>"),
        ("héllo 日本 — ✓ \\n", "héllo 日本 — ✓ \\n"),
    ],
)
def test_make_visible_escapes_controls_and_bidi(raw: str, shown: str) -> None:
    assert make_visible(raw) == shown


def test_make_visible_multiline_keeps_newlines_but_not_carriage_returns() -> None:
    assert make_visible("a\n\tb\rc\u202e", multiline=True) == "a\n\tb\\rc<U+202E>"


async def test_preview_is_one_visible_line_and_the_arguments_stay_whole(
    broker: InteractionBroker,
) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    arguments = '{"command": "echo hi\\n\u202erm -rf ~ ' + "x" * 1000 + '"}'
    asker = Asker(
        broker, prompt="Run\x1b[2J it?", arguments=arguments, flags=["tainted", "tainted"]
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        broker.answer(request.id, "deny", approver_id=cli.id)
    assert request.arguments == arguments
    assert request.prompt == "Run\\x1b[2J it?"
    assert request.flags == ["tainted"]
    assert "\n" not in request.preview
    assert "\u202e" not in request.preview
    assert "<U+202E>rm -rf ~" in request.preview
    assert len(request.preview) <= 200
    assert request.preview.endswith("…")


async def test_preview_never_cuts_an_escape_in_half(broker: InteractionBroker) -> None:
    cli = RecordingApprover("cli:conn-1")
    broker.subscribe(cli)
    asker = Asker(broker, arguments="\u202e" * 100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.run)
        request = await cli.next_request()
        broker.answer(request.id, "deny", approver_id=cli.id)
    assert request.preview == "<U+202E>" * 24 + "…"
