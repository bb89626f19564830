"""One probe worker per (pod, container, probe kind), as kubelet's ``prober/worker.go``.

:meth:`Worker.step` is one probe (kubelet's ``doProbe``) and says whether to keep going; :meth:`Worker.run`
is the loop around it: for a freshly started agent it first waits a random part of one period (so that
probes of many pods spread out), then steps on every tick of a ticker of ``periodSeconds`` and whenever it
is triggered (the manager triggers a readiness worker whose container has no result yet). Both read the
agent's view of the pod through :class:`PodView`, so tests can drive a worker step by step on a virtual
clock without an agent.

A step, in kubelet's order: no pod view or no container id yet -> wait; a new container id -> its initial
result (readiness Failure, liveness Success, startup Unknown) and probing resumes; on hold (after a
liveness or startup failure, until a new container) -> wait; container not running -> Failure, and stop if
it will not be restarted; pod being deleted -> liveness and startup record Success and stop, readiness
Failure and stop; before ``initialDelaySeconds`` of running -> wait; startup probes run only until the
container has started, the others only after; then probe, and record the result once ``failureThreshold``
or ``successThreshold`` identical results came in a row. A liveness or startup Failure puts the worker on
hold.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubeharness.agent.pod.model import Probe
from kubeharness.agent.prober.results import Result, Results
from kubeharness.clock import Clock, seconds_to_ns

LIVENESS, READINESS, STARTUP = "Liveness", "Readiness", "Startup"
INITIAL_RESULTS = {LIVENESS: Result.SUCCESS, READINESS: Result.FAILURE, STARTUP: Result.UNKNOWN}


@dataclass(frozen=True)
class ContainerView:
    """The worker's container as the agent's status shows it."""

    container_id: str  # "" until created
    running: bool
    started_at_ns: int = 0
    terminated: bool = False
    started: bool = False  # the status's ``started``: the startup probe succeeded (or there is none)


@dataclass(frozen=True)
class PodView:
    """What a worker needs of its pod's status."""

    terminal: bool  # phase Succeeded or Failed
    deleting: bool
    restart_never: bool  # restartPolicy Never: a stopped container will not come back
    pod_ip: str
    container: ContainerView | None  # None: not in the status yet


# (probe kind, container id) -> a result, or None when the probe errored and its result is thrown away
RunProbe = Callable[[str, str], Awaitable[Result | None]]


class Worker:
    """Probes one container of one pod with one probe."""

    def __init__(self, kind: str, pod_uid: str, container_name: str, probe: Probe, *, results: Results,
                 view: Callable[[], PodView | None], run_probe: RunProbe, clock: Clock,
                 rng: random.Random | None = None, agent_started_ns: int | None = None) -> None:
        self.kind = kind
        self.pod_uid = pod_uid
        self.container_name = container_name
        self.probe = probe
        self.results = results
        self.view = view
        self.run_probe = run_probe
        self.clock = clock
        self.rng = rng or random.Random()
        self.agent_started_ns = agent_started_ns
        self.container_id = ""
        self.on_hold = False
        self.last_result: Result | None = None
        self.result_run = 0
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.probes_run = 0

    # -- one step ----------------------------------------------------------------------------------------

    async def step(self) -> bool:
        """One probe (kubelet's doProbe); False when the worker should end."""
        pod = self.view()
        if pod is None:
            return True  # not created yet, or already gone
        if pod.terminal:
            return False
        c = pod.container
        if c is None or not c.container_id:
            return True
        if c.container_id != self.container_id:
            if self.container_id:
                self.results.remove(self.container_id)
            self.container_id = c.container_id
            self.results.set(self.container_id, INITIAL_RESULTS[self.kind], self.pod_uid)
            self.on_hold = False
        if self.on_hold:
            return True
        if not c.running:
            self.results.set(self.container_id, Result.FAILURE, self.pod_uid)
            return not c.terminated or not pod.restart_never
        if pod.deleting:
            if self.kind == READINESS:
                self.results.set(self.container_id, Result.FAILURE, self.pod_uid)
            else:  # a quiet shutdown: no kill for a probe while the pod goes anyway
                self.results.set(self.container_id, Result.SUCCESS, self.pod_uid)
            return False
        running_s = (self.clock.now_ns() - c.started_at_ns) // 1_000_000_000
        if running_s < self.probe.initial_delay_seconds:
            return True
        if c.started and self.kind == STARTUP:
            return True  # kept alive for the container's next instance
        if not c.started and self.kind != STARTUP:
            return True
        result = await self.run_probe(self.kind, self.container_id)
        self.probes_run += 1
        if result is None:
            return True  # the probe errored: its result is thrown away
        self._count(result)
        return True

    def _count(self, result: Result) -> None:
        if result is self.last_result:
            self.result_run += 1
        else:
            self.last_result, self.result_run = result, 1
        if (result is Result.FAILURE and self.result_run < self.probe.failure_threshold) or \
                (result is Result.SUCCESS and self.result_run < self.probe.success_threshold):
            return
        self.results.set(self.container_id, result, self.pod_uid)
        if self.kind in (LIVENESS, STARTUP) and result is Result.FAILURE:
            self.on_hold = True  # until a new container: do not exec into one that is being stopped
            self.result_run = 0

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        period_ns = seconds_to_ns(self.probe.period_seconds)
        try:
            now = self.clock.now_ns()
            if self.agent_started_ns is not None and now - self.agent_started_ns < period_ns:
                await self.clock.sleep(self.rng.random() * self.probe.period_seconds)
            ticks_from = self.clock.now_ns()
            while await self.step():
                now = self.clock.now_ns()
                next_tick = ticks_from + ((now - ticks_from) // period_ns + 1) * period_ns
                await self._wait(next_tick)
        finally:
            if self.container_id:
                self.results.remove(self.container_id)
            self.stopped.set()

    async def _wait(self, until_ns: int) -> None:
        """Until the next tick or a trigger (one event, set by either: no task per tick)."""
        timer = self.clock.call_at(until_ns, self.wake.set)
        try:
            await self.wake.wait()
        finally:
            timer.cancel()
        self.wake.clear()

    def request(self) -> None:
        """Probe now (kubelet's manualTriggerCh): the next step runs without waiting for the tick; stop a
        worker by cancelling its ``run``."""
        self.wake.set()
