"""Supervisor: restarts, back-off, circuit breaker, stop/remove, shutdown and cancellation.

Back-off is observed through a fake clock and a fake sleep that records each requested delay
and advances the clock by it, so crash loops run in milliseconds. One test uses the real
clock and ``anyio.sleep`` with tiny delays to prove the default path works.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import msgspec
import pytest

from pyra_client.errors import NotFound, ShuttingDown
from pyra_daemon.supervisor import RestartPolicy, Supervisor, TaskInfo, TaskState

pytestmark = pytest.mark.timeout(5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """Records every requested delay and advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()


Step = str | Callable[[], Awaitable[None]]


class Script:
    """A task factory that plays one step per run: "crash", "exit", "block", or a callable."""

    def __init__(self, *steps: Step, then: Step = "block") -> None:
        self.steps = list(steps)
        self.then = then
        self.runs = 0
        self.cancelled = 0
        self.started = anyio.Event()

    async def __call__(self) -> None:
        step = self.steps[self.runs] if self.runs < len(self.steps) else self.then
        self.runs += 1
        if callable(step):
            await step()
        elif step == "crash":
            raise ValueError(f"boom {self.runs}")
        elif step == "block":
            self.started.set()
            try:
                await anyio.sleep_forever()
            finally:
                self.cancelled += 1


def fake_supervisor(
    rand: Callable[[], float] = lambda: 1.0,
    *,
    policy: RestartPolicy | None = None,
    testing: bool = False,
) -> tuple[Supervisor, FakeClock, FakeSleep]:
    """A supervisor on a fake clock whose jitter is pinned to the ceiling unless told."""
    clock = FakeClock()
    sleep = FakeSleep(clock)
    sup = Supervisor(policy=policy, clock=clock, sleep=sleep, random=rand, testing=testing)
    return sup, clock, sleep


async def settle(sup: Supervisor, name: str, *states: TaskState) -> TaskInfo:
    """Let the event loop run until task ``name`` is in one of ``states``."""
    # Polling at checkpoints: the supervisor deliberately has no change notification.
    with anyio.fail_after(1):
        while (info := sup.info(name)).state not in states:
            await anyio.lowlevel.checkpoint()
    return info


async def test_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    policy = RestartPolicy(base_delay=1, factor=2, max_delay=10, max_failures=7, jitter=False)
    sup, _, sleep = fake_supervisor(policy=policy)
    async with sup:
        sup.add("loop", Script(then="crash"))
        await settle(sup, "loop", TaskState.FAILED)
    assert sleep.delays == [1, 2, 4, 8, 10, 10, 10]


async def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1234)
    policy = RestartPolicy(base_delay=1, factor=2, max_delay=16, max_failures=30, window=1e9)
    sup, _, sleep = fake_supervisor(rand=rng.random, policy=policy)
    async with sup:
        sup.add("loop", Script(then="crash"))
        await settle(sup, "loop", TaskState.FAILED)
    assert len(sleep.delays) == 30
    for n, delay in enumerate(sleep.delays):
        assert 0 <= delay <= min(16, 2**n)
    # Jitter actually spreads the delays (not all at the ceiling, not all zero).
    assert len(set(sleep.delays)) == 30
    assert max(sleep.delays[5:]) > 8


def test_policy_delay_formula_and_validation() -> None:
    policy = RestartPolicy(base_delay=0.5, factor=3, max_delay=10)
    assert policy.delay(1, lambda: 1.0) == 0.5
    assert policy.delay(3, lambda: 1.0) == 4.5
    assert policy.delay(3, lambda: 0.5) == 2.25
    assert policy.delay(10_000, lambda: 1.0) == 10  # no OverflowError for long streaks
    with pytest.raises(ValueError, match="factor"):
        RestartPolicy(factor=0.5)
    with pytest.raises(ValueError, match="base_delay"):
        RestartPolicy(base_delay=float("nan"))
    with pytest.raises(msgspec.ValidationError, match="window"):
        msgspec.convert({"window": 0}, RestartPolicy)
    assert msgspec.convert({"max_failures": 2}, RestartPolicy).max_failures == 2


