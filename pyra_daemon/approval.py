"""Approval policies: who decides whether a tool call may run.

A policy is an async callable taking a :class:`ToolCall` and returning a
:class:`~pyra_daemon.broker.Decision`, or ``None`` to defer to the next one. Small policies
compose with :func:`chain`, where the first non-``None`` decision wins and a call every policy
deferred on is denied. A typical gate::

    gate = chain(AllowReadOnly(), RulePolicy(rules), AskHost(broker, rules=rules))

* :class:`AutoApprove` allows what a predicate accepts; :class:`DenyAll` denies everything.
* :class:`AllowReadOnly` allows read-only tools that do not ask for approval themselves.
* :class:`RulePolicy` applies the person's "allow always" rules (per tool, optionally per
  argument glob), but never to a tool that can change things while the conversation holds
  untrusted content (``tainted``) or a suspected injection.
* :class:`AskHost` asks the person through the interaction broker and turns an "always" answer
  into a rule.

Rules live behind the :class:`RuleStore` protocol; :class:`MemoryRuleStore` keeps them in memory
(the SQLite store implements the same protocol). Patterns are :mod:`fnmatch` globs matched,
case-sensitively, against the whole arguments JSON in canonical form
(:func:`canonical_arguments`: sorted keys, no spaces, non-ASCII kept), e.g.
``{"command":"ls *"}``. ``*`` matches any run of characters, including quotes, ``/`` and ``;``:
``{"command":"ls *"}`` also matches ``{"command":"ls; rm -rf ~"}``, so a pattern is only as
narrow as its literal parts.

What this module deliberately does not do: it does not run tools, render prompts, talk to
frontends (the broker does), persist anything itself, or read the config (the engine builds the
chain).
"""

from __future__ import annotations

import builtins
import fnmatch
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from pyra_client.errors import NotFound
from pyra_daemon.broker import Decision, Eligibility, InteractionBroker

__all__ = [
    "AllowReadOnly",
    "ApprovalPolicy",
    "AskHost",
    "AutoApprove",
    "DenyAll",
    "MemoryRuleStore",
    "Rule",
    "RulePolicy",
    "RuleStore",
    "ToolCall",
    "canonical_arguments",
    "chain",
    "rule_matches",
]

log = logging.getLogger(__name__)

_SYSTEM = "system"
#: Flags that make a call as untrusted as a tainted conversation.
_UNTRUSTED_FLAGS = frozenset({"injection-suspected", "tainted"})


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call waiting at the approval gate.

    ``arguments`` is the full JSON text the model produced. ``tainted`` says the conversation
    holds untrusted content (a fetched page, a forwarded message); ``flags`` carries markers such
    as ``injection-suspected`` from the gatekeeper. ``origin`` is the frontend that started the
    turn, if any.
    """

    tool: str
    arguments: str = "{}"
    conversation: str | None = None
    read_only: bool = False
    requires_approval: bool = True
    tainted: bool = False
    flags: list[str] = msgspec.field(default_factory=list)
    origin: str | None = None

    @property
    def untrusted(self) -> bool:
        """True when the call may have been steered by content the person did not write."""
        return self.tainted or any(flag in _UNTRUSTED_FLAGS for flag in self.flags)


class ApprovalPolicy(Protocol):
    """Decides on a tool call: a :class:`~pyra_daemon.broker.Decision`, or ``None`` to defer.

    A policy must not raise for a call it does not like: it denies it. It may be called
    concurrently for calls of different conversations.
    """

    async def __call__(self, call: ToolCall) -> Decision | None:
        """The decision on ``call``, or ``None`` when this policy has no opinion."""
        ...


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """An "allow always" rule: ``tool`` with any arguments, or those matching ``pattern``."""

    id: int
    tool: str
    pattern: str | None = None
    created_at: float = 0.0


class RuleStore(Protocol):
    """Where "allow always" rules are kept.

    ``add`` returns the existing rule when the same tool and pattern is already there;
    ``remove`` raises :class:`~pyra_client.errors.NotFound` for an unknown id (revocation);
    ``match`` returns a rule that allows ``tool`` with these (canonical) ``arguments``, as
    decided by :func:`rule_matches`, or ``None``.
    """

    async def list(self) -> builtins.list[Rule]:
        """Every rule, oldest first."""
        ...

    async def add(self, tool: str, pattern: str | None = None) -> Rule:
        """Remember a rule (or return the identical one already remembered)."""
        ...

    async def remove(self, rule_id: int) -> None:
        """Forget a rule."""
        ...

    async def match(self, tool: str, arguments: str) -> Rule | None:
        """A rule allowing this call, or ``None``."""
        ...


def canonical_arguments(arguments: str) -> str:
    """The arguments JSON with sorted keys and no spaces; text that is not JSON, unchanged."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def rule_matches(rule: Rule, tool: str, arguments: str) -> bool:
    """Whether ``rule`` allows ``tool`` with ``arguments`` (canonicalise the arguments first)."""
    if rule.tool != tool:
        return False
    return rule.pattern is None or fnmatch.fnmatchcase(arguments, rule.pattern)


