"""Approvals over IPC: connections as approvers, and the ``interactions.*``/``approvals.*`` methods.

A connection becomes an :class:`~pyra_daemon.broker.Approver` in one of two ways:

* ``interactions.subscribe``: a *watcher* (``pyra approvals watch``, a bot, a script). It is
  sent ``interaction.request`` for every request, from any conversation, and
  ``interaction.resolved`` when one it was sent is decided (by whom, and why).
* ``ask`` with ``approve: true``: an *inline* approver for its own turns only (``pyra ask`` on a
  terminal). Its eligibility is bound to the request's origin, which the daemon sets to the
  asking connection's id, never to anything a client or a tool argument says.

Either way answers come back as ``interactions.answer {id, decision}`` and are bound by the
broker to the approver the request was delivered to: an answer from a connection that was not
asked, a late, replayed or racing answer is refused with
:class:`~pyra_client.errors.ApprovalRefused` naming the reason. A one-shot script subscribes and
answers on the same connection (``pyra approvals answer`` does). When a connection goes away
its approver is dropped (:meth:`Interactions.session_ended`, the server's ``on_session_end``).

Also here: ``interactions.list`` (pending requests), ``approvals.rules.list|add|remove`` (the
persisted always-rules) and ``tools.list``.

What this module deliberately does not do: decide or time out requests (the broker does), run
tools (:mod:`pyra_daemon.tools`), or render anything (frontends do; the client's
``pyra_client.approve`` renders for the CLI).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from pyra_client.protocol import (
    ApprovalRule,
    ApprovalRuleAddParams,
    ApprovalRuleIdParams,
    ApprovalRuleListResult,
    Empty,
    Interaction,
    InteractionAnswerParams,
    InteractionAnswerResult,
    InteractionListResult,
    InteractionResolved,
    InteractionSubscribeParams,
    InteractionSubscribeResult,
    OkResult,
    ToolListResult,
)
from pyra_daemon.approval import Rule, RuleStore, ToolCall
from pyra_daemon.broker import (
    Approver,
    Decision,
    Eligibility,
    InteractionBroker,
    InteractionRequest,
)
from pyra_daemon.server import Call, Method, MethodTable, Session
from pyra_daemon.tools import ToolRegistry

__all__ = ["REQUEST_NOTIFICATION", "RESOLVED_NOTIFICATION", "Interactions", "SessionApprover"]

log = logging.getLogger(__name__)

REQUEST_NOTIFICATION = "interaction.request"
RESOLVED_NOTIFICATION = "interaction.resolved"


def _view(request: InteractionRequest) -> Interaction:
    return Interaction(
        id=request.id,
        kind=request.kind,
        prompt=request.prompt,
        tool=request.tool,
        arguments=request.arguments,
        preview=request.preview,
        options=list(request.options),
        conversation=request.conversation,
        origin=request.origin,
        created_at=request.created_at,
        expires_at=request.expires_at,
        flags=list(request.flags),
    )


def _rule_view(rule: Rule) -> ApprovalRule:
    return ApprovalRule(
        id=rule.id, tool=rule.tool, pattern=rule.pattern, created_at=rule.created_at
    )


class SessionApprover:
    """A connection as an approver; ``only_origin`` limits it to the turns it started."""

    def __init__(
        self,
        session: Session,
        *,
        only_origin: str | None = None,
        only_conversations: str | None = None,
    ) -> None:
        self._session = session
        self.only_origin = only_origin
        #: A conversation id prefix (``telegram:``): requests from other conversations skip it.
        self.only_conversations = only_conversations

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def kind(self) -> str:
        return self._session.client or "cli"

    async def deliver(self, request: InteractionRequest) -> None:
        await self._session.notify(REQUEST_NOTIFICATION, _view(request))

    async def resolved(self, request_id: str, decision: Decision) -> None:
        await self._session.notify(
            RESOLVED_NOTIFICATION,
            InteractionResolved(
                id=request_id, decision=decision.value, by=decision.by, reason=decision.reason
            ),
        )


def eligible_for(call: ToolCall) -> Eligibility:
    """Who may answer ``call``'s request: every approver but inline ones of other turns."""
    origin = call.origin

    def eligible(approver: Approver) -> bool:
        if not isinstance(approver, SessionApprover):
            return True
        if approver.only_origin is not None:
            return approver.only_origin == origin
        if approver.only_conversations is not None:
            return (call.conversation or "").startswith(approver.only_conversations)
        return True

    return eligible


