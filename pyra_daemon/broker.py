"""The interaction broker: approvals and questions fanned out to every frontend allowed to answer.

A turn that needs the person (a risky tool call, a question, a choice) calls
:meth:`InteractionBroker.ask`. The broker gives the request a server-side random id, delivers it
to every subscribed :class:`Approver` the request is eligible for, and waits for the first valid
:meth:`InteractionBroker.answer`. Every other approver that received it is then told who decided
(:meth:`Approver.resolved`), and so is the winner. If nobody could answer, the request is denied
at once with a hint on how to connect an approver instead of silently timing out; expiry denies;
a cancelled turn withdraws its request. Every request and decision goes to the audit callable.

An answer is bound to the request id *and* to the approver it was delivered to: an answer for a
request that was never delivered to the sender, an answer after expiry, a second (racing or
replayed) answer, or an answer naming an option that was not offered raises
:class:`~pyra_client.errors.ApprovalRefused` with a precise reason. Resolved ids are remembered in
a bounded LRU so late answers get a precise refusal; after a restart every id is unknown, by
design: pending requests die with the process and are never replayed.

What this module deliberately does not do: no IPC, sockets or wire encoding (the server adapts a
connection to the :class:`Approver` protocol), no persistence (the audit callable does that), no
policy (``pyra_daemon.approval`` decides *whether* to ask), and no rendering beyond a safe
one-line :attr:`InteractionRequest.preview`. Frontends must show the full
:attr:`InteractionRequest.arguments` (long ones as a file or scrollable view), passed through
:func:`make_visible` with ``multiline=True``.

Timing: deadlines are computed from the injectable monotonic ``clock`` and expiry is checked
against it on every answer; the wait itself sleeps on anyio's clock for ``timeout`` seconds.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import anyio
import anyio.abc
import msgspec

from pyra_client.errors import ApprovalRefused, NotFound
from pyra_client.visible import make_visible, visible_pieces

__all__ = [
    "NO_APPROVER_REASON",
    "PERMISSION_OPTIONS",
    "Approver",
    "AuditRecord",
    "Decision",
    "Eligibility",
    "InteractionBroker",
    "InteractionKind",
    "InteractionRequest",
    "make_visible",
]

log = logging.getLogger(__name__)

InteractionKind = Literal["permission", "question", "choice"]

#: The options of a permission request: allow once, allow always (a remembered rule), deny.
PERMISSION_OPTIONS: tuple[str, ...] = ("allow", "always", "deny")

#: The reason of the immediate deny when no eligible approver is connected.
NO_APPROVER_REASON = (
    "no approver connected: run `pyra approvals watch` or configure an approver chat, "
    "then try again"
)

_SYSTEM = "system"
_DENY = "deny"
_PREVIEW_CHARS = 200


def _preview(text: str, limit: int = _PREVIEW_CHARS) -> str:
    """A one-line visible preview of at most ``limit`` characters, never cutting an escape."""
    pieces: list[str] = []
    length = 0
    for piece in visible_pieces(text):
        if length + len(piece) > limit - 1:
            pieces.append("…")
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


# --------------------------------------------------------------------------------- data and APIs


class InteractionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One question to the person, as every approver receives it.

    ``arguments`` is the full JSON text of the tool's arguments, never truncated; ``preview`` is
    a safe one-line summary of it (or of the prompt when there are no arguments). ``prompt`` and
    ``options`` have their control and bidi characters made visible by the broker.
    ``created_at``/``expires_at`` are wall-clock epoch seconds, for display only.
    """

    id: str
    kind: InteractionKind
    prompt: str
    tool: str | None = None
    arguments: str = ""
    preview: str = ""
    options: list[str] = msgspec.field(default_factory=list)
    conversation: str | None = None
    origin: str | None = None
    created_at: float = 0.0
    expires_at: float = 0.0
    flags: list[str] = msgspec.field(default_factory=list)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """How a request ended: ``value`` is ``allow``/``always``/``deny`` or the chosen answer.

    ``by`` is the approver's id, or ``"system"`` for decisions nobody typed (expiry, no approver
    connected, cancellation, a policy).
    """

    value: str
    by: str
    reason: str = ""

    @property
    def allowed(self) -> bool:
        """True for ``allow`` and ``always``."""
        return self.value in ("allow", "always")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the approvals audit: a request when raised, then its decision."""

    request_id: str
    event: Literal["requested", "decided"]
    kind: InteractionKind
    tool: str | None
    arguments: str
    conversation: str | None
    origin: str | None
    flags: list[str]
    decision: str | None
    by: str | None
    reason: str
    at: float


class Approver(Protocol):
    """A connected frontend that may answer requests (a CLI watcher, a bot's chat).

    ``id`` is stable per connection or chat (``cli:conn-7``, ``telegram:12345``) and is what an
    answer is bound to. ``deliver`` and ``resolved`` should only enqueue work (a notification on
    the connection, a message to send): the broker gives each call a short deadline, logs
    failures and carries on without it.
    """

    @property
    def id(self) -> str:
        """Stable id of this approver; answers are accepted from it only for its requests."""
        ...

    @property
    def kind(self) -> str:
        """The frontend kind (cli, telegram, matrix, signal, ...)."""
        ...

    async def deliver(self, request: InteractionRequest) -> None:
        """Show ``request`` to the person."""
        ...

    async def resolved(self, request_id: str, decision: Decision) -> None:
        """Tell the person that ``request_id`` was decided (by whom, and why)."""
        ...


Eligibility = Callable[[Approver], bool]
Audit = Callable[[AuditRecord], Awaitable[None]]
Outcome = Literal["answered", "expired", "withdrawn", "unasked"]


@dataclass(eq=False)
class _Pending:
    request: InteractionRequest
    deadline: float
    timeout: float
    eligible: Eligibility | None
    #: Ids of the approvers the request was delivered to (eligible at delivery time).
    asked: dict[str, None] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)
    decision: Decision | None = None
    #: The asking task's group while it accepts new deliveries (late subscribers).
    task_group: anyio.abc.TaskGroup | None = None


@dataclass(frozen=True)
class _Closed:
    decision: Decision
    outcome: Outcome
    asked: frozenset[str]


def _default_id() -> str:
    return secrets.token_urlsafe(12)


# ----------------------------------------------------------------------------------- the broker


class InteractionBroker:
    """Fans requests out to approvers and takes the first valid answer (see the module doc).

    Seams for tests: ``clock`` (monotonic seconds, for deadlines and expiry), ``wall`` (epoch
    seconds, for display and audit), ``id_factory``. ``deliver_timeout`` bounds every call into
    an approver; ``remember`` bounds the memory of resolved ids.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = _default_id,
        default_timeout: float = 120.0,
        deliver_timeout: float = 5.0,
        remember: int = 1000,
        audit: Audit | None = None,
    ) -> None:
        if default_timeout <= 0 or deliver_timeout <= 0 or remember < 1:
            raise ValueError("timeouts must be positive and remember at least 1")
        self._clock = clock
        self._wall = wall
        self._id_factory = id_factory
        self._default_timeout = default_timeout
        self._deliver_timeout = deliver_timeout
        self._remember = remember
        self._audit = audit
        self._approvers: dict[str, Approver] = {}
        self._pending: dict[str, _Pending] = {}
        self._closed: OrderedDict[str, _Closed] = OrderedDict()

    # ------------------------------------------------------------------------- approvers

    def subscribe(self, approver: Approver) -> None:
        """Register ``approver`` (replacing one with the same id) and deliver what it may answer.

        The approver counts as asked for each pending request it is eligible for as soon as this
        returns, so a one-shot client may subscribe and answer at once.
        """
        self._approvers[approver.id] = approver
        for entry in self._pending.values():
            if not self._is_eligible(entry.eligible, approver):
                continue
            entry.asked[approver.id] = None
            if entry.task_group is not None:
                entry.task_group.start_soon(self._deliver, approver, entry.request)

    def unsubscribe(self, approver_id: str) -> None:
        """Forget the approver (idempotent). Its pending requests keep waiting for others.

        Its id stays among the asked ones, so a chat that reconnects under the same stable id
        may still answer what it was shown.
        """
        self._approvers.pop(approver_id, None)

    def approvers(self) -> list[Approver]:
        """The subscribed approvers, in subscription order."""
        return list(self._approvers.values())

    # ---------------------------------------------------------------------------- asking

    async def ask(
        self,
        *,
        kind: InteractionKind,
        prompt: str,
        tool: str | None = None,
        arguments: str = "",
        conversation: str | None = None,
        origin: str | None = None,
        options: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the expiry the person sees
        flags: Iterable[str] = (),
        eligible: Eligibility | None = None,
    ) -> Decision:
        """Ask the person; return the first valid answer, or a deny by ``"system"``.

        Denies at once with :data:`NO_APPROVER_REASON` when no eligible approver is subscribed,
        and with ``"expired after Ns"`` when nobody answers in time. If the calling task is
        cancelled, the request is withdrawn (approvers are told, shielded) and the cancellation
        propagates.
        """
        timeout = self._default_timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        offered = self._options(kind, options)
        now = self._wall()
        request = InteractionRequest(
            id=self._new_id(),
            kind=kind,
            prompt=make_visible(prompt, multiline=True),
            tool=tool,
            arguments=arguments,
            preview=_preview(arguments or prompt),
            options=offered,
            conversation=conversation,
            origin=origin,
            created_at=now,
            expires_at=now + timeout,
            flags=list(dict.fromkeys(flags)),
        )
        entry = _Pending(
            request=request,
            deadline=self._clock() + timeout,
            timeout=timeout,
            eligible=eligible,
        )
        await self._record(request, None)
        # Chosen after the audit await, so nobody subscribing meanwhile is missed.
        targets = [a for a in self._approvers.values() if self._is_eligible(eligible, a)]
        if not targets:
            decision = Decision(value=_DENY, by=_SYSTEM, reason=NO_APPROVER_REASON)
            entry.decision = decision
            self._remember_closed(request.id, _Closed(decision, "unasked", frozenset()))
            log.warning("request %s (%s) denied: no approver connected", request.id, tool or kind)
            await self._record(request, decision)
            return decision

        try:
            async with anyio.create_task_group() as task_group:
                entry.task_group = task_group
                try:
                    self._pending[request.id] = entry
                    for approver in targets:
                        entry.asked[approver.id] = None
                        task_group.start_soon(self._deliver, approver, request)
                    with anyio.move_on_after(timeout):
                        await entry.done.wait()
                    if entry.decision is None:
                        self._finish(
                            entry,
                            Decision(value=_DENY, by=_SYSTEM, reason=_expired_reason(timeout)),
                            "expired",
                        )
                    # Deliveries still in flight are moot now; `resolved` follows below.
                    task_group.cancel_scope.cancel()
                finally:
                    entry.task_group = None
        finally:
            if entry.decision is None:
                # Only a cancelled (or crashed) asker gets here without a decision.
                self._finish(
                    entry, Decision(value=_DENY, by=_SYSTEM, reason="cancelled"), "withdrawn"
                )
            await self._announce(entry)
        assert entry.decision is not None
        return entry.decision

    # ---------------------------------------------------------------------------- answering

    def answer(self, request_id: str, value: str, *, approver_id: str) -> Decision:
        """Record ``approver_id``'s answer to ``request_id``; the first valid answer wins.

        Raises :class:`~pyra_client.errors.ApprovalRefused` (``reason`` in its data) for an
        ``unknown request``, a request ``not asked to this approver``, one ``already answered``
        (``by`` in the data), ``expired``, ``withdrawn``, or an ``invalid choice``.
        """
        entry = self._pending.get(request_id)
        if entry is None:
            raise self._closed_refusal(request_id, approver_id)
        if approver_id not in entry.asked:
            raise _refused("not asked to this approver", request_id)
        if self._clock() >= entry.deadline:
            self._finish(
                entry,
                Decision(value=_DENY, by=_SYSTEM, reason=_expired_reason(entry.timeout)),
                "expired",
            )
            raise _refused("expired", request_id)
        request = entry.request
        if request.kind == "question":
            if not value.strip():
                raise _refused("invalid choice", request_id, message="invalid choice: empty answer")
        elif value not in request.options:
            raise _refused(
                "invalid choice",
                request_id,
                message=f"invalid choice {value!r}: expected one of {', '.join(request.options)}",
            )
        decision = Decision(value=value, by=approver_id, reason=f"answered by {approver_id}")
        self._finish(entry, decision, "answered")
        return decision

    def deny_pending(self, reason: str) -> int:
        """Withdraw every pending request with a deny (daemon shutdown); return how many."""
        entries = list(self._pending.values())
        for entry in entries:
            self._finish(entry, Decision(value=_DENY, by=_SYSTEM, reason=reason), "withdrawn")
        return len(entries)

    # ---------------------------------------------------------------------------- looking

    def pending(self, approver_id: str | None = None) -> list[InteractionRequest]:
        """Pending requests, oldest first; only those delivered to ``approver_id`` if given."""
        return [
            entry.request
            for entry in self._pending.values()
            if approver_id is None or approver_id in entry.asked
        ]

    def get(self, request_id: str) -> InteractionRequest:
        """The pending request ``request_id``; :class:`~pyra_client.errors.NotFound` otherwise."""
        entry = self._pending.get(request_id)
        if entry is None:
            raise NotFound(f"no pending request {request_id}", request_id=request_id)
        return entry.request

    # ---------------------------------------------------------------------------- internals

    def _options(self, kind: InteractionKind, options: Sequence[str] | None) -> list[str]:
        if kind == "permission":
            offered = list(options) if options else list(PERMISSION_OPTIONS)
            unknown = [o for o in offered if o not in PERMISSION_OPTIONS]
            if unknown:
                raise ValueError(f"permission options must be among {PERMISSION_OPTIONS}")
            return offered
        offered = list(dict.fromkeys(make_visible(o) for o in options or ()))
        if kind == "choice" and not offered:
            raise ValueError("a choice needs options")
        return offered

    def _new_id(self) -> str:
        for _ in range(8):
            request_id = self._id_factory()
            if request_id not in self._pending and request_id not in self._closed:
                return request_id
        raise RuntimeError("the id factory keeps returning ids already in use")

    @staticmethod
    def _is_eligible(eligible: Eligibility | None, approver: Approver) -> bool:
        if eligible is None:
            return True
        try:
            return eligible(approver)
        except Exception:
            log.exception("eligibility check failed for approver %s; skipping it", approver.id)
            return False

    def _finish(self, entry: _Pending, decision: Decision, outcome: Outcome) -> None:
        """Close ``entry`` synchronously, so a racing answer already sees it closed."""
        entry.decision = decision
        self._pending.pop(entry.request.id, None)
        self._remember_closed(entry.request.id, _Closed(decision, outcome, frozenset(entry.asked)))
        entry.done.set()

    def _remember_closed(self, request_id: str, closed: _Closed) -> None:
        self._closed[request_id] = closed
        self._closed.move_to_end(request_id)
        while len(self._closed) > self._remember:
            self._closed.popitem(last=False)

    def _closed_refusal(self, request_id: str, approver_id: str) -> ApprovalRefused:
        closed = self._closed.get(request_id)
        if closed is None:
            return _refused("unknown request", request_id)
        if approver_id not in closed.asked:
            return _refused("not asked to this approver", request_id)
        if closed.outcome == "answered":
            by = closed.decision.by
            return _refused(
                "already answered", request_id, message=f"already answered by {by}", by=by
            )
        if closed.outcome == "expired":
            return _refused("expired", request_id)
        return _refused("withdrawn", request_id, message=f"withdrawn ({closed.decision.reason})")

    async def _deliver(self, approver: Approver, request: InteractionRequest) -> None:
        with anyio.move_on_after(self._deliver_timeout) as scope:
            try:
                await approver.deliver(request)
            except Exception:
                log.exception("approver %s failed to take request %s", approver.id, request.id)
        if scope.cancelled_caught:
            log.warning(
                "approver %s did not take request %s within %gs",
                approver.id,
                request.id,
                self._deliver_timeout,
            )

    async def _tell(self, approver: Approver, request_id: str, decision: Decision) -> None:
        try:
            await approver.resolved(request_id, decision)
        except Exception:
            log.exception("approver %s failed to take the decision on %s", approver.id, request_id)

    async def _announce(self, entry: _Pending) -> None:
        """Tell every asked approver still connected how ``entry`` ended, and audit it."""
        decision = entry.decision
        assert decision is not None
        request_id = entry.request.id
        log.info(
            "request %s (%s) decided %s by %s: %s",
            request_id,
            entry.request.tool or entry.request.kind,
            decision.value,
            decision.by,
            decision.reason,
        )
        # Shielded: a cancelled turn must still tell the approvers its request is gone.
        with anyio.move_on_after(self._deliver_timeout, shield=True) as scope:
            async with anyio.create_task_group() as task_group:
                for approver_id in entry.asked:
                    approver = self._approvers.get(approver_id)
                    if approver is not None:
                        task_group.start_soon(self._tell, approver, request_id, decision)
                await self._record(entry.request, decision)
        if scope.cancelled_caught:
            log.warning(
                "telling approvers about %s took over %gs", request_id, self._deliver_timeout
            )

    async def _record(self, request: InteractionRequest, decision: Decision | None) -> None:
        if self._audit is None:
            return
        record = AuditRecord(
            request_id=request.id,
            event="requested" if decision is None else "decided",
            kind=request.kind,
            tool=request.tool,
            arguments=request.arguments,
            conversation=request.conversation,
            origin=request.origin,
            flags=list(request.flags),
            decision=None if decision is None else decision.value,
            by=None if decision is None else decision.by,
            reason="" if decision is None else decision.reason,
            at=self._wall(),
        )
        try:
            await self._audit(record)
        except Exception:
            # An audit failure is logged loudly but never turns into a hung or crashed turn.
            log.exception("could not audit request %s", request.id)


def _expired_reason(timeout: float) -> str:
    return f"expired after {timeout:g}s"


def _refused(
    reason: str, request_id: str, *, message: str | None = None, by: str | None = None
) -> ApprovalRefused:
    data: dict[str, str] = {"reason": reason, "request_id": request_id}
    if by is not None:
        data["by"] = by
    return ApprovalRefused(message or reason, **data)
