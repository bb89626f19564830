"""The probe manager, as kubelet's ``prober/prober_manager.go``: workers per pod, and ready/started for the status.

:meth:`ProbeManager.add_pod` starts one :class:`~kubeharness.agent.prober.worker.Worker` per probe of each app
container and each sidecar (an init container with ``restartPolicy: Always``); :meth:`remove_pod` stops them.
The results caches (:attr:`liveness`, :attr:`readiness`, :attr:`startup`) are what the pod worker reads:
:meth:`result_of` says what a probe decided (a failed liveness or startup probe kills the container);
:meth:`started` and :meth:`ready` give a container's ``started`` and ``ready`` for the status as kubelet's
``UpdatePodStatus`` does (``started``: running and the startup probe succeeded or there is none; ``ready``:
started, running and the readiness probe succeeded or there is none; a readiness worker whose container has
no success yet is triggered to probe at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable

from kubeharness.agent.pod.model import ALWAYS, Container, Pod
from kubeharness.agent.prober.metrics import ProbeMetrics
from kubeharness.agent.prober.prober import Prober, probe_of
from kubeharness.agent.prober.results import Result, Results
from kubeharness.agent.prober.worker import LIVENESS, READINESS, STARTUP, PodView, RunProbe, Worker
from kubeharness.clock import Clock

KINDS = (STARTUP, LIVENESS, READINESS)
# (pod uid, container name) -> the worker's view of its pod, from the agent's status
ViewOf = Callable[[str, str], PodView | None]


def probed_containers(pod: Pod) -> list[Container]:
    """The containers kubelet probes: sidecars (restartable init containers) and app containers."""
    return [*(c for c in pod.spec.init_containers if c.restart_policy == ALWAYS), *pod.spec.containers]


class ProbeManager:
    """The workers of every pod, and the results they keep."""

    def __init__(self, prober: Prober, clock: Clock, view_of: ViewOf, *, rng: random.Random | None = None,
                 metrics: ProbeMetrics | None = None) -> None:
        self.prober = prober
        self.clock = clock
        self.view_of = view_of
        self.rng = rng or random.Random()
        self.metrics = metrics or prober.metrics
        self.started_ns = clock.now_ns()
        self.liveness = Results(LIVENESS)
        self.readiness = Results(READINESS)
        self.startup = Results(STARTUP)
        self.workers: dict[tuple[str, str, str], tuple[Worker, asyncio.Task[None]]] = {}

    def results(self, kind: str) -> Results:
        return {LIVENESS: self.liveness, READINESS: self.readiness, STARTUP: self.startup}[kind]

    # -- workers -----------------------------------------------------------------------------------------

    def add_pod(self, pod: Pod) -> None:
        for container in probed_containers(pod):
            for kind in KINDS:
                probe = probe_of(container, kind)
                key = (pod.uid, container.name, kind)
                if probe is None or key in self.workers:
                    continue
                worker = Worker(kind, pod.uid, container.name, probe, results=self.results(kind),
                                view=self._view(pod.uid, container.name),
                                run_probe=self._runner(pod, container), clock=self.clock, rng=self.rng,
                                agent_started_ns=self.started_ns)
                task = asyncio.ensure_future(worker.run())
                self.workers[key] = (worker, task)
                task.add_done_callback(functools.partial(self._ended, key, pod))

    def _view(self, uid: str, name: str) -> Callable[[], PodView | None]:
        return lambda: self.view_of(uid, name)

    def _runner(self, pod: Pod, container: Container) -> RunProbe:
        async def run(kind: str, container_id: str) -> Result | None:
            view = self.view_of(pod.uid, container.name)
            pod_ip = view.pod_ip if view is not None else ""
            return await self.prober.probe(kind, pod, container, container_id, pod_ip)
        return run

    def _ended(self, key: tuple[str, str, str], pod: Pod, _task: asyncio.Task[None]) -> None:
        entry = self.workers.get(key)
        if entry is not None and entry[1].done():
            del self.workers[key]
        uid, name, kind = key
        self.metrics.forget(kind, name, pod.name, pod.namespace, uid)

    async def remove_pod(self, uid: str) -> None:
        """Stop the pod's workers (they remove their results)."""
        tasks = [task for (u, _, _), (_, task) in list(self.workers.items()) if u == uid]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self) -> None:
        for uid in {u for u, _, _ in self.workers}:
            await self.remove_pod(uid)

    def worker(self, uid: str, name: str, kind: str) -> Worker | None:
        entry = self.workers.get((uid, name, kind))
        return entry[0] if entry is not None else None

    # -- what the pod worker and the status read --------------------------------------------------------

    def result_of(self, kind: str, container_id: str) -> str | None:
        """The cached result of a probe kind for a container ("success", "failure", "unknown"), or None:
        what the pod worker's actions read (:data:`kubeharness.agent.runtime.actions.ProbeResultOf`)."""
        result = self.results(kind).get(container_id)
        return result.value if result is not None else None

    def started(self, uid: str, name: str, container_id: str, running: bool) -> bool:
        if not running:
            return False
        result = self.startup.get(container_id)
        if result is not None:
            return result is Result.SUCCESS
        return self.worker(uid, name, STARTUP) is None

    def ready(self, uid: str, name: str, container_id: str, running: bool) -> bool:
        if not running or not self.started(uid, name, container_id, running):
            return False
        if self.readiness.get(container_id) is Result.SUCCESS:
            return True
        worker = self.worker(uid, name, READINESS)
        if worker is None:
            return True  # no readiness probe: a started container is ready
        worker.request()
        return False
