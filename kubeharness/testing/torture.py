"""Crash torture: many concurrent client lifecycles against a server process that is SIGKILLed at seeded
random moments and restarted on the same state, then a check that everything it acknowledged is there.

The driver is independent of what is tortured; :mod:`.torture_cri` and :mod:`.torture_csi` bring CRI and
CSI workloads and their checks, and any runtime or plugin that can be killed and restarted can be put
under them::

    torture = Torture(kill=emulator.kill, start=emulator.start, kills=30, seed=7)
    report = await torture.run([lifecycle(torture, i) for i in range(8)], final=check)

The moments are counted in acknowledged calls, not in seconds: before each kill the driver draws from
``random.Random(seed)`` how many more calls the server must acknowledge, so a loaded machine changes how
long a run takes, not how much work happens between kills. While a kill lands, calls are in flight; each
one that fails with UNAVAILABLE is *in doubt* (the server may or may not have carried it out), and the
workload resolves it by looking (a List call) or by repeating an idempotent call. After the last random
kill the workers finish their lifecycles, the server is killed once more and restarted, and ``final``
compares the ledger with what the restarted server shows.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from kubeharness.errors import KubeharnessError

T = TypeVar("T")

# Calls wait for the (restarted) server instead of failing at once, and the channel reconnects quickly.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
CALL_TIMEOUT_S = 120.0  # one call, including waiting for a restarted server on a loaded machine
CALL_OPTIONS: dict[str, Any] = {"timeout": CALL_TIMEOUT_S, "wait_for_ready": True}  # for every call
STALL_TIMEOUT_S = 300.0  # no acknowledged call for this long: the server or the workload is stuck


class TortureError(KubeharnessError):
    """The torture could not go on: the server stopped acknowledging calls, or a worker failed."""


class InDoubt:
    """What :meth:`Torture.call` returns for a call that a kill cut: it may or may not have taken effect."""

    def __repr__(self) -> str:
        return "IN_DOUBT"


IN_DOUBT = InDoubt()


@dataclass
class TortureReport:
    """What a run did: kills survived, calls acknowledged, calls in doubt and how many of those had taken
    effect (as the workload found out afterwards), and the problems the final check found."""

    kills: int = 0
    acknowledged: int = 0
    in_doubt: int = 0
    in_doubt_done: int = 0
    lifecycles: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"survived {self.kills} kills: {self.acknowledged} calls acknowledged, {self.lifecycles} "
                f"lifecycles, {self.in_doubt} calls in doubt ({self.in_doubt_done} had taken effect), "
                f"{len(self.problems)} problems")


class Torture:
    """Kills a server at seeded moments while workers run; the ledger's counters live here.

    ``kill`` SIGKILLs the server and returns once it is gone; ``start`` starts it again on the same state and
    returns once it answers. Both block (they run in a thread). ``mean_gap`` is the mean number of
    acknowledged calls between two kills.
    """

    def __init__(self, kill: Callable[[], object], start: Callable[[], object], *, kills: int, seed: int,
                 mean_gap: int = 40) -> None:
        if kills < 1:
            raise ValueError("a torture needs at least one kill")
        self._kill = kill
        self._start = start
        self.kills = kills
        self.seed = seed
        self.rng = random.Random(seed)
        self.mean_gap = mean_gap
        self.report = TortureReport()
        self.stopping = False  # set after the last random kill: workers finish their lifecycle and return
        self._acked = asyncio.Condition()

    def worker_rng(self, index: int) -> random.Random:
        """A worker's own seeded random source, so its choices do not depend on the others' timing."""
        return random.Random(f"{self.seed}/{index}")

    async def call(self, rpc: Callable[[], Awaitable[T]]) -> T | InDoubt:
        """Make one call: its answer (acknowledged), or IN_DOUBT if the server died under it. Other errors
        are the server's answers and propagate."""
        try:
            answer = await rpc()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            self.report.in_doubt += 1
            return IN_DOUBT
        await self.acknowledge()
        return answer

    async def settle(self, rpc: Callable[[], Awaitable[T]]) -> T:
        """Repeat an idempotent call until the server acknowledges it."""
        while True:
            answer = await self.call(rpc)
            if not isinstance(answer, InDoubt):
                return answer

    async def acknowledge(self) -> None:
        """Count one acknowledged change (for changes that do not go through :meth:`call`)."""
        async with self._acked:
            self.report.acknowledged += 1
            self._acked.notify_all()

    def resolved(self, done: bool) -> None:
        """Record how an in-doubt call turned out, once the workload has looked."""
        if done:
            self.report.in_doubt_done += 1

    async def _wait_for_acks(self, target: int) -> None:
        async with self._acked:
            await asyncio.wait_for(self._acked.wait_for(lambda: self.report.acknowledged >= target), STALL_TIMEOUT_S)

    async def kill_and_restart(self) -> None:
        await asyncio.to_thread(self._kill)
        self.report.kills += 1
        await asyncio.to_thread(self._start)

    async def _killer(self) -> None:
        for _ in range(self.kills - 1):
            target = self.report.acknowledged + self.rng.randint(1, 2 * self.mean_gap)
            try:
                await self._wait_for_acks(target)
            except TimeoutError:
                raise TortureError(f"no call was acknowledged for {STALL_TIMEOUT_S:.0f} s "
                                   f"(after {self.report.kills} kills)") from None
            await self.kill_and_restart()
        self.stopping = True

    async def run(self, workers: Sequence[Coroutine[Any, Any, None]],
                  final: Callable[[], Awaitable[list[str]]]) -> TortureReport:
        """Run the workers beside the killer; after the last kill, check with ``final`` (its problems go
        into the report)."""
        tasks = [asyncio.ensure_future(worker) for worker in workers]
        killer = asyncio.ensure_future(self._killer())
        try:
            done, _ = await asyncio.wait([killer, *tasks], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise TortureError(f"the torture failed after {self.report.kills} kills: "
                                       f"{task.exception()!r}") from task.exception()
        finally:
            for task in [killer, *tasks]:
                task.cancel()
            await asyncio.gather(killer, *tasks, return_exceptions=True)
        await self.kill_and_restart()  # the last kill: what the final lifecycles were told must survive too
        self.report.problems.extend(await final())
        return self.report


def duplicates(keys: Sequence[object]) -> list[object]:
    """The keys that occur more than once, in first-seen order."""
    seen: set[object] = set()
    twice: list[object] = []
    for key in keys:
        if key in seen and key not in twice:
            twice.append(key)
        seen.add(key)
    return twice
