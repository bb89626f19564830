"""Crash-loop back-off on a virtual clock: 10, 20, 40, 80, 160, 300, 300 s, reset and GC."""

from __future__ import annotations

import pytest

from kubeharness.agent.runtime.backoff import Backoff, go_duration
from kubeharness.clock import NS_PER_SECOND, VirtualClock

S = NS_PER_SECOND
KEY = ("uid-1", "app", "hash-1")


async def crash_loop(backoff: Backoff, clock: VirtualClock, restarts: int, run_s: float = 0) -> list[float]:
    """A container that runs ``run_s`` and exits, restarted as soon as back-off allows: the waits seen."""
    waits = []
    finished = clock.now_ns()
    for _ in range(restarts):
        waited = 0.0
        while backoff.in_backoff(KEY, finished, clock.now_ns()):
            await clock.advance(1)
            waited += 1
        waits.append(waited)
        backoff.next(KEY, finished, clock.now_ns())  # started now
        await clock.advance(run_s)
        finished = clock.now_ns()
    return waits


async def test_the_back_off_doubles_to_the_cap() -> None:
    clock = VirtualClock()
    waits = await crash_loop(Backoff(), clock, 8)
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]


async def test_configured_initial_and_max() -> None:
    waits = await crash_loop(Backoff(initial_s=1, max_s=5), VirtualClock(), 6)
    assert waits == [0, 1, 2, 4, 5, 5]


async def test_remaining_counts_from_the_finish() -> None:
    backoff = Backoff()
    backoff.next(KEY, 0, 0)
    backoff.next(KEY, 0, 12 * S)  # 20 s now
    assert backoff.get_ns(KEY) == 20 * S
    assert backoff.remaining_ns(KEY, 15 * S, 20 * S) == 15 * S
    assert not backoff.in_backoff(KEY, 15 * S, 35 * S)
    assert backoff.remaining_ns(("uid-1", "app", "other-hash"), 15 * S, 20 * S) == 0  # a changed spec: no back-off


async def test_a_long_run_resets_the_back_off() -> None:
    clock = VirtualClock()
    backoff = Backoff()
    await crash_loop(backoff, clock, 5)
    assert backoff.get_ns(KEY) == 160 * S  # five restarts: 10, 20, 40, 80, 160
    started = clock.now_ns()
    finished = started + 601 * S  # ran for more than 10 minutes
    assert not backoff.in_backoff(KEY, finished, finished)
    assert backoff.next(KEY, finished, finished) == 10 * S


async def test_a_run_shorter_than_the_reset_period_keeps_doubling() -> None:
    backoff = Backoff(reset_s=60)
    backoff.next(KEY, 0, 0)
    assert backoff.next(KEY, 59 * S, 59 * S) == 20 * S
    assert backoff.next(KEY, 59 * S + 61 * S, 59 * S + 61 * S) == 10 * S


def test_gc_drops_idle_entries() -> None:
    backoff = Backoff()
    backoff.next(KEY, 0, 0)
    backoff.next(("uid-2", "app", "h"), 500 * S, 500 * S)
    assert backoff.gc(600 * S) == 0
    assert backoff.gc(601 * S) == 1 and len(backoff) == 1
    backoff.forget_pod("uid-2")
    assert len(backoff) == 0


def test_reset_forgets_a_key() -> None:
    backoff = Backoff()
    backoff.next(KEY, 0, 0)
    backoff.reset(KEY)
    assert backoff.get_ns(KEY) == 0


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial_s=20, max_s=10)


@pytest.mark.parametrize(("seconds", "text"), [(10, "10s"), (80, "1m20s"), (300, "5m0s"), (3725, "1h2m5s")])
def test_go_duration(seconds: int, text: str) -> None:
    assert go_duration(seconds * S) == text
