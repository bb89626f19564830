"""The pod lifecycle event generator: relist the runtime, diff it with the last relist, emit events.

Kubelet's generic PLEG (``pkg/kubelet/pleg/generic.go``), in two parts:

- :func:`generate_events` is the pure transition: for every container *and sandbox* id of a pod in the
  old or the new view it compares the states (a sandbox counts as running when ready and exited when not
  ready; a created container as unknown) and yields ContainerStarted (now running), ContainerDied (now
  exited), ContainerChanged (now unknown) or, for an id that is gone, ContainerRemoved (preceded by
  ContainerDied unless it had already been seen exited).
- :class:`Pleg` owns the loop. :meth:`Pleg.relist` is one step: ListPodSandbox + ListContainers, diff per
  pod, and for each pod with events fetch the statuses (ContainerStatus, PodSandboxStatus) to refresh the
  cache the pod workers read (:meth:`Pleg.get`); then put the events on :attr:`Pleg.events` (ContainerChanged
  is left out, as kubelet does; a full queue drops events and counts them). A pod whose statuses cannot
  be read keeps its old record and is inspected again at the next relist. An exited container's message is
  the one kubelet reports (:func:`~kubeharness.agent.runtime.termination.status_message`: its termination message
  file, or its log's tail under FallbackToLogsOnError, after the runtime's own message). :meth:`Pleg.run`
  relists every period (1 s), sooner when :meth:`Pleg.trigger` is called, e.g. by :meth:`Pleg.follow_events`
  for each message of the runtime's GetContainerEvents stream.
- :meth:`Pleg.healthy` is false until a relist has succeeded and whenever the last successful one started
  more than 3 minutes ago (kubelet's threshold); the node reports not ready then.

The runtime is reached through :class:`RuntimeLister`, which the agent's CRI client and test doubles fit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from kubeharness.agent.pleg import observed as obs
from kubeharness.agent.runtime import termination
from kubeharness.agent.runtime.client import unless_gone
from kubeharness.clock import NS_PER_SECOND, Clock, seconds_to_ns
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)

CONTAINER_STARTED = "ContainerStarted"
CONTAINER_DIED = "ContainerDied"
CONTAINER_REMOVED = "ContainerRemoved"
CONTAINER_CHANGED = "ContainerChanged"

RELIST_PERIOD_S = 1.0
INSPECT_CONCURRENCY = 16  # pods inspected at once after a relist
RELIST_THRESHOLD_S = 180.0
EVENT_QUEUE_SIZE = 1000  # kubelet's plegChannelCapacity

# PLEG's own view of a state; "absent" completes the transitions
_RUNNING, _EXITED, _UNKNOWN, _ABSENT = "running", "exited", "unknown", "absent"


@dataclass(frozen=True)
class PodLifecycleEvent:
    uid: str  # the pod's
    type: str  # CONTAINER_STARTED, CONTAINER_DIED, CONTAINER_REMOVED or CONTAINER_CHANGED
    data: str  # the container (or sandbox) id


class RuntimeLister(Protocol):
    """The CRI calls the PLEG makes (a subset of the agent's RuntimeClient)."""

    async def list_sandboxes(self) -> list[api.PodSandbox]: ...

    async def list_containers(self) -> list[api.Container]: ...

    async def sandbox_status(self, sandbox_id: str) -> api.PodSandboxStatus: ...

    async def container_status(self, container_id: str) -> api.ContainerStatus: ...


def _states(pod: obs.ObservedPod | None) -> dict[str, str]:
    """Id -> PLEG state, containers first then sandboxes (kubelet's order)."""
    if pod is None:
        return {}
    states = {c.id: _RUNNING if c.state == obs.RUNNING else _EXITED if c.state == obs.EXITED else _UNKNOWN
              for c in pod.containers}
    for s in pod.sandboxes:
        states.setdefault(s.id, _RUNNING if s.ready else _EXITED)
    return states


def _transition(uid: str, cid: str, old: str, new: str) -> list[PodLifecycleEvent]:
    if old == new:
        return []
    if new == _RUNNING:
        return [PodLifecycleEvent(uid, CONTAINER_STARTED, cid)]
    if new == _EXITED:
        return [PodLifecycleEvent(uid, CONTAINER_DIED, cid)]
    if new == _UNKNOWN:
        return [PodLifecycleEvent(uid, CONTAINER_CHANGED, cid)]
    removed = PodLifecycleEvent(uid, CONTAINER_REMOVED, cid)
    return [removed] if old == _EXITED else [PodLifecycleEvent(uid, CONTAINER_DIED, cid), removed]


def generate_events(old: obs.ObservedPod | None, new: obs.ObservedPod | None) -> list[PodLifecycleEvent]:
    """The events that take a pod from ``old`` to ``new`` (either may be None: not in the runtime)."""
    ref = old or new
    if ref is None:
        return []
    before, after = _states(old), _states(new)
    ids = list(dict.fromkeys([*before, *after]))
    return [e for cid in ids for e in _transition(ref.uid, cid, before.get(cid, _ABSENT), after.get(cid, _ABSENT))]


class Pleg:
    """Relists the runtime every period, keeps the observed pods, and queues lifecycle events."""

    def __init__(self, runtime: RuntimeLister, clock: Clock, period_s: float = RELIST_PERIOD_S, *,
                 threshold_s: float = RELIST_THRESHOLD_S, on_relist: Callable[[float], None] | None = None,
                 queue_size: int = EVENT_QUEUE_SIZE) -> None:
        self.runtime = runtime  # CRI lists and statuses
        self.clock = clock  # stamps relists, paces run()
        self.period_s = period_s
        self.threshold_ns = seconds_to_ns(threshold_s)
        self.on_relist = on_relist  # gets each relist's duration in seconds (kubelet_pleg_relist_duration_seconds)
        self.events: asyncio.Queue[PodLifecycleEvent] = asyncio.Queue(maxsize=queue_size)
        self.discarded_events = 0  # kubelet_pleg_discard_events
        self.last_relist_ns: int | None = None  # start of the last successful relist
        self._records: dict[str, obs.ObservedPod] = {}  # last relist's listed view, per uid
        self._cache: dict[str, obs.ObservedPod] = {}  # inspected pods (with statuses), per uid
        self._reinspect: set[str] = set()
        self._signatures: dict[str, tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]] = {}
        self._wake = asyncio.Event()
        self.started = 0  # relists begun so far
        self.completed = 0  # the number (in ``started``) of the last relist that succeeded
        self._relisted = asyncio.Event()

    # -- what others read ------------------------------------------------------------------------------

    def get(self, uid: str) -> obs.ObservedPod | None:
        """The pod as last inspected, or None if the runtime has nothing of it."""
        return self._cache.get(uid)

    def pods(self) -> dict[str, obs.ObservedPod]:
        return dict(self._cache)

    def healthy(self) -> bool:
        """False before the first successful relist and when the last one is older than the threshold."""
        if self.last_relist_ns is None:
            return False
        return self.clock.now_ns() - self.last_relist_ns <= self.threshold_ns

    # -- the step --------------------------------------------------------------------------------------

    async def newer_than(self, mark: int) -> None:
        """Wait until a relist that began after ``mark`` (a value of :attr:`started`) has succeeded: what a pod
        worker needs before computing actions again, so it never acts twice on a stale view (kubelet's
        GetNewerThan). Triggers relists; waits as long as the runtime is away."""
        while self.completed <= mark:
            waiter = self._relisted
            self.trigger()
            await waiter.wait()

    async def relist(self) -> list[PodLifecycleEvent]:
        """One relist; returns the events it produced (also queued). Runtime errors are logged, not raised."""
        start = self.clock.now_ns()
        self.started += 1
        number = self.started
        try:
            try:
                sandboxes = await self.runtime.list_sandboxes()
                containers = await self.runtime.list_containers()
            except (grpc.RpcError, TimeoutError) as err:
                log.warning("PLEG: cannot list the runtime's pods: %s", err)
                return []
            self.last_relist_ns = start
            events = await self._diff(obs.group_by_uid(sandboxes, containers))
            self.completed = max(self.completed, number)
            done, self._relisted = self._relisted, asyncio.Event()
            done.set()
            return events
        finally:
            if self.on_relist is not None:
                self.on_relist((self.clock.now_ns() - start) / NS_PER_SECOND)

    async def _diff(self, groups: dict[str, tuple[list[api.PodSandbox], list[api.Container]]],
                    ) -> list[PodLifecycleEvent]:
        # Only pods whose listed objects or states changed are looked at closely: with 100 idle pods a relist
        # is two list calls and a comparison of (id, state) pairs, not 100 pods rebuilt.
        signatures = {uid: (tuple((sb.id, int(sb.state)) for sb in sbs), tuple((c.id, int(c.state)) for c in cs))
                      for uid, (sbs, cs) in groups.items()}
        candidates = [uid for uid in dict.fromkeys([*self._records, *groups])
                      if uid in self._reinspect or self._signatures.get(uid) != signatures.get(uid)]
        self._signatures = signatures
        listed = {uid: obs.from_cri(*groups[uid])[uid] for uid in candidates if uid in groups}
        changed: list[tuple[str, list[PodLifecycleEvent]]] = []
        for uid in candidates:
            events = generate_events(self._records.get(uid), listed.get(uid))
            if events or uid in self._reinspect:
                changed.append((uid, events))
        # inspect the changed pods concurrently (a burst of 100 new pods is 200 status calls); apply in order
        limit = asyncio.Semaphore(INSPECT_CONCURRENCY)

        async def inspect(uid: str) -> obs.ObservedPod | BaseException | None:
            if uid not in listed:
                return None
            async with limit:
                try:
                    return await self._inspect(uid, *groups[uid])
                except (grpc.RpcError, TimeoutError) as err:
                    return err

        inspected = await asyncio.gather(*(inspect(uid) for uid, _ in changed))
        reinspect: set[str] = set()
        emitted: list[PodLifecycleEvent] = []
        for (uid, events), pod in zip(changed, inspected, strict=True):
            if isinstance(pod, BaseException):
                log.warning("PLEG: cannot inspect pod %s, will retry: %s", uid, pod)
                reinspect.add(uid)
                continue
            if pod is not None:
                self._cache[uid] = pod
                self._records[uid] = listed[uid]
            else:
                self._cache.pop(uid, None)
                self._records.pop(uid, None)
            for event in events:
                if event.type == CONTAINER_CHANGED:
                    continue
                emitted.append(event)
                try:
                    self.events.put_nowait(event)
                except asyncio.QueueFull:
                    self.discarded_events += 1
                    log.error("PLEG: event queue full, dropping %s", event)
        self._reinspect = reinspect
        return emitted

    async def _inspect(self, uid: str, sandboxes: list[api.PodSandbox],
                       containers: list[api.Container]) -> obs.ObservedPod:
        container_replies = await asyncio.gather(*(unless_gone(self.runtime.container_status(c.id))
                                                   for c in containers))
        statuses = {c.id: st for c, st in zip(containers, container_replies, strict=True) if st is not None}
        for status in statuses.values():
            if status.state == api.CONTAINER_EXITED:
                status.message = termination.status_message(status)
        sandbox_replies = await asyncio.gather(*(unless_gone(self.runtime.sandbox_status(sb.id))
                                                 for sb in sandboxes))
        sandbox_statuses = {sb.id: st for sb, st in zip(sandboxes, sandbox_replies, strict=True) if st is not None}
        gone = {c.id for c in containers} - statuses.keys()
        pods = obs.from_cri(sandboxes, [c for c in containers if c.id not in gone], statuses, sandbox_statuses)
        return pods.get(uid) or obs.ObservedPod(uid=uid, name="", namespace="")

    # -- the loop --------------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Relist now rather than at the end of the period."""
        self._wake.set()

    async def run(self) -> None:
        """Relist, wait a period (or a trigger), forever; cancel the task to stop."""
        while True:
            await self.relist()
            await self._pause()

    async def _pause(self) -> None:
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self.clock.sleep(self.period_s))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
        self._wake.clear()

    async def follow_events(self, stream: AsyncIterable[object]) -> grpc.StatusCode | None:
        """Trigger a relist for each message of a GetContainerEvents stream, until it ends (None) or fails
        (its status code: UNIMPLEMENTED for a runtime without the stream)."""
        try:
            async for _ in stream:
                self.trigger()
        except grpc.aio.AioRpcError as err:
            log.info("PLEG: container event stream ended: %s", err.code().name)
            return err.code()
        return None

