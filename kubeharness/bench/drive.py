"""Running work items with K concurrent clients, each an asyncio task with a gRPC channel of its own.

The clients take items from one shared iterator, so a slow call holds back one client, not a fixed
share of the work. Every channel is connected before the clock starts, so connection set-up is not
counted as RPC latency. ``on_ready`` runs once all channels are up and before the clock starts
(client processes use it to wait on a barrier, so that they all start together).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from kubeharness.bench.client import Recorder, TimedClient, open_channel
from kubeharness.bench.errors import BenchError

T = TypeVar("T")
Work = Callable[[TimedClient, T], Awaitable[bool]]


@dataclass(frozen=True)
class Outcome:
    """How one batch of work went: items that succeeded and failed, and its wall-clock bounds."""

    ok: int
    failed: int
    start_ns: int
    end_ns: int

    @property
    def wall_ns(self) -> int:
        return self.end_ns - self.start_ns


async def connect(channel: grpc.aio.Channel, endpoint: str, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except TimeoutError:
        raise BenchError(f"could not connect to {endpoint} within {timeout_s:g} s") from None


async def _client_loop(client: TimedClient, items: Iterator[T], work: Work[T]) -> tuple[int, int]:
    ok = failed = 0
    for item in items:  # shared with the other clients: each item is taken exactly once
        if await work(client, item):
            ok += 1
        else:
            failed += 1
    return ok, failed


async def drive(
    endpoint: str,
    items: Iterable[T],
    clients: int,
    work: Work[T],
    recorder: Recorder,
    timeout_s: float,
    on_ready: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``work`` on every item with ``clients`` concurrent clients; latencies go to ``recorder``."""
    channels = [open_channel(endpoint) for _ in range(max(1, clients))]
    try:
        await asyncio.gather(*(connect(ch, endpoint, timeout_s) for ch in channels))
        if on_ready is not None:
            on_ready()
        shared = iter(items)
        start = time.perf_counter_ns()
        counts = await asyncio.gather(
            *(_client_loop(TimedClient(ch, recorder, timeout_s), shared, work) for ch in channels)
        )
        end = time.perf_counter_ns()
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))
    return Outcome(sum(c[0] for c in counts), sum(c[1] for c in counts), start, end)