class MemoryRuleStore:
    """A :class:`RuleStore` in memory: for tests and for a daemon run without a database."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._rules: dict[int, Rule] = {}
        self._next_id = 1

    async def list(self) -> builtins.list[Rule]:
        return builtins.list(self._rules.values())

    async def add(self, tool: str, pattern: str | None = None) -> Rule:
        for rule in self._rules.values():
            if rule.tool == tool and rule.pattern == pattern:
                return rule
        rule = Rule(id=self._next_id, tool=tool, pattern=pattern, created_at=self._wall())
        self._next_id += 1
        self._rules[rule.id] = rule
        return rule

    async def remove(self, rule_id: int) -> None:
        if self._rules.pop(rule_id, None) is None:
            raise NotFound(f"no approval rule {rule_id}", rule_id=rule_id)

    async def match(self, tool: str, arguments: str) -> Rule | None:
        for rule in self._rules.values():
            if rule_matches(rule, tool, arguments):
                return rule
        return None


class AutoApprove:
    """Allows every call ``allow`` accepts; defers on the rest."""

    def __init__(self, allow: Callable[[ToolCall], bool]) -> None:
        self._allow = allow

    async def __call__(self, call: ToolCall) -> Decision | None:
        if self._allow(call):
            return Decision(value="allow", by=_SYSTEM, reason="auto-approved by policy")
        return None


class DenyAll:
    """Denies every call, with ``reason`` for the model and the audit."""

    def __init__(self, reason: str = "denied by policy") -> None:
        self._reason = reason

    async def __call__(self, call: ToolCall) -> Decision | None:
        return Decision(value="deny", by=_SYSTEM, reason=self._reason)


class AllowReadOnly:
    """Allows read-only tools that do not require approval; defers on everything else."""

    async def __call__(self, call: ToolCall) -> Decision | None:
        if call.read_only and not call.requires_approval:
            return Decision(value="allow", by=_SYSTEM, reason="read-only tool")
        return None


class RulePolicy:
    """Allows calls matching an "allow always" rule; defers otherwise.

    Never applies to a tool that is not read-only when the call is untrusted (tainted
    conversation or suspected injection): such a call is asked about every time.
    """

    def __init__(self, rules: RuleStore) -> None:
        self._rules = rules

    async def __call__(self, call: ToolCall) -> Decision | None:
        if call.untrusted and not call.read_only:
            return None
        rule = await self._rules.match(call.tool, canonical_arguments(call.arguments))
        if rule is None:
            return None
        return Decision(value="allow", by=_SYSTEM, reason=f"allowed by rule {rule.id}")


class AskHost:
    """Asks the person through the broker; an "always" answer also records a rule.

    The rule is tool-wide unless ``pattern`` maps the call to an argument pattern (a glob over
    :func:`canonical_arguments`, see the module doc). Without a ``rules`` store "always" counts
    as "allow" once. Anything but an allow is returned as the broker's deny.
    """

    def __init__(
        self,
        broker: InteractionBroker,
        *,
        rules: RuleStore | None = None,
        eligible: Eligibility | None = None,
        timeout: float | None = None,
        pattern: Callable[[ToolCall], str | None] | None = None,
    ) -> None:
        self._broker = broker
        self._rules = rules
        self._eligible = eligible
        self._timeout = timeout
        self._pattern = pattern

    async def __call__(self, call: ToolCall) -> Decision | None:
        flags = list(call.flags)
        if call.tainted:
            flags.append("tainted")
        decision = await self._broker.ask(
            kind="permission",
            prompt=f"Allow the tool {call.tool} to run with these arguments?",
            tool=call.tool,
            arguments=call.arguments,
            conversation=call.conversation,
            origin=call.origin,
            timeout=self._timeout,
            flags=flags,
            eligible=self._eligible,
        )
        if decision.value == "allow":
            return decision
        if decision.value != "always":
            return Decision(value="deny", by=decision.by, reason=decision.reason)
        reason = decision.reason
        if self._rules is not None:
            pattern = self._pattern(call) if self._pattern is not None else None
            rule = await self._rules.add(call.tool, pattern)
            log.info("recorded approval rule %s for %s (pattern %r)", rule.id, call.tool, pattern)
            reason = f"{reason}; always-rule {rule.id} recorded"
        return Decision(value="allow", by=decision.by, reason=reason)


class _Chain:
    def __init__(self, policies: tuple[ApprovalPolicy, ...]) -> None:
        self._policies = policies

    async def __call__(self, call: ToolCall) -> Decision | None:
        for policy in self._policies:
            decision = await policy(call)
            if decision is not None:
                return decision
        return Decision(value="deny", by=_SYSTEM, reason="no approval policy allowed this call")


def chain(*policies: ApprovalPolicy) -> ApprovalPolicy:
    """A policy asking ``policies`` in order: the first decision wins; if all defer, deny."""
    return _Chain(policies)
