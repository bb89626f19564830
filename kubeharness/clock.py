"""Time for everything that waits or stamps: a real clock and a virtual clock that tests advance.

Every component that needs the time takes a :class:`Clock`; nothing else in kubeharness calls
``time.time()`` or ``asyncio.sleep()`` directly. Times are integers in nanoseconds since the Unix
epoch, the unit CRI uses for its timestamps.

The virtual clock never moves by itself. ``await clock.advance(seconds)`` fires every timer that
falls due in that window, in time order, moving "now" to each timer's deadline before running it, so
that a container that logs once a second writes sixty lines with sixty distinct timestamps when the
test advances sixty seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

NS_PER_SECOND = 1_000_000_000
Settle = Callable[[], Awaitable[None]]


def seconds_to_ns(seconds: float) -> int:
    """Convert a duration in seconds to whole nanoseconds."""
    return round(seconds * NS_PER_SECOND)


class Timer(Protocol):
    """A scheduled callback that can be cancelled before it fires."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time source every component is given."""

    def now_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        ...

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once the clock reaches ``when_ns`` (at once if already past)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""
        ...


class RealClock:
    """Wall-clock time; timers run on the running asyncio loop."""

    def now_ns(self) -> int:
        return time.time_ns()

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> Timer:
        delay = max(0.0, (when_ns - time.time_ns()) / NS_PER_SECOND)
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _VirtualTimer:
    __slots__ = ("callback", "cancelled", "when_ns")

    def __init__(self, when_ns: int, callback: Callable[[], None]) -> None:
        self.when_ns = when_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock that only moves when told to; deterministic for tests and simulations."""

    def __init__(self, start_ns: int = 1_767_225_600 * NS_PER_SECOND) -> None:
        # Default start: 2026-01-01T00:00:00Z, so timestamps in golden files are stable.
        self._now_ns = start_ns
        self._heap: list[tuple[int, int, _VirtualTimer]] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        return self._now_ns

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> Timer:
        timer = _VirtualTimer(max(when_ns, self._now_ns), callback)
        heapq.heappush(self._heap, (timer.when_ns, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(self._now_ns + seconds_to_ns(seconds), wake)
        try:
            await future
        finally:
            timer.cancel()

    def pending(self) -> int:
        """How many live timers are scheduled (cancelled ones excluded)."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    async def advance(self, seconds: float, settle: Settle | None = None) -> None:
        """Move time forward by ``seconds``, firing due timers in order and letting woken tasks run."""
        await self.advance_to(self._now_ns + seconds_to_ns(seconds), settle)

    async def advance_to(self, target_ns: int, settle: Settle | None = None) -> None:
        """Move time forward to ``target_ns`` (never backwards). Before time moves on from an instant,
        ``settle`` (default: a few turns of the loop) lets what the due timers woke run; a caller that knows
        what is still under way (work beside the loop, I/O) waits for it there."""
        settle = settle or _settle
        await settle()
        while self._heap and self._heap[0][0] <= target_ns:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now_ns = max(self._now_ns, when)
            timer.callback()
            # Timers due at the same instant run back to back; tasks they woke run before time moves on.
            if not self._heap or self._heap[0][0] > self._now_ns:
                await settle()
        self._now_ns = max(self._now_ns, target_ns)
        await settle()


async def _settle(rounds: int = 5) -> None:
    """Yield to the loop a few times so tasks woken by a timer run before time moves on."""
    for _ in range(rounds):
        await asyncio.sleep(0)