class Interactions:
    """Connections as approvers, and the RPC methods of approvals (see the module doc)."""

    def __init__(
        self,
        broker: InteractionBroker,
        tools: ToolRegistry,
        *,
        rules: Callable[[], RuleStore] | None = None,
    ) -> None:
        self._broker = broker
        self._tools = tools
        self._rules = rules or (lambda: tools.rules)
        #: Sessions subscribed as watchers.
        self._watchers: set[str] = set()
        #: Sessions with inline asks running: how many.
        self._asking: dict[str, int] = {}

    @property
    def broker(self) -> InteractionBroker:
        return self._broker

    def subscribe(self, session: Session, *, own_only: bool = False) -> SessionApprover:
        prefix = f"{session.client}:" if own_only else None
        approver = SessionApprover(session, only_conversations=prefix)
        self._watchers.add(session.id)
        self._broker.subscribe(approver)
        log.info("%s subscribed as an approver", session.id)
        return approver

    def unsubscribe(self, session: Session) -> None:
        self._watchers.discard(session.id)
        self._broker.unsubscribe(session.id)
        if self._asking.get(session.id):
            self._broker.subscribe(SessionApprover(session, only_origin=session.id))

    @contextlib.asynccontextmanager
    async def asking(self, session: Session) -> AsyncIterator[None]:
        """While a turn runs: ``session`` answers the requests of the turns it started."""
        count = self._asking.get(session.id, 0)
        self._asking[session.id] = count + 1
        if count == 0 and session.id not in self._watchers:
            self._broker.subscribe(SessionApprover(session, only_origin=session.id))
        try:
            yield
        finally:
            left = self._asking.get(session.id, 1) - 1
            if left > 0:
                self._asking[session.id] = left
            else:
                self._asking.pop(session.id, None)
                if session.id not in self._watchers:
                    self._broker.unsubscribe(session.id)

    async def session_ended(self, session: Session) -> None:
        """The server's ``on_session_end``: the connection can no longer answer anything."""
        self._watchers.discard(session.id)
        self._asking.pop(session.id, None)
        self._broker.unsubscribe(session.id)

    # --- methods ---------------------------------------------------------------------------

    async def m_subscribe(
        self, call: Call, params: InteractionSubscribeParams
    ) -> InteractionSubscribeResult:
        self.subscribe(call.session, own_only=params.scope == "own")
        return InteractionSubscribeResult(
            approver=call.session.id, pending=len(self._broker.pending(call.session.id))
        )

    async def m_unsubscribe(self, call: Call, params: Empty) -> OkResult:
        self.unsubscribe(call.session)
        return OkResult()

    async def m_list(self, call: Call, params: Empty) -> InteractionListResult:
        return InteractionListResult(requests=[_view(r) for r in self._broker.pending()])

    async def m_answer(
        self, call: Call, params: InteractionAnswerParams
    ) -> InteractionAnswerResult:
        decision = self._broker.answer(params.id, params.decision, approver_id=call.session.id)
        return InteractionAnswerResult(id=params.id, decision=decision.value, by=decision.by)

    async def m_rules_list(self, call: Call, params: Empty) -> ApprovalRuleListResult:
        return ApprovalRuleListResult(rules=[_rule_view(r) for r in await self._rules().list()])

    async def m_rules_add(self, call: Call, params: ApprovalRuleAddParams) -> ApprovalRule:
        rule = await self._rules().add(params.tool, params.pattern or None)
        log.info("%s added approval rule %d", call.session.id, rule.id)
        return _rule_view(rule)

    async def m_rules_remove(self, call: Call, params: ApprovalRuleIdParams) -> OkResult:
        await self._rules().remove(params.id)
        log.info("%s revoked approval rule %d", call.session.id, params.id)
        return OkResult()

    async def m_tools_list(self, call: Call, params: Empty) -> ToolListResult:
        return ToolListResult(tools=self._tools.views())

    def methods(self) -> MethodTable:
        """The ``interactions.*``, ``approvals.rules.*`` and ``tools.list`` methods."""
        return {
            # Inline: quick and synchronous in the broker, and answering must not queue behind
            # a slow request of the same connection.
            "interactions.subscribe": Method(
                InteractionSubscribeParams, self.m_subscribe, inline=True
            ),
            "interactions.unsubscribe": Method(Empty, self.m_unsubscribe, inline=True),
            "interactions.list": Method(Empty, self.m_list, inline=True),
            "interactions.answer": Method(InteractionAnswerParams, self.m_answer, inline=True),
            "approvals.rules.list": Method(Empty, self.m_rules_list),
            "approvals.rules.add": Method(ApprovalRuleAddParams, self.m_rules_add),
            "approvals.rules.remove": Method(ApprovalRuleIdParams, self.m_rules_remove),
            "tools.list": Method(Empty, self.m_tools_list, inline=True),
        }
