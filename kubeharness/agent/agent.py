"""The agent: pods in from its sources, one worker per pod syncing it through CRI, status out over HTTP.

Small loops only dispatch (kubelet's syncLoop, split by source of work): source updates change the
desired set and wake the workers of pods that came or went; PLEG events wake the worker of their pod (and
the runtime's GetContainerEvents stream, where it has one, makes the PLEG relist at once);
a tick every ``syncFrequency`` wakes every worker; housekeeping every 2 s kills what belongs to pods no longer
desired, runs the container GC (``gc.containers``: dead containers beyond one per name with their logs, dead
sandboxes, the log directories of pods that are gone) and forgets stale backoff entries. Image GC
(``gc.images``) has its own loop, every 5 minutes.

Probes (``prober``): the probe manager runs a worker per probe of every admitted pod; a liveness or
startup result that changes wakes the pod's worker (a failure kills the container), a readiness or startup
change refreshes the pod's status at once. Events (probe failures, kills) are kept by ``events`` and
served on ``/events``; probe metrics on ``/metrics/probes``. Stats (``stats``): ``agent.stats`` is the node's
stats provider (the emulated node's when ``kubeharnessNodeCapacity`` is configured, else the host's), served
on ``/stats/summary`` and ``/metrics/resource``; ``agent.node_status`` the Node object on
``/api/v1/nodes/<node-name>``, whose pressure conditions the eviction manager sets.

A :class:`PodWorker` serializes its pod's work: it waits until the PLEG has relisted since its last sync
(so it never acts twice on a stale view), computes the actions (``runtime.actions``), records the status
(``status.podstatus``), carries the actions out (``runtime.kuberuntime``), and, while a container backs off, wakes
itself when the backoff ends. A runtime that is away (UNAVAILABLE) makes the worker retry with a backoff
of its own (0.5 s doubling to 10 s); the PLEG goes unhealthy after 3 minutes without a relist, and
``/healthz`` says so. Nothing is duplicated when the runtime returns: the worker looks again first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc

from kubeharness import fsafe
from kubeharness.agent import deadline
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.events import NORMAL, Recorder
from kubeharness.agent.eviction.manager import Eviction, EvictionManager
from kubeharness.agent.gc.containers import ContainerGC
from kubeharness.agent.gc.images import ImageFs, ImageGC, ImageGCPolicy, cri_image_fs
from kubeharness.agent.lifecycle.predicate import insufficient
from kubeharness.agent.logs import ContainerLogManager, LogRotatePolicy
from kubeharness.agent.nodestatus.node import NodeStatus, allocatable
from kubeharness.agent.pleg.observed import RUNNING
from kubeharness.agent.pleg.pleg import Pleg
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.podworker import RETRY_INITIAL_S, RETRY_MAX_S, PodWorker
from kubeharness.agent.prober.manager import ProbeManager
from kubeharness.agent.prober.metrics import ProbeMetrics
from kubeharness.agent.prober.prober import Prober
from kubeharness.agent.prober.results import Results
from kubeharness.agent.prober.view import pod_view
from kubeharness.agent.prober.worker import LIVENESS, READINESS, STARTUP, PodView
from kubeharness.agent.runtime.actions import PodActions, compute_pod_actions
from kubeharness.agent.runtime.backoff import Backoff
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.runtime.kuberuntime import PodRuntime
from kubeharness.agent.server import endpoints
from kubeharness.agent.server.httpserver import HttpServer, Route
from kubeharness.agent.server.metrics import Registry
from kubeharness.agent.sources.static import PodSource, SourceUpdate, configured_sources
from kubeharness.agent.stats.provider import provider_for
from kubeharness.agent.status.podstatus import RUNNING_PHASE, pod_status
from kubeharness.clock import Clock, seconds_to_ns
from kubeharness.errors import FailedPrecondition
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)

HOUSEKEEPING_PERIOD_S = 2.0


class Agent:
    """One node agent."""

    def __init__(self, config: AgentConfig, clock: Clock, sources: list[PodSource] | None = None, *,
                 rng: random.Random | None = None, image_fs: ImageFs | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Registry()
        self.recorder = Recorder(clock, config.node_name)
        self.client = RuntimeClient(config.container_runtime_endpoint, config.image_service_endpoint or None,
                                    self.metrics, config.runtime_request_timeout_s)
        self.pleg = Pleg(self.client, clock, on_relist=self.metrics.pleg_relist.observe)
        self.backoff = Backoff(config.crash_loop_initial_s, config.crash_loop_max_s, config.crash_loop_reset_s)
        self.runtime = PodRuntime(self.client, config, clock, self.backoff, self.metrics, recorder=self.recorder)
        self.stats = provider_for(config, self.client, clock)  # what /stats/summary and the eviction manager read
        self.node_status = NodeStatus(config, clock, self.stats.machine_capacity, self.not_ready,
                                      self.runtime_version)
        self.logs = ContainerLogManager(  # kubelet's container log manager: rotation every monitor interval
            self.client, clock, LogRotatePolicy(config.container_log_max_size_bytes, config.container_log_max_files),
            max_workers=config.container_log_max_workers, monitor_interval_s=config.container_log_monitor_interval_s)
        self.container_gc = ContainerGC(self.client, clock, config.pod_logs_dir)
        self.image_gc = ImageGC(self.client, clock, self.recorder, ImageGCPolicy(
            config.image_gc_high_threshold_percent, config.image_gc_low_threshold_percent,
            config.image_minimum_gc_age_s, config.image_maximum_gc_age_s),
            image_fs or cri_image_fs(self.client, clock, config.image_fs_capacity_bytes))
        self.evicted: dict[str, Eviction] = {}  # uid -> how the eviction manager ended it
        self.eviction = EvictionManager(  # kubelet's eviction manager, every evictionMonitoringPeriod (10 s)
            [*config.eviction_hard.values(), *config.eviction_soft.values()], clock,
            summary=lambda: self.stats.summary(), active_pods=self.active_pods, evict=self.evict_pod,
            cleaned_up=self.pod_cleaned_up, recorder=self.recorder, reclaim_containers=self.reclaim_containers,
            reclaim_images=self.image_gc.delete_unused, on_conditions=self._pressure,
            pressure_transition_period_s=config.eviction_pressure_transition_period_s,
            max_pod_grace_period_s=config.eviction_max_pod_grace_period_s,
            local_storage_capacity_isolation=config.local_storage_capacity_isolation)
        self.probe_metrics = ProbeMetrics()
        self.probes = ProbeManager(Prober(clock, self.client, self.recorder, self.probe_metrics), clock,
                                   self.probe_view, rng=rng)
        self.sources = sources if sources is not None else configured_sources(config, clock)
        self.updates: asyncio.Queue[SourceUpdate] = asyncio.Queue()
        self.by_source: dict[str, dict[str, Pod]] = {}
        self.desired: dict[str, Pod] = {}  # uid -> pod admitted to run
        self.rejected: dict[str, tuple[Pod, str, str]] = {}  # uid -> (pod, reason, message)
        self.terminating: dict[str, Pod] = {}  # uid -> pod being killed after it left its source
        self.statuses: dict[str, dict[str, Any]] = {}
        self.last_actions: dict[str, PodActions] = {}
        self.start_ns: dict[str, int] = {}  # uid -> when its status was first reported (its startTime)
        self.deadline_passed: set[str] = set()
        self.deadline_timers: set[str] = set()
        self.workers: dict[str, PodWorker] = {}
        self.seen_ns: dict[str, int] = {}
        self.runtime_name = ""
        self._version: asyncio.Future[api.VersionResponse] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.servers: list[HttpServer] = []

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:  # before anything is touched: the root directory (kubelet's --root-dir) is ours or refused
            fsafe.check_owner(self.config.root_dir, "the agent's root directory")
        except fsafe.FsafeError as err:
            raise FailedPrecondition(err.message) from None
        try:  # kubelet's setupDataDirs: the root directory exists (the host stats' nodefs is its filesystem)
            fsafe.make_dirs(self.config.root_dir, 0o750)
        except OSError as err:
            raise FailedPrecondition(f"cannot create the agent's root directory {self.config.root_dir}: "
                                     f"{err.strerror or err}") from None
        routes: dict[str, Route] = {
            **endpoints.routes(self.pod_list, self.pleg, self.metrics, self.probe_metrics, self.recorder),
            **endpoints.stats_routes(self.stats, self.node_status)}
        if self.config.read_only_port:
            self.servers.append(HttpServer(self.config.address, self.config.read_only_port, routes))
        if self.config.healthz_port:
            self.servers.append(HttpServer(self.config.healthz_bind_address, self.config.healthz_port,
                                           {"/healthz": routes["/healthz"]}))
        for server in self.servers:
            await server.start()
        loops: list[Coroutine[Any, Any, None]] = [
            self.pleg.run(), self._config_loop(), self._pleg_loop(), self._sync_loop(), self._housekeeping_loop(),
            self._runtime_events_loop(), *(self._probe_results_loop(r) for r in
                                           (self.probes.liveness, self.probes.readiness, self.probes.startup))]
        loops.append(self.logs.run())  # container log rotation
        loops.append(self.image_gc.run())
        loops.append(self.eviction.run())
        loops.extend(source.run(self.updates) for source in self.sources)
        self._tasks = [asyncio.ensure_future(loop) for loop in loops]

    async def stop(self) -> None:
        tasks = [*self._tasks, *(w.task for w in self.workers.values())]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.probes.stop()
        for server in self.servers:
            await server.stop()
        await self.runtime.close()
        await self.client.close()

    # -- the dispatching loops -------------------------------------------------------------------------

    async def _config_loop(self) -> None:
        while True:
            self.apply(await self.updates.get())

    async def _pleg_loop(self) -> None:
        while True:
            event = await self.pleg.events.get()
            worker = self.workers.get(event.uid)
            if worker is not None:
                worker.request()

    async def _sync_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.sync_frequency_s)
            for worker in self.workers.values():
                worker.request()

    async def _runtime_events_loop(self) -> None:
        """Relist as soon as the runtime reports a container event (evented PLEG's effect on latency); runtimes
        without GetContainerEvents (containerd 1.6) answer UNIMPLEMENTED and the periodic relist does it all."""
        delay = RETRY_INITIAL_S
        while True:
            call = self.client.container_events()
            started = self.clock.now_ns()
            try:
                ended = await self.pleg.follow_events(call)
            finally:
                call.cancel()
            if ended == grpc.StatusCode.UNIMPLEMENTED:
                log.info("the runtime has no container event stream; relisting every second only")
                return
            if self.clock.now_ns() - started > seconds_to_ns(RETRY_MAX_S):
                delay = RETRY_INITIAL_S  # it ran a while: reconnect soon
            await self.clock.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _probe_results_loop(self, results: Results) -> None:
        """A changed probe result: liveness and startup wake the pod's worker (a failure kills the container);
        readiness and startup refresh the pod's status at once (kubelet's handleProbeSync)."""
        while True:
            update = await results.updates.get()
            if results.kind in (READINESS, STARTUP):
                self.refresh_status(update.pod_uid)
            if results.kind in (LIVENESS, STARTUP):
                worker = self.workers.get(update.pod_uid)
                if worker is not None:
                    worker.request()

    async def _housekeeping_loop(self) -> None:
        while True:
            await self.clock.sleep(HOUSEKEEPING_PERIOD_S)
            try:
                await self.housekeeping()
            except grpc.aio.AioRpcError as err:
                log.warning("housekeeping: runtime call failed: %s", err.code().name)

    # -- pods in ---------------------------------------------------------------------------------------

    def apply(self, update: SourceUpdate) -> None:
        """A source's new set of pods: admit new ones (up to maxPods), let removed ones go."""
        self.by_source[update.source] = update.pods
        wanted = {pod.uid: pod for pods in self.by_source.values() for pod in pods.values()}
        for uid in list(self.desired):
            if uid not in wanted:
                self.terminating[uid] = self.desired.pop(uid)
                self.runtime.interrupt_post_start(uid)  # kubelet's cancelled pod worker stops a running postStart
                self._worker(uid).request()
        for uid in list(self.rejected):
            if uid not in wanted:
                del self.rejected[uid]
        now = self.clock.now_ns()
        for uid, pod in sorted(wanted.items(), key=lambda item: item[1].full_name):
            if uid in self.desired or uid in self.rejected:
                continue
            refused = self.eviction.admit(pod)  # kubelet's eviction admit handler comes first
            if refused is not None:
                self.rejected[uid] = (pod, *refused)
                log.warning("rejected pod %s: %s", pod.full_name, refused[1])
                continue
            refused = insufficient(pod, self.allocatable(), self.admitted_pods())  # OutOfpods, OutOfcpu, ...
            if refused is not None:
                self.rejected[uid] = (pod, *refused)
                log.warning("rejected pod %s: %s", pod.full_name, refused[1])
                continue
            self.desired[uid] = pod
            self.seen_ns.setdefault(uid, now)
            self.probes.add_pod(pod)
            self._worker(uid).request()

    def allocatable(self) -> dict[str, int]:
        """The node's allocatable (capacity and ``pods`` minus the reservations), as on the Node object."""
        return allocatable({**self.stats.machine_capacity(), "pods": self.config.max_pods}, self.config)

    def admitted_pods(self) -> list[Pod]:
        """The pods a new one is admitted beside (kubelet's filterOutInactivePods): every desired pod but those
        in a terminal phase, which count only while the agent still ends them (evicted, not yet cleaned up)."""
        return [pod for uid, pod in self.desired.items()
                if self.statuses.get(uid, {}).get("phase") not in ("Succeeded", "Failed")
                or (uid in self.evicted and not self.pod_cleaned_up(pod))]

    def _worker(self, uid: str) -> PodWorker:
        worker = self.workers.get(uid)
        if worker is None or worker.task.done():
            worker = self.workers[uid] = PodWorker(self, uid)
        return worker

    # -- one pod's sync -------------------------------------------------------------------------------

    async def sync_pod(self, worker: PodWorker) -> bool:
        """One sync of a pod; True when the pod is gone and its worker may end."""
        uid = worker.uid
        await self.pleg.newer_than(worker.mark)
        if not self.runtime_name:
            await self._learn_runtime_name()
        observed = self.pleg.get(uid)
        pod = self.desired.get(uid)
        if pod is None:
            leaving = self.terminating.get(uid)
            await self.runtime.kill_pod(leaving, observed)
            worker.mark = self.pleg.started
            await self.probes.remove_pod(uid)
            self.statuses.pop(uid, None)
            self.last_actions.pop(uid, None)
            self.start_ns.pop(uid, None)
            self.deadline_passed.discard(uid)
            self.deadline_timers.discard(uid)
            self.evicted.pop(uid, None)
            self.terminating.pop(uid, None)
            self.workers.pop(uid, None)
            return True
        now = self.clock.now_ns()
        left = deadline.remaining_ns(pod, self.start_ns.setdefault(uid, now), now)
        if left is not None and left <= 0 and uid not in self.deadline_passed:
            self.deadline_passed.add(uid)
            self.recorder.record(pod.namespace, pod.name, pod.uid, "", NORMAL, deadline.REASON, deadline.MESSAGE)
        evicted = self.evicted.get(uid)
        if evicted is not None:
            actions = compute_pod_actions(pod, observed, self.backoff, now, deleting=True,
                                          grace_period_s=evicted.grace_period_s)
        elif uid in self.deadline_passed:
            actions = compute_pod_actions(pod, observed, self.backoff, now, deleting=True)
        else:
            actions = compute_pod_actions(pod, observed, self.backoff, now, probe_result=self.probes.result_of)
        self.last_actions[uid] = actions
        status = self._status(pod, actions)
        self.statuses[uid] = status
        self._note_started(pod, status, now)
        await self.runtime.sync(pod, observed, actions)
        worker.mark = self.pleg.started
        if left is not None and left > 0 and uid not in self.deadline_timers:
            self.deadline_timers.add(uid)
            worker.request_in(left / 1e9)
        if actions.backing_off:
            worker.request_in(min(b.remaining_ns for b in actions.backing_off) / 1e9)
        elif (actions.kill_pod and not self.pod_cleaned_up(pod)) or actions.create_sandbox or \
                actions.containers_to_start or actions.init_containers_to_start or actions.containers_to_kill:
            # look again once the PLEG has seen what we did; a kill of a pod with nothing running or ready did
            # nothing (a finished, evicted or timed-out pod), and looking again would relist without end
            worker.request()
        return False

    def _status(self, pod: Pod, actions: PodActions | None) -> dict[str, Any]:
        evicted = self.evicted.get(pod.uid)
        observed = self.runtime.without_post_starting(self.pleg.get(pod.uid))  # hooks under way: not yet running
        return pod_status(pod, observed, now_ns=self.clock.now_ns(),
                          runtime_name=self.runtime_name or "containerd", reasons=self.runtime.reasons.get(pod.uid),
                          actions=actions, previous=self.statuses.get(pod.uid), probes=self.probes,
                          evicted=self._ended(pod.uid),
                          disruption=evicted.message if evicted and evicted.disruption_condition else None)

    def _ended(self, uid: str) -> tuple[str, str] | None:
        """(reason, message) when the agent ended the pod: evicted, or past its active deadline."""
        if uid in self.evicted:
            return "Evicted", self.evicted[uid].message
        return (deadline.REASON, deadline.MESSAGE) if uid in self.deadline_passed else None

    def refresh_status(self, uid: str) -> None:
        """Recompute a desired pod's status from what is known now (a probe result changed)."""
        pod = self.desired.get(uid)
        if pod is not None and uid in self.statuses:
            self.statuses[uid] = self._status(pod, self.last_actions.get(uid))

    def probe_view(self, uid: str, name: str) -> PodView | None:
        """A probe worker's view of its pod and container, from the status the agent reports."""
        pod, deleting = self.desired.get(uid), False
        if pod is None:
            pod, deleting = self.terminating.get(uid), True
        status = self.statuses.get(uid)
        if pod is None or status is None:
            return None
        return pod_view(pod, status, self.pleg.get(uid), name, deleting=deleting)

    async def _learn_runtime_name(self) -> None:
        """Ask the runtime's name once (for container ids ``<runtime>://<id>``), however many workers need it."""
        if self._version is None or (self._version.done() and self._version.exception() is not None):
            self._version = asyncio.ensure_future(self.client.version())
        self.runtime_name = (await asyncio.shield(self._version)).runtime_name

    async def runtime_version(self) -> api.VersionResponse:
        """The runtime's Version (for the Node's nodeInfo), asked once, again after a failure."""
        if self._version is None or (self._version.done() and self._version.exception() is not None):
            self._version = asyncio.ensure_future(self.client.version())
        return await asyncio.shield(self._version)

    def not_ready(self) -> str | None:
        """Why the node is not Ready (kubelet's messages), None when it is."""
        if self.pleg.last_relist_ns is None:
            return "container runtime status check may not have completed yet"
        if not self.pleg.healthy():
            ago = (self.clock.now_ns() - self.pleg.last_relist_ns) / 1e9
            return f"PLEG is not healthy: pleg was last seen active {ago:.0f}s ago; threshold is 3m0s"
        return None

    def _note_started(self, pod: Pod, status: dict[str, Any], now_ns: int) -> None:
        seen = self.seen_ns.get(pod.uid)
        if seen is None or status.get("phase") != RUNNING_PHASE:
            return
        if all("running" in c.get("state", {}) for c in status.get("containerStatuses", [])):
            self.metrics.pod_start.observe((now_ns - seen) / 1e9)
            del self.seen_ns[pod.uid]

    # -- eviction ------------------------------------------------------------------------------------------

    def active_pods(self) -> list[Pod]:
        """Pods the eviction manager may rank: admitted, not ended by the agent, not in a terminal phase."""
        return [pod for uid, pod in sorted(self.desired.items(), key=lambda item: item[1].full_name)
                if uid not in self.evicted and uid not in self.deadline_passed
                and self.statuses.get(uid, {}).get("phase") not in ("Succeeded", "Failed")]

    def evict_pod(self, eviction: Eviction) -> None:
        """The eviction manager's kill (kubelet's TerminatePodAbnormally): Failed, killed, never started again."""
        self.evicted[eviction.pod.uid] = eviction
        self._worker(eviction.pod.uid).request()

    def pod_cleaned_up(self, pod: Pod) -> bool:
        """Nothing of the pod runs any more: no running container, no ready sandbox."""
        observed = self.pleg.get(pod.uid)
        return observed is None or not (any(c.state == RUNNING for c in observed.containers)
                                        or any(s.ready for s in observed.sandboxes))

    async def reclaim_containers(self) -> None:
        """Kubelet's DeleteAllUnusedContainers before a disk eviction: one container GC pass now."""
        await self.container_gc.collect(self.pleg.pods(), self.content_removable, self.sources_ready())

    def _pressure(self, conditions: Sequence[str]) -> None:
        for condition in ("MemoryPressure", "DiskPressure", "PIDPressure"):
            self.node_status.set_pressure(condition, condition in conditions)

    # -- housekeeping ----------------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """Kill pods nobody wants, collect dead containers and sandboxes, forget stale backoff entries; gauges."""
        observed = self.pleg.pods()
        running_pods = 0
        running: dict[str, int] = {}
        for uid, pod in observed.items():
            if any(s.ready for s in pod.sandboxes):
                running_pods += 1
            for c in pod.containers:
                running[c.state] = running.get(c.state, 0) + 1
            if self.pod_gone(uid):
                await self.runtime.kill_pod(None, pod)
                self.runtime.forget_pod(uid)
        self.metrics.running_pods.set(running_pods)
        for state in ("created", RUNNING, "exited", "unknown"):
            self.metrics.running_containers.labels(state).set(running.get(state, 0))
        await self.container_gc.collect(observed, self.content_removable, self.sources_ready())
        self.backoff.gc(self.clock.now_ns())

    def pod_gone(self, uid: str) -> bool:
        """Kubelet's IsPodDeleted: neither desired nor being terminated by its worker."""
        return uid not in self.desired and uid not in self.workers

    def content_removable(self, uid: str) -> bool:
        """Kubelet's ShouldPodContentBeRemoved, what container GC removes everything of: a pod that is gone, or
        one the eviction manager evicted (its dead containers, sandboxes and log directory)."""
        return self.pod_gone(uid) or uid in self.evicted

    def sources_ready(self) -> bool:
        """Every pod source has reported its pods at least once (kubelet's allSourcesReady)."""
        return all(source.name in self.by_source for source in self.sources)

    # -- status out ------------------------------------------------------------------------------------

    def pod_list(self) -> dict[str, Any]:
        return endpoints.pod_list(self.desired, self.rejected, self.statuses)