async def test_breaker_trips_after_max_failures_within_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyra_daemon.supervisor")
    sup, _, sleep = fake_supervisor(policy=RestartPolicy(max_failures=3, window=300))
    script = Script(then="crash")
    async with sup:
        sup.add("bot", script)
        info = await settle(sup, "bot", TaskState.FAILED)
        await anyio.sleep(0.01)  # nothing more happens once it gave up
        assert script.runs == 4
    assert info.restarts == 3
    assert info.last_error == "ValueError: boom 4"
    assert info.next_restart_in is None
    assert len(sleep.delays) == 3
    crashes = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(crashes) == 4
    assert all(r.exc_info is not None for r in crashes)
    assert "giving up" in crashes[-1].getMessage()
    assert "'bot'" in crashes[-1].getMessage()


async def test_failures_spread_wider_than_the_window_never_trip_the_breaker() -> None:
    sup, clock, _ = fake_supervisor(
        policy=RestartPolicy(max_failures=1, window=5, healthy_after=1e9)
    )

    async def slow_crash() -> None:
        clock.advance(10)
        raise RuntimeError("late")

    script = Script(*[slow_crash] * 6)
    async with sup:
        sup.add("slow", script)
        await script.started.wait()
        info = sup.info("slow")
    assert info.state is TaskState.RUNNING
    assert info.restarts == 6
    assert info.last_error == "RuntimeError: late"


async def test_healthy_run_resets_the_back_off() -> None:
    sup, clock, sleep = fake_supervisor(
        policy=RestartPolicy(healthy_after=60, max_failures=100, window=1e9, jitter=False)
    )

    async def healthy_then_crash() -> None:
        clock.advance(61)
        raise RuntimeError("after a long run")

    script = Script("crash", "crash", "crash", healthy_then_crash, "crash")
    async with sup:
        sup.add("t", script)
        await script.started.wait()
    assert sleep.delays == [1, 2, 4, 1, 2]


async def test_normal_return_is_stopped_and_not_restarted() -> None:
    sup, _, sleep = fake_supervisor()
    script = Script("exit")
    async with sup:
        sup.add("once", script)
        info = await settle(sup, "once", TaskState.STOPPED)
        await anyio.sleep(0.01)
    assert script.runs == 1
    assert info.restarts == 0
    assert info.last_error is None
    assert sleep.delays == []


async def test_restart_on_exit_restarts_a_returning_task() -> None:
    sup, _, sleep = fake_supervisor(policy=RestartPolicy(restart_on_exit=True, jitter=False))
    script = Script("exit", "exit", "exit")
    async with sup:
        sup.add("poller", script)
        await script.started.wait()
        info = sup.info("poller")
    assert info.state is TaskState.RUNNING
    assert info.restarts == 3
    assert info.last_error is None
    assert sleep.delays == [1, 2, 4]


async def test_stop_cancels_a_running_task_and_keeps_it_listed() -> None:
    sup, _, _ = fake_supervisor()
    script = Script()
    async with sup:
        sup.add("t", script)
        await script.started.wait()
        await sup.stop("t")
        assert script.cancelled == 1
        assert sup.info("t").state is TaskState.STOPPED
        assert [i.name for i in sup.status()] == ["t"]


async def test_remove_cancels_and_forgets_the_task() -> None:
    sup, _, _ = fake_supervisor()
    script = Script()
    async with sup:
        sup.add("t", script)
        await script.started.wait()
        await sup.remove("t")
        assert script.cancelled == 1
        assert sup.status() == []
        with pytest.raises(NotFound):
            sup.info("t")
        with pytest.raises(NotFound):
            await sup.stop("t")
        sup.add("t", Script())  # the name is free again


