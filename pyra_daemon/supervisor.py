"""Keep named background tasks alive: restart on crash with back-off, give up on crash loops.

A :class:`Supervisor` owns one anyio task group and runs each task registered with
:meth:`Supervisor.add` in it. The factory is called anew for every (re)start, so a task
always begins from a fresh coroutine.

- A task that **returns** is ``stopped`` (restarted only if ``policy.restart_on_exit``).
- A task that **raises** an :class:`Exception` is logged with its traceback and restarted
  after exponential back-off with full jitter (``random() * min(max_delay, base_delay *
  factor ** (n - 1))`` for the *n*-th consecutive failure). A run that lasted
  ``healthy_after`` seconds resets *n*.
- A **circuit breaker** gives up (``failed``) once more than ``max_failures`` failures fall
  within ``window`` seconds; only :meth:`Supervisor.restart` revives the task.
- Cancellation is a :class:`BaseException` and is never caught: cancelling the scope around
  the supervisor ends it promptly, and a task's ``BaseException`` (``KeyboardInterrupt``,
  ``SystemExit``) propagates out of the ``async with`` block instead of being retried.

Back-off is measured with the injected ``clock`` and waited with the injected ``sleep``, so
tests observe it without waiting. ``testing=True`` mirrors stamina's testing mode: zero
back-off, and every failure counts towards the breaker whatever the clock says, so a crash
loop ends after exactly ``max_failures + 1`` attempts.

What this module deliberately does not do: it does not import or discover plugins (the
plugin loader hands it factories), it does not know about IPC (``pyra status`` serialises
:meth:`Supervisor.status`, a list of msgspec Structs), and it does not watch for hung tasks
(a task that stops making progress must notice that itself, or raise so it is restarted).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import anyio
import anyio.lowlevel
import msgspec

from pyra_client.errors import NotFound, ShuttingDown

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "TaskFactory",
    "TaskInfo",
    "TaskState",
]

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]
"""Makes one run of a task; called again for every restart."""

_MAX_ERROR_CHARS = 200


class TaskState(enum.StrEnum):
    """Where a supervised task is in its life."""

    STARTING = "starting"
    """Scheduled but not running yet (also: added before the supervisor was entered)."""
    RUNNING = "running"
    BACKOFF = "backoff"
    """Crashed (or exited with ``restart_on_exit``); waiting before the next start."""
    STOPPED = "stopped"
    """Returned normally, or stopped by :meth:`Supervisor.stop` or by shutdown."""
    FAILED = "failed"
    """The circuit breaker tripped; no more restarts until :meth:`Supervisor.restart`."""


_ACTIVE = frozenset({TaskState.STARTING, TaskState.RUNNING, TaskState.BACKOFF})


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a task is restarted; a Struct so that config can carry one (``msgspec.convert``)."""

    base_delay: float = 1.0
    """Back-off ceiling after the first consecutive failure, in seconds."""
    max_delay: float = 60.0
    """The back-off ceiling never exceeds this."""
    factor: float = 2.0
    """Each further consecutive failure multiplies the ceiling by this."""
    jitter: bool = True
    """Full jitter: wait ``random() * ceiling`` so restarting tasks do not stampede."""
    healthy_after: float = 60.0
    """A run this long resets the consecutive-failure count (and so the back-off)."""
    max_failures: int = 5
    """Give up once *more* than this many failures fall within ``window``."""
    window: float = 300.0
    """The circuit breaker's sliding window, in seconds."""
    restart_on_exit: bool = False
    """Restart (with back-off, but no breaker) a task that returns normally."""

    def __post_init__(self) -> None:
        checks = {
            "base_delay must be >= 0": self.base_delay >= 0,
            "max_delay must be >= base_delay": self.max_delay >= self.base_delay,
            "factor must be >= 1": self.factor >= 1,
            "healthy_after must be >= 0": self.healthy_after >= 0,
            "max_failures must be >= 0": self.max_failures >= 0,
            "window must be > 0": self.window > 0,
        }
        for message, ok in checks.items():
            # `not ok` is also true for NaN, which would otherwise slip through every bound.
            if not ok:
                raise ValueError(message)

    def delay(self, failures: int, random: Callable[[], float] = _random.random) -> float:
        """Return the back-off before the restart that follows ``failures`` in a row (>= 1)."""
        try:
            ceiling = self.base_delay * self.factor ** max(failures - 1, 0)
        except OverflowError:
            ceiling = math.inf
        ceiling = min(ceiling, self.max_delay)
        return random() * ceiling if self.jitter else ceiling


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one task for ``pyra status``. Times are in the supervisor's clock."""

    name: str
    state: TaskState
    restarts: int
    """Starts after the first one, whatever caused them (crash, exit, :meth:`restart`)."""
    last_error: str | None = None
    """``"ExcType: message"`` of the latest crash, on one line, at most 200 characters."""
    next_restart_in: float | None = None
    """Seconds until the next start while in ``backoff``; otherwise ``None``."""
    started_at: float | None = None
    """Clock reading (monotonic by default) at the latest start; ``None`` if never started."""
    uptime: float | None = None
    """Seconds the current run has lasted while ``running``; otherwise ``None``."""


