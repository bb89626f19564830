"""The virtual clock: timers in time order, cancellation, chained timers, and the caller's settle."""

from __future__ import annotations

import asyncio

import pytest

from kubeharness.clock import NS_PER_SECOND, VirtualClock

T0 = 1_767_225_600 * NS_PER_SECOND  # the virtual clock's default start, 2026-01-01T00:00:00Z
S = NS_PER_SECOND


async def test_clock_fires_timers_in_time_order_then_in_scheduling_order() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, int]] = []

    def record(name: str) -> None:
        fired.append((name, clock.now_ns()))

    clock.call_at(T0 + 3 * S, lambda: record("c"))
    clock.call_at(T0 + 1 * S, lambda: record("a1"))
    clock.call_at(T0 + 1 * S, lambda: record("a2"))
    clock.call_at(T0 + 2 * S, lambda: record("b"))
    clock.call_at(T0 + 10 * S, lambda: record("late"))
    await clock.advance(3)
    # each callback sees "now" at its own deadline
    assert fired == [("a1", T0 + S), ("a2", T0 + S), ("b", T0 + 2 * S), ("c", T0 + 3 * S)]
    assert clock.now_ns() == T0 + 3 * S
    assert clock.pending() == 1


async def test_clock_timer_in_the_past_fires_on_next_advance_and_cancel_prevents_firing() -> None:
    clock = VirtualClock(start_ns=1000)
    fired: list[int] = []
    clock.call_at(5, lambda: fired.append(clock.now_ns()))
    cancelled = clock.call_at(1500, lambda: fired.append(-1))
    cancelled.cancel()
    assert clock.pending() == 1
    await clock.advance(0)
    assert fired == [1000]  # never moves time backwards
    await clock.advance(1)
    assert fired == [1000]
    assert clock.now_ns() == 1000 + S


async def test_clock_sleep_wakes_exactly_at_its_deadline() -> None:
    clock = VirtualClock()
    woke: list[int] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now_ns())

    tasks = [asyncio.ensure_future(sleeper(s)) for s in (2.5, 0.5)]
    await asyncio.sleep(0)
    await clock.advance(0.499)
    assert woke == []
    await clock.advance(0.001)
    assert woke == [T0 + S // 2]
    await clock.advance(10)
    assert woke == [T0 + S // 2, T0 + 5 * S // 2]
    await asyncio.gather(*tasks)
    assert clock.pending() == 0


async def test_clock_cancelled_sleep_leaves_no_timer() -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(clock.sleep(5))
    await asyncio.sleep(0)
    assert clock.pending() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending() == 0


async def test_clock_advance_to_never_goes_backwards_and_timers_chain() -> None:
    clock = VirtualClock()
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(clock.now_ns())
        if len(ticks) < 5:
            clock.call_at(clock.now_ns() + S, tick)  # a timer scheduled by a timer, within the window

    clock.call_at(T0 + S, tick)
    await clock.advance_to(T0 + 10 * S)
    assert ticks == [T0 + n * S for n in range(1, 6)]
    await clock.advance_to(T0)  # the past: no change
    assert clock.now_ns() == T0 + 10 * S


async def test_clock_advance_waits_for_the_callers_settle_at_every_instant_before_time_moves() -> None:
    clock = VirtualClock()
    seen: list[int] = []  # the time whenever the caller's settle ran
    work: list[int] = []  # work beside the loop that a timer started and the settle lets finish first

    async def settle() -> None:
        seen.append(clock.now_ns())
        while work:  # noqa: ASYNC110 (the work is a list, as the agent's in-flight counts are)
            await asyncio.sleep(0.001)

    def started() -> None:
        work.append(clock.now_ns())
        asyncio.get_running_loop().call_later(0.01, work.clear)  # done after real time, not virtual

    clock.call_at(T0 + S, started)
    clock.call_at(T0 + S, lambda: None)  # same instant: no settle between these two
    clock.call_at(T0 + 2 * S, lambda: seen.append(-1 if work else 0))  # runs only once the work is done
    await clock.advance(3, settle=settle)
    assert seen == [T0, T0 + S, 0, T0 + 2 * S, T0 + 3 * S]
