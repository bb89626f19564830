"""A pod worker: serializes the work of one pod (kubelet's pod_workers.go).

It sleeps until woken (a source update, a PLEG event, a probe result, the sync tick, a back-off ending) and
then runs one sync of its pod through the agent; a runtime that is away (UNAVAILABLE) or any other failure
makes it retry with a back-off of its own, 0.5 s doubling to 10 s. The sync says when the pod is gone and
the worker may end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import grpc

from kubeharness.clock import Clock, seconds_to_ns

log = logging.getLogger(__name__)

RETRY_INITIAL_S, RETRY_MAX_S = 0.5, 10.0


class Syncs(Protocol):
    """What a pod worker needs of the agent."""

    clock: Clock

    async def sync_pod(self, worker: PodWorker) -> bool: ...


class PodWorker:
    """Serializes the work of one pod."""

    def __init__(self, agent: Syncs, uid: str) -> None:
        self.agent = agent
        self.uid = uid
        self.mark = -1  # PLEG relists begun before our last action; we wait for a newer one
        self.wake = asyncio.Event()
        self.wake.set()
        self.task = asyncio.ensure_future(self.run())

    def request(self) -> None:
        self.wake.set()

    def request_in(self, seconds: float) -> None:
        """Wake after ``seconds`` on the agent's clock (a backoff ending)."""
        self.agent.clock.call_at(self.agent.clock.now_ns() + seconds_to_ns(seconds), self.wake.set)

    async def run(self) -> None:
        retry = RETRY_INITIAL_S
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                if await self.agent.sync_pod(self):
                    return
                retry = RETRY_INITIAL_S
            except grpc.aio.AioRpcError as err:
                log.warning("pod %s: runtime call failed (%s: %s); retrying in %.1f s", self.uid,
                            err.code().name, err.details(), retry)
                self.request_in(retry)
                retry = min(retry * 2, RETRY_MAX_S)
            except Exception:
                log.exception("pod %s: sync failed", self.uid)
                self.request_in(retry)
                retry = min(retry * 2, RETRY_MAX_S)