@dataclass(eq=False)
class _Run:
    """One spawned supervision loop of a task; replaced on :meth:`Supervisor.restart`."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class _Task:
    name: str
    factory: TaskFactory
    policy: RestartPolicy
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    state: TaskState = TaskState.STARTING
    restarts: int = 0
    last_error: str | None = None
    started_at: float | None = None
    next_restart_at: float | None = None
    streak: int = 0
    """Consecutive runs that ended (crashed, or exited) before ``healthy_after``."""
    failures: collections.deque[float] = field(default_factory=collections.deque)
    """Times of the failures still inside the breaker's window (at most max_failures + 1)."""
    run: _Run | None = None


def _describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return text


class Supervisor:
    """Run named background tasks, restarting them on crash (see the module docstring).

    Use as ``async with Supervisor() as sup:``; leaving the block cancels every task and
    waits for it (shielded, so this also holds when the block itself is being cancelled).
    Tasks may be added before entering; they start on entry. A task must not stop or
    restart itself: it returns or raises instead.
    """

    def __init__(
        self,
        *,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        random: Callable[[], float] = _random.random,
        testing: bool = False,
    ) -> None:
        self._policy = policy if policy is not None else RestartPolicy()
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._testing = testing
        self._tasks: dict[str, _Task] = {}
        self._tg: TaskGroup | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise RuntimeError("a Supervisor can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        for task in self._tasks.values():
            if task.state is TaskState.STARTING:
                self._spawn(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None, "not entered"
        self._closed = True
        # Shielded: the block may be exiting *because* it was cancelled, and the tasks'
        # cancellation must still be awaited before the task group can be left.
        with anyio.CancelScope(shield=True):
            for task in list(self._tasks.values()):
                await self._halt(task)
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    def add(self, name: str, factory: TaskFactory, *, policy: RestartPolicy | None = None) -> None:
        """Register ``factory`` as task ``name`` and start it (now, or when entered).

        Raises :class:`ValueError` if the name is taken and
        :class:`~pyra_client.errors.ShuttingDown` once the supervisor has been left.
        """
        self._check_open()
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        task = _Task(name, factory, policy if policy is not None else self._policy)
        self._tasks[name] = task
        if self._tg is not None:
            self._spawn(task)

    async def stop(self, name: str) -> None:
        """Cancel task ``name`` and wait for it to end; it stays listed (``stopped``).

        A ``failed`` task stays ``failed``. Raises :class:`~pyra_client.errors.NotFound`.
        """
        task = self._get(name)
        async with task.lock:
            await self._halt(task)
            if task.state is TaskState.STARTING:  # added, never spawned
                task.state = TaskState.STOPPED

    async def remove(self, name: str) -> None:
        """Cancel task ``name``, wait for it to end and forget it."""
        task = self._get(name)
        async with task.lock:
            await self._halt(task)
            if self._tasks.get(name) is task:
                del self._tasks[name]

    async def restart(self, name: str) -> None:
        """Reset the back-off and the circuit breaker of task ``name`` and start it afresh.

        A running or backing-off task is cancelled first; a ``failed`` or ``stopped`` one is
        revived. Raises :class:`~pyra_client.errors.NotFound` and
        :class:`~pyra_client.errors.ShuttingDown`.
        """
        task = self._get(name)
        self._check_open()
        async with task.lock:
            await self._halt(task)
            self._check_open()
            task.streak = 0
            task.failures.clear()
            if task.started_at is not None:
                task.restarts += 1
            task.state = TaskState.STARTING
            if self._tg is not None:
                self._spawn(task)

    def info(self, name: str) -> TaskInfo:
        """Return a snapshot of task ``name``; raises :class:`~pyra_client.errors.NotFound`."""
        task = self._get(name)
        now = self._clock()
        next_in = None
        if task.state is TaskState.BACKOFF and task.next_restart_at is not None:
            next_in = max(task.next_restart_at - now, 0.0)
        uptime = None
        if task.state is TaskState.RUNNING and task.started_at is not None:
            uptime = max(now - task.started_at, 0.0)
        return TaskInfo(
            name=task.name,
            state=task.state,
            restarts=task.restarts,
            last_error=task.last_error,
            next_restart_in=next_in,
            started_at=task.started_at,
            uptime=uptime,
        )

    def status(self) -> list[TaskInfo]:
        """Return a snapshot of every task, in the order they were added."""
        return [self.info(name) for name in self._tasks]

    # -- internals ---------------------------------------------------------------------------

    def _get(self, name: str) -> _Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise NotFound(f"no supervised task named {name!r}", task=name) from None

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("the supervisor has shut down")

    def _spawn(self, task: _Task) -> None:
        assert self._tg is not None
        task.state = TaskState.STARTING
        task.run = _Run()
        self._tg.start_soon(self._supervise, task, task.run, name=f"supervisor:{task.name}")

    async def _halt(self, task: _Task) -> None:
        """Cancel the task's supervision loop, if any, and wait until it has ended."""
        run, task.run = task.run, None
        if run is not None:
            run.scope.cancel()
            await run.done.wait()

    async def _supervise(self, task: _Task, run: _Run) -> None:
        try:
            with run.scope:
                # A task stopped before its loop got to run must not start at all.
                await anyio.lowlevel.checkpoint()
                while (delay := await self._run_once(task)) is not None:
                    task.state = TaskState.BACKOFF
                    task.next_restart_at = self._clock() + delay
                    await self._sleep(delay)
                    task.restarts += 1
        finally:
            task.next_restart_at = None
            if task.state in _ACTIVE:  # cancelled by stop(), restart() or shutdown
                task.state = TaskState.STOPPED
            run.done.set()

    async def _run_once(self, task: _Task) -> float | None:
        """Run the task once; return the back-off before the next run, or ``None`` to end."""
        task.state = TaskState.RUNNING
        task.started_at = self._clock()
        task.next_restart_at = None
        log.debug("Task %r started", task.name)
        try:
            await task.factory()
        except Exception as exc:
            delay = self._failed(task, exc)
            if delay is None:
                log.exception(
                    "Task %r failed %d times within %g s; giving up until it is restarted",
                    task.name,
                    len(task.failures),
                    task.policy.window,
                )
            else:
                log.exception("Task %r crashed; restarting in %.2f s", task.name, delay)
            return delay
        if not task.policy.restart_on_exit:
            task.state = TaskState.STOPPED
            log.info("Task %r finished", task.name)
            return None
        delay = self._backoff(task)
        log.info("Task %r exited; restarting in %.2f s", task.name, delay)
        return delay

    def _failed(self, task: _Task, exc: Exception) -> float | None:
        """Record a crash; return the back-off, or ``None`` if the breaker tripped."""
        task.last_error = _describe(exc)
        now = self._clock()
        if not self._testing:
            while task.failures and task.failures[0] < now - task.policy.window:
                task.failures.popleft()
        task.failures.append(now)
        if len(task.failures) > task.policy.max_failures:
            task.state = TaskState.FAILED
            return None
        return self._backoff(task)

    def _backoff(self, task: _Task) -> float:
        """Count an unhealthy end of a run and return the delay before the next one."""
        assert task.started_at is not None
        if self._clock() - task.started_at >= task.policy.healthy_after:
            task.streak = 0
        task.streak += 1
        if self._testing:
            return 0.0
        return task.policy.delay(task.streak, self._random)