async def test_stop_during_back_off_cancels_the_wait() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock, random=lambda: 1.0, policy=RestartPolicy(base_delay=30))
    script = Script("crash")
    async with sup:
        sup.add("t", script)
        info = await settle(sup, "t", TaskState.BACKOFF)
        assert info.next_restart_in == 30
        assert info.last_error == "ValueError: boom 1"
        clock.advance(12)
        assert sup.info("t").next_restart_in == 18
        with anyio.fail_after(0.5):
            await sup.stop("t")
        info = sup.info("t")
    assert info.state is TaskState.STOPPED
    assert info.next_restart_in is None
    assert script.runs == 1


async def test_leaving_the_context_cancels_everything_and_leaks_nothing() -> None:
    baseline = len(asyncio.all_tasks())
    blocked, other = Script(), Script()
    sup = Supervisor(random=lambda: 1.0, policy=RestartPolicy(base_delay=30))
    started = time.monotonic()
    async with sup:
        sup.add("blocked", blocked)
        sup.add("other", other)
        sup.add("backing-off", Script("crash"))
        await blocked.started.wait()
        await other.started.wait()
        await settle(sup, "backing-off", TaskState.BACKOFF)
    assert time.monotonic() - started < 0.5
    assert blocked.cancelled == other.cancelled == 1
    assert {i.state for i in sup.status()} == {TaskState.STOPPED}
    assert len(asyncio.all_tasks()) == baseline
    with pytest.raises(ShuttingDown):
        sup.add("late", Script())
    with pytest.raises(ShuttingDown):
        await sup.restart("other")


async def test_cancelling_the_outer_scope_ends_the_supervisor_promptly() -> None:
    script = Script()
    started = time.monotonic()
    with anyio.move_on_after(0.05) as scope:
        async with Supervisor(policy=RestartPolicy(base_delay=0.001, max_failures=1000)) as sup:
            sup.add("blocked", script)
            sup.add("crashy", Script(then="crash"))
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert time.monotonic() - started < 0.5
    assert script.cancelled == 1


class Fatal(BaseException):
    """Stands in for KeyboardInterrupt/SystemExit, which asyncio treats specially."""


async def test_base_exception_from_a_task_is_not_swallowed() -> None:
    survivor = Script()

    async def fatal() -> None:
        raise Fatal

    fatal_script = Script(fatal)
    with pytest.raises(BaseExceptionGroup) as caught:  # noqa: PT012 - the block is the test
        async with Supervisor(testing=True) as sup:
            sup.add("survivor", survivor)
            await survivor.started.wait()
            sup.add("fatal", fatal_script)
            await anyio.sleep_forever()
    assert caught.group_contains(Fatal)
    assert fatal_script.runs == 1  # not retried
    assert survivor.cancelled == 1


async def test_testing_mode_has_zero_back_off_and_ignores_the_window() -> None:
    sup, clock, sleep = fake_supervisor(testing=True, policy=RestartPolicy(max_failures=4))

    async def slow_crash() -> None:
        clock.advance(1000)  # far outside the window: would never trip without testing mode
        raise RuntimeError("x")

    script = Script(then=slow_crash)
    async with sup:
        sup.add("t", script)
        info = await settle(sup, "t", TaskState.FAILED)
    assert sleep.delays == [0, 0, 0, 0]
    assert script.runs == 5
    assert info.restarts == 4


async def test_testing_mode_with_the_real_sleep_is_instant() -> None:
    started = time.monotonic()
    async with Supervisor(testing=True, policy=RestartPolicy(base_delay=60)) as sup:
        sup.add("t", Script(then="crash"))
        info = await settle(sup, "t", TaskState.FAILED)
    assert info.restarts == 5
    assert time.monotonic() - started < 0.5


