"""The turn engine: one prompt in, a streamed and persisted answer out.

For each ``ask`` it resolves the conversation, builds the context (system prompt, history
trimmed to the token budget, the new prompt), streams the model's answer, runs tool calls
through a :class:`Toolbox` for up to ``max_tool_rounds`` rounds (the calls of one round
concurrently, results in the model's order), and records the turn with its
usage and cost. Cancellation (Ctrl-C, a dropped client, shutdown) and provider errors end the
turn as ``cancelled`` or ``failed``, written in a shielded transaction so the conversation stays
consistent.

It does not know about sockets or frontends (``emit`` is a callback), nor how tools are
approved or executed (the :class:`Toolbox` decides).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
import msgspec

from pyra_client.errors import Busy, NotFound, PyraError
from pyra_client.protocol import AskParams, AskResult, Event, TextDelta, TurnUsage
from pyra_daemon.config import LLMConfig
from pyra_daemon.conversations import ConversationStore, HistoryTurn
from pyra_daemon.llm import LLM, ChatMessage, ToolCallRequest, ToolSpec

__all__ = ["Emit", "Engine", "ToolOutcome", "Toolbox", "TurnContext"]

log = logging.getLogger(__name__)

Emit = Callable[[Event], Awaitable[None]]


class TurnContext(msgspec.Struct):
    """What a tool call knows about the turn that made it."""

    conversation: str
    request: int | str
    origin: str
    emit: Emit


class ToolOutcome(msgspec.Struct):
    ok: bool
    content: str


class Toolbox(Protocol):
    """The tools offered to the model and the gate they run through.

    ``run`` never raises for a tool's own failure or a denial: it returns an outcome the model
    reads. It raises only for cancellation.
    """

    def specs(self) -> Sequence[ToolSpec]: ...

    async def run(self, call: ToolCallRequest, context: TurnContext) -> ToolOutcome: ...


class NoTools:
    def specs(self) -> Sequence[ToolSpec]:
        return ()

    async def run(self, call: ToolCallRequest, context: TurnContext) -> ToolOutcome:
        return ToolOutcome(ok=False, content=f"unknown tool {call.name!r}")


def _trim(
    system: ChatMessage,
    history: list[HistoryTurn],
    prompt: ChatMessage,
    budget: int,
    count: Callable[[Sequence[ChatMessage]], int],
) -> list[ChatMessage]:
    """Drop the oldest whole turns until the context fits *budget* tokens."""
    kept = list(history)
    while kept:
        messages = [system, *(m for turn in kept for m in turn.messages), prompt]
        if count(messages) <= budget:
            return messages
        kept.pop(0)
    return [system, prompt]


class Engine:
    def __init__(
        self,
        store: ConversationStore,
        llm: LLM,
        config: Callable[[], LLMConfig],
        *,
        toolbox: Toolbox | None = None,
        context: Callable[[str], Awaitable[str]] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        # Awaited before every turn: the daemon answers `status` before its tools are loaded.
        self._ready = ready
        self._llm = llm
        self._config = config
        self._toolbox: Toolbox = toolbox or NoTools()
        # Extra system-prompt text for a prompt (saved memory); "" adds nothing.
        self._context = context
        self._running: set[str] = set()
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def active_turns(self) -> int:
        return len(self._running)

    async def wait_idle(self) -> None:
        """Return once no turn is running."""
        await self._idle.wait()

    async def _conversation_for(self, params: AskParams, kind: str) -> str:
        if params.conversation:
            if await self._store.exists(params.conversation):
                return params.conversation
            # A frontend may name its own conversation (``telegram:<chat>``) before it exists.
            if params.conversation.startswith(f"{kind}:") and kind != "cli":
                return params.conversation
            raise NotFound(f"no conversation {params.conversation!r}", id=params.conversation)
        if params.continue_last:
            latest = await self._store.latest(kind)
            if latest is not None:
                return latest
        return f"{kind}:{uuid.uuid4()}"

    async def ask(
        self, params: AskParams, *, kind: str, request: int | str, origin: str, emit: Emit
    ) -> AskResult:
        if self._ready is not None:
            await self._ready()
        conversation = await self._conversation_for(params, kind)
        if conversation in self._running:
            raise Busy(f"conversation {conversation} already has a turn running", id=conversation)
        self._running.add(conversation)
        if self._idle.is_set():
            self._idle = anyio.Event()
        try:
            return await self._turn(
                conversation, params.prompt, kind=kind, request=request, origin=origin, emit=emit
            )
        finally:
            self._running.discard(conversation)
            if not self._running:
                self._idle.set()

    async def _turn(
        self,
        conversation: str,
        prompt: str,
        *,
        kind: str,
        request: int | str,
        origin: str,
        emit: Emit,
    ) -> AskResult:
        config = self._config()
        system_prompt = config.system_prompt
        if self._context is not None and (extra := await self._context(prompt)):
            system_prompt = f"{system_prompt}\n\n{extra}"
        system = ChatMessage(role="system", content=system_prompt)
        user = ChatMessage(role="user", content=prompt)
        history = await self._store.history(conversation)
        messages = _trim(system, history, user, config.history_tokens, self._llm.count_tokens)
        turn = await self._store.begin_turn(conversation, kind, prompt, config.model or "")
        usage = TurnUsage()
        parts: list[str] = []

        async def on_text(text: str) -> None:
            parts.append(text)
            await emit(TextDelta(request=request, text=text))

        context = TurnContext(conversation=conversation, request=request, origin=origin, emit=emit)
        status, error = "failed", None
        try:
            for _round in range(config.max_tool_rounds + 1):
                completion = await self._llm.complete(
                    messages, tools=self._toolbox.specs(), on_text=on_text
                )
                usage = _add(usage, completion.usage)
                if not completion.tool_calls or _round == config.max_tool_rounds:
                    break
                step = [
                    ChatMessage(
                        role="assistant",
                        content=completion.text or None,
                        tool_calls=completion.tool_calls,
                    )
                ]
                parts.clear()
                outcomes = await _run_calls(self._toolbox, completion.tool_calls, context)
                for call, outcome in zip(completion.tool_calls, outcomes, strict=True):
                    step.append(
                        ChatMessage(
                            role="tool",
                            content=outcome.content,
                            tool_call_id=call.id,
                            name=call.name,
                        )
                    )
                await self._store.add_messages(conversation, turn, step)
                messages = [*messages, *step]
            status = "complete"
            return AskResult(
                conversation=conversation,
                text="".join(parts),
                model=completion.model,
                usage=usage,
                turn=turn,
            )
        except anyio.get_cancelled_exc_class():
            status, error = "cancelled", "cancelled before the answer was complete"
            raise
        except PyraError as exc:
            error = exc.message
            raise
        except Exception as exc:
            error = f"internal error: {type(exc).__name__}"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._store.finish_turn(
                    conversation, turn, status=status, text="".join(parts), usage=usage, error=error
                )


async def _run_calls(
    toolbox: Toolbox, calls: Sequence[ToolCallRequest], context: TurnContext
) -> list[ToolOutcome]:
    """Run one round's calls concurrently (each is approved on its own); outcomes in order."""
    if len(calls) == 1:
        return [await toolbox.run(calls[0], context)]
    outcomes: list[ToolOutcome | None] = [None] * len(calls)

    async def run(index: int, call: ToolCallRequest) -> None:
        outcomes[index] = await toolbox.run(call, context)

    async with anyio.create_task_group() as task_group:
        for index, call in enumerate(calls):
            task_group.start_soon(run, index, call)
    return [outcome for outcome in outcomes if outcome is not None]


def _add(total: TurnUsage, more: TurnUsage) -> TurnUsage:
    cost = (
        None if total.cost is None and more.cost is None else (total.cost or 0) + (more.cost or 0)
    )
    return TurnUsage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        cost=cost,
    )
