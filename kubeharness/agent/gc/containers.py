"""Container garbage collection: dead containers with their logs, dead sandboxes, pod log directories.

Kubelet's ``containerGC.GarbageCollect`` (``pkg/kubelet/kuberuntime/kuberuntime_gc.go``) with its default
policy (``pkg/kubelet/container/container_gc.go``: MinAge 0, MaxPerPodContainer 1, MaxContainers -1), in
three parts as kubelet has them:

- **Containers.** Evictable are the containers that are not running and were created at least MinAge
  ago, grouped per (pod uid, container name) and ordered newest first (by attempt, then creation time).
  Once every pod source has reported, every evictable container of a pod that is gone is removed; of
  the others each group keeps its newest MaxPerPodContainer and loses the rest, oldest first; then, if
  MaxContainers is not negative, the groups are cut evenly (at least 1 each) and the oldest overall go
  until MaxContainers remain. A container in an unknown state is stopped before it is removed. Removing a
  container removes its log file and its rotated files (``<log>*``, kubelet's ``removeContainerLog``).
- **Sandboxes.** A sandbox is active when it is ready or still has a container. Of a pod that still
  exists the newest sandbox is kept and the older inactive ones are removed; of a pod that is gone every
  inactive sandbox is removed (StopPodSandbox first, as kubelet guards).
- **Pod log directories** (``<podLogsDir>/<namespace>_<name>_<uid>``) of pods that are gone, once every
  source has reported.

"Gone" is kubelet's ``IsPodDeleted``: neither desired nor still being terminated by its worker.

The plan is pure (:func:`plan`, over the PLEG's last relist, which lists every sandbox and container);
:meth:`ContainerGC.collect` is one pass that carries it out. Kubelet runs the pass every minute
(``ContainerGCPeriod``); the agent runs it from its housekeeping, every 2 s, which only removes what kubelet
would remove up to a minute later. Logs are removed only below ``podLogsDir``: a log path elsewhere that a
runtime reports is left alone (a test harness meets runtimes that answer anything).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kubeharness.agent.pleg.observed import RUNNING, UNKNOWN, ObservedContainer, ObservedPod, ObservedSandbox
from kubeharness.agent.runtime.client import RuntimeClient, unless_gone
from kubeharness.clock import Clock, seconds_to_ns

log = logging.getLogger(__name__)

UNKNOWN_STOP_GRACE_S = 30  # the default termination grace period, for a container in an unknown state


@dataclass(frozen=True)
class ContainerGCPolicy:
    """Kubelet's ``ContainerGCPolicy``; the defaults are kubelet's (not configurable in KubeletConfiguration)."""

    min_age_s: float = 0.0
    max_per_pod_container: int = 1  # negative: no limit
    max_containers: int = -1  # negative: no limit


DEFAULT_POLICY = ContainerGCPolicy()


@dataclass(frozen=True)
class Plan:
    """What one pass removes, in order."""

    containers: tuple[ObservedContainer, ...] = ()
    sandboxes: tuple[ObservedSandbox, ...] = ()


Unit = tuple[str, str]  # (pod uid, container name): kubelet's evictUnit
Gone = Callable[[str], bool]  # pod uid -> whether the pod is gone (kubelet's IsPodDeleted)


def _newest_first(containers: Iterable[ObservedContainer]) -> list[ObservedContainer]:
    return sorted(containers, key=lambda c: (c.attempt, c.created_ns), reverse=True)


def evictable(pods: Mapping[str, ObservedPod], now_ns: int, min_age_s: float) -> dict[Unit, list[ObservedContainer]]:
    """Containers that are not running and were created at least ``min_age_s`` ago, per unit, newest first."""
    newest = now_ns - seconds_to_ns(min_age_s)
    units: dict[Unit, list[ObservedContainer]] = {}
    for uid, pod in pods.items():
        for c in pod.containers:
            if c.state != RUNNING and c.created_ns <= newest:
                units.setdefault((uid, c.name), []).append(c)
    return {unit: _newest_first(cs) for unit, cs in units.items()}


def _cut(units: dict[Unit, list[ObservedContainer]], keep: int, removed: list[ObservedContainer]) -> None:
    for unit, cs in units.items():
        if len(cs) > keep:
            removed.extend(reversed(cs[keep:]))  # oldest first
            units[unit] = cs[:keep]


def containers_to_remove(units: Mapping[Unit, list[ObservedContainer]], policy: ContainerGCPolicy,
                         gone: Gone, sources_ready: bool) -> list[ObservedContainer]:
    """Kubelet's ``evictContainers`` over the evictable ``units``: the containers to remove, in order."""
    left = {unit: list(cs) for unit, cs in units.items()}
    removed: list[ObservedContainer] = []
    if sources_ready:
        for unit in [u for u in left if gone(u[0])]:
            removed.extend(reversed(left.pop(unit)))
    if policy.max_per_pod_container >= 0:
        _cut(left, policy.max_per_pod_container, removed)
    total = sum(len(cs) for cs in left.values())
    if policy.max_containers >= 0 and total > policy.max_containers:
        _cut(left, max(policy.max_containers // len(left), 1), removed)
        flat = _newest_first(c for cs in left.values() for c in cs)
        if len(flat) > policy.max_containers:
            removed.extend(reversed(flat[policy.max_containers:]))
    return removed


def sandboxes_to_remove(pods: Mapping[str, ObservedPod], removed_ids: set[str], gone: Gone) -> list[ObservedSandbox]:
    """Kubelet's ``evictSandboxes``: inactive sandboxes of gone pods, and all but the newest of the others.

    A sandbox is active when ready or when a container (other than those in ``removed_ids``) is in it."""
    holding = {c.sandbox_id for pod in pods.values() for c in pod.containers if c.id not in removed_ids}
    removed: list[ObservedSandbox] = []
    for uid, pod in pods.items():
        ordered = sorted(pod.sandboxes, key=lambda s: (s.attempt, s.created_ns), reverse=True)
        candidates = ordered if gone(uid) else ordered[1:]
        removed.extend(s for s in reversed(candidates) if not s.ready and s.id not in holding)
    return removed


def plan(pods: Mapping[str, ObservedPod], gone: Gone, now_ns: int, policy: ContainerGCPolicy = DEFAULT_POLICY,
         sources_ready: bool = True) -> Plan:
    """One pass's removals, from the runtime's pods and which pods are gone."""
    containers = containers_to_remove(evictable(pods, now_ns, policy.min_age_s), policy, gone, sources_ready)
    sandboxes = sandboxes_to_remove(pods, {c.id for c in containers}, gone)
    return Plan(tuple(containers), tuple(sandboxes))


def pod_uid_of_log_dir(name: str) -> str | None:
    """``<namespace>_<name>_<uid>`` -> uid (kubelet's parsePodUIDFromLogsDirectory); None if not of that form."""
    parts = name.split("_")
    return parts[-1] if len(parts) >= 3 and parts[-1] else None


def log_dirs_to_remove(names: Iterable[str], gone: Gone) -> list[str]:
    """The pod log directories (by name) whose pod is gone."""
    return sorted(n for n in names if (uid := pod_uid_of_log_dir(n)) is not None and gone(uid))


def _within(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real.startswith(base.rstrip(os.sep) + os.sep)


class ContainerGC:
    """Removes what :func:`plan` says through CRI, with the containers' logs and the pod log directories."""

    def __init__(self, client: RuntimeClient, clock: Clock, pod_logs_dir: str,
                 policy: ContainerGCPolicy = DEFAULT_POLICY) -> None:
        self.client = client  # RemoveContainer, StopContainer, ContainerStatus, Stop/RemovePodSandbox
        self.clock = clock
        self.pod_logs_dir = pod_logs_dir  # kubelet's podLogsDir
        self.policy = policy

    async def collect(self, pods: Mapping[str, ObservedPod], gone: Gone, sources_ready: bool = True) -> Plan:
        """One pass (kubelet's GarbageCollect): dead containers, then sandboxes, then pod log directories.

        Runtime errors other than NOT_FOUND propagate (the caller logs them and tries again next pass)."""
        done = plan(pods, gone, self.clock.now_ns(), self.policy, sources_ready)
        for c in done.containers:
            await self.remove_container(c)
        for s in done.sandboxes:
            await unless_gone(self.client.stop_sandbox(s.id))
            await unless_gone(self.client.remove_sandbox(s.id))
        if sources_ready:
            self.remove_log_dirs(gone)
        return done

    async def remove_container(self, c: ObservedContainer) -> None:
        """Kubelet's removeContainer: stop it if its state is unknown, remove its logs, then the container."""
        if c.state == UNKNOWN:
            log.info("container %s is in unknown state, stopping it before removal", c.id)
            await unless_gone(self.client.stop_container(c.id, UNKNOWN_STOP_GRACE_S))
        status = await unless_gone(self.client.container_status(c.id))
        if status is None:
            return  # removed meanwhile
        if status.log_path:
            self.remove_logs(status.log_path)
        await unless_gone(self.client.remove_container(c.id))

    def remove_logs(self, log_path: str) -> None:
        """The container's log file and its rotated files (``<log>.<time>``, ``.gz``), if below podLogsDir."""
        if not _within(log_path, self.pod_logs_dir):
            log.warning("not removing log %s: outside the pod logs directory %s", log_path, self.pod_logs_dir)
            return
        for path in glob.glob(glob.escape(log_path) + "*"):
            with contextlib.suppress(OSError):
                if not os.path.isdir(path) or os.path.islink(path):
                    os.unlink(path)

    def remove_log_dirs(self, gone: Gone) -> None:
        try:
            names = os.listdir(self.pod_logs_dir)
        except OSError:
            return
        for name in log_dirs_to_remove(names, gone):
            path = os.path.join(self.pod_logs_dir, name)
            if os.path.islink(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