async def test_restart_revives_a_failed_task_with_a_fresh_breaker() -> None:
    sup, _, _ = fake_supervisor(policy=RestartPolicy(max_failures=2))
    script = Script(then="crash")
    async with sup:
        sup.add("t", script)
        assert (await settle(sup, "t", TaskState.FAILED)).restarts == 2
        await sup.restart("t")
        assert sup.info("t").state is TaskState.STARTING
        info = await settle(sup, "t", TaskState.FAILED)
    # Three more runs: the breaker was reset, not just re-armed for one attempt.
    assert script.runs == 6
    assert info.restarts == 5


async def test_restart_of_a_running_task_starts_a_fresh_run() -> None:
    sup, _, _ = fake_supervisor()
    script = Script()
    async with sup:
        sup.add("t", script)
        await script.started.wait()
        script.started = anyio.Event()
        await sup.restart("t")
        await script.started.wait()
        info = sup.info("t")
    assert script.runs == 2
    assert script.cancelled == 2  # the first run by restart(), the second by shutdown
    assert info.restarts == 1


async def test_one_crashing_task_never_affects_another() -> None:
    sup, _, _ = fake_supervisor(policy=RestartPolicy(max_failures=3))
    steady, crashy = Script(), Script(then="crash")
    async with sup:
        sup.add("steady", steady)
        sup.add("crashy", crashy)
        await settle(sup, "crashy", TaskState.FAILED)
        steady_info = sup.info("steady")
        await sup.stop("crashy")
        assert sup.info("steady").state is TaskState.RUNNING
    assert steady_info.state is TaskState.RUNNING
    assert steady_info.restarts == 0
    assert steady_info.last_error is None
    assert steady.runs == 1


async def test_tasks_added_before_entering_start_on_entry() -> None:
    sup, _, _ = fake_supervisor()
    script = Script()
    sup.add("early", script)
    assert sup.info("early").state is TaskState.STARTING
    async with sup:
        await script.started.wait()
        assert sup.info("early").state is TaskState.RUNNING
        with pytest.raises(ValueError, match="already supervised"):
            sup.add("early", Script())


async def test_each_start_calls_the_factory_anew() -> None:
    made: list[object] = []

    def factory() -> Awaitable[None]:
        coro = Script("crash")()
        made.append(coro)
        return coro

    sup, _, _ = fake_supervisor(policy=RestartPolicy(max_failures=2))
    async with sup:
        sup.add("t", factory)
        await settle(sup, "t", TaskState.FAILED)
    assert len(made) == 3
    assert len({id(c) for c in made}) == 3


async def test_status_is_serialisable_and_errors_are_one_short_line() -> None:
    sup, clock, _ = fake_supervisor(policy=RestartPolicy(max_failures=0))

    async def noisy() -> None:
        raise RuntimeError("first line\nsecond line " + "x" * 500)

    async with sup:
        sup.add("noisy", noisy)
        sup.add("quiet", Script())
        await settle(sup, "noisy", TaskState.FAILED)
        clock.advance(7)
        status = sup.status()
    noisy_info, quiet = status
    assert noisy_info.last_error is not None
    assert noisy_info.last_error.startswith("RuntimeError: first line second line xxx")
    assert len(noisy_info.last_error) == 200
    assert "\n" not in noisy_info.last_error
    assert quiet.uptime == 7
    assert quiet.started_at == 1000
    wire = msgspec.json.encode(status)
    assert b'"state":"failed"' in wire
    assert msgspec.json.decode(wire, type=list[TaskInfo]) == status


async def test_real_sleep_and_clock_back_off_for_real() -> None:
    policy = RestartPolicy(base_delay=0.01, max_delay=0.04, jitter=False, max_failures=4)
    script = Script(then="crash")
    started = time.monotonic()
    async with Supervisor(policy=policy) as sup:
        sup.add("t", script)
        info = await settle(sup, "t", TaskState.FAILED)
    elapsed = time.monotonic() - started
    assert info.restarts == 4
    assert script.runs == 5
    assert 0.1 <= elapsed < 1  # 0.01 + 0.02 + 0.04 + 0.04 of real back-off
