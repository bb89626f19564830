"""The eviction manager: one :meth:`EvictionManager.synchronize` pass every ``evictionMonitoringPeriod`` (10 s),
as kubelet's ``eviction_manager.go``.

A pass: read the Summary, observe every signal (``signals.observe``), find the thresholds met (plus those met
before whose minimum reclaim is not yet satisfied), note when each was first met and when each node condition
was last seen; a condition holds until it has not been seen for ``evictionPressureTransitionPeriod`` (5 m).
Thresholds whose grace period has passed (at once for hard ones) and whose signal has a newer observation
than the last pass drive eviction: memory first; for a disk signal node-level resources are reclaimed first
(dead containers, then unused images) and a fresh Summary decides whether a pod must still go. The pods are
ranked (``rank``) and the first that is not critical is evicted: its status becomes Failed with reason
``Evicted`` and kubelet's message, a ``DisruptionTarget`` condition, an ``Evicted`` event; hard thresholds
kill with kubelet's 1 s grace, soft ones with the pod's grace capped at ``evictionMaxPodGracePeriod``. At most
one pod per pass; the loop then waits (up to 30 s, polling every second) for that pod to be cleaned up
before the next pass. Before reclaiming anything the node gets kubelet's ``EvictionThresholdMet`` event
("Attempting to reclaim memory").

Critical pods are never evicted (kubelet's ``IsCriticalPod``: static pods, mirror pods, priority >= 2e9);
every pod of this agent comes from a file or a URL, hence is static. **Our extension**: a pod annotated
``kubeharness.io/evictable: "true"`` is treated as an ordinary pod, so that eviction can be exercised without
an API server. The same test admits new pods under pressure (:meth:`admit`): critical pods always, others
not under disk or PID pressure, BestEffort pods not under memory pressure unless they tolerate the
memory-pressure taint; a refusal has kubelet's reason ``Evicted`` and message
``The node had condition: [MemoryPressure]. ``.

Local ephemeral storage (``localStorageCapacityIsolation``, on by default; kubelet's ``localStorageEviction``):
every pass, before the thresholds drive anything, each active pod is checked against its ephemeral-storage
limits and every pod over one is evicted at once (1 s grace, no DisruptionTarget condition, all such pods in
the same pass): a pod whose ``ephemeralStorage`` usage (its containers' writable layers and logs and its
local volumes) exceeds the sum of its containers' limits ("Pod ephemeral local storage usage exceeds the
total limit of containers 2Mi. "), else a container whose logs plus writable layer (logs only with a
dedicated image filesystem) exceed its own limit ("Container x exceeded its local ephemeral storage limit
"1Mi". "). emptyDir ``sizeLimit`` is kubelet's first check; there are no volumes yet, so it is not made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeharness.agent.config.kubelet import EvictionThreshold
from kubeharness.agent.events import WARNING, Recorder
from kubeharness.agent.eviction import rank, signals
from kubeharness.agent.eviction.messages import (
    ephemeral_storage_violation,
    eviction_message,
)
from kubeharness.agent.eviction.signals import (
    DISK_PRESSURE,
    DISK_SIGNALS,
    IMAGEFS_AVAILABLE,
    IMAGEFS_INODES_FREE,
    MEMORY,
    MEMORY_PRESSURE,
    PID_PRESSURE,
    SIGNAL_TO_CONDITION,
    SIGNAL_TO_RESOURCE,
    Observation,
)
from kubeharness.agent.nodestatus.node import PRESSURE_TEXTS
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.pod.qos import BEST_EFFORT, STATIC_SOURCES, SYSTEM_CRITICAL_PRIORITY, pod_qos
from kubeharness.agent.stats.types import PodStats, Summary
from kubeharness.clock import Clock, seconds_to_ns

log = logging.getLogger(__name__)

REASON = "Evicted"
THRESHOLD_MET = "EvictionThresholdMet"
DISRUPTION_TARGET, TERMINATION_BY_KUBELET = "DisruptionTarget", "TerminationByKubelet"
EVICTABLE_ANNOTATION = "kubeharness.io/evictable"  # ours: "true" makes a static pod an ordinary one
MONITORING_PERIOD_S = 10.0  # kubelet's evictionMonitoringPeriod
IMMEDIATE_GRACE_S = 1  # kubelet's immediateEvictionGracePeriodSeconds (hard thresholds)
CLEANUP_TIMEOUT_S, CLEANUP_POLL_S = 30.0, 1.0
MEMORY_PRESSURE_TAINT = "node.kubernetes.io/memory-pressure"
CONDITION_ORDER = (MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE)
# kubelet's containerEphemeralStorageMessageFmt and podEphemeralStorageMessageFmt

Reclaim = Callable[[], Awaitable[object]]


def is_critical(pod: Pod) -> bool:
    """Kubelet's IsCriticalPod (static, or priority >= 2e9), with our ``kubeharness.io/evictable`` extension."""
    static = pod.source in STATIC_SOURCES and pod.annotations.get(EVICTABLE_ANNOTATION) != "true"
    return static or pod.spec.priority >= SYSTEM_CRITICAL_PRIORITY


def tolerates_memory_pressure(pod: Pod) -> bool:
    """Whether the pod tolerates the ``node.kubernetes.io/memory-pressure:NoSchedule`` taint."""
    spec = pod.raw.get("spec") if isinstance(pod.raw, dict) else None
    for t in (spec.get("tolerations") or []) if isinstance(spec, dict) else []:
        if not isinstance(t, dict) or t.get("effect", "") not in ("", "NoSchedule"):
            continue
        key, operator = t.get("key", ""), t.get("operator", "Equal")
        if operator == "Exists" and key in ("", MEMORY_PRESSURE_TAINT):
            return True
        if operator in ("Equal", "") and key == MEMORY_PRESSURE_TAINT and t.get("value", "") == "":
            return True
    return False


@dataclass(frozen=True)
class Eviction:
    """What the manager asks of the agent for one pod."""

    pod: Pod
    grace_period_s: int
    message: str
    disruption_condition: bool = True  # kubelet's DisruptionTarget condition (not for local storage limits)


def _dedicated_image_fs(summary: Summary) -> bool:
    """Whether the image filesystem is not the node's (kubelet asks cAdvisor for the devices; we compare the
    figures the Summary gives)."""
    node, image = summary.node.fs, summary.node.image_fs
    if image is None or node is None:
        return False
    return (image.capacity_bytes, image.available_bytes, image.inodes) != \
        (node.capacity_bytes, node.available_bytes, node.inodes)


class EvictionManager:
    """Kubelet's eviction manager over the agent: ``summary`` reads the stats, ``active_pods`` lists the pods that
    may be evicted, ``evict`` ends one (the agent marks it, kills it and reports it Failed), ``cleaned_up``
    says when an evicted pod's containers and sandboxes are gone; ``reclaim_containers`` and ``reclaim_images``
    free node-level disk before a pod is evicted for a disk signal."""

    def __init__(self, thresholds: Sequence[EvictionThreshold], clock: Clock, *,
                 summary: Callable[[], Awaitable[Summary]], active_pods: Callable[[], Sequence[Pod]],
                 evict: Callable[[Eviction], None], cleaned_up: Callable[[Pod], bool],
                 recorder: Recorder | None = None, reclaim_containers: Reclaim | None = None,
                 reclaim_images: Reclaim | None = None, pressure_transition_period_s: float = 300.0,
                 max_pod_grace_period_s: int = 0, monitoring_period_s: float = MONITORING_PERIOD_S,
                 dedicated_image_fs: bool | None = None,
                 on_conditions: Callable[[Sequence[str]], None] | None = None,
                 local_storage_capacity_isolation: bool = False) -> None:
        self.thresholds = list(thresholds)
        for signal in sorted({t.signal for t in self.thresholds} & signals.NOT_OBSERVED):
            log.warning("eviction manager: the %s signal is accepted but this agent does not observe it: a "
                        "threshold on it is never met", signal)
        self.clock = clock
        self.summary = summary
        self.active_pods = active_pods
        self.evict = evict
        self.cleaned_up = cleaned_up
        self.recorder = recorder
        self.reclaim_containers = reclaim_containers
        self.reclaim_images = reclaim_images
        self.transition_ns = seconds_to_ns(pressure_transition_period_s)
        self.max_pod_grace_period_s = max_pod_grace_period_s
        self.monitoring_period_s = monitoring_period_s
        self.dedicated_image_fs = dedicated_image_fs
        self.on_conditions = on_conditions  # told the node conditions after every pass (the Node's status)
        self.local_storage_capacity_isolation = local_storage_capacity_isolation
        # state between passes (kubelet's managerImpl fields)
        self.node_conditions: list[str] = []
        self.conditions_last_observed_ns: dict[str, int] = {}
        self.conditions_since_ns: dict[str, int] = {}  # when each condition last changed (lastTransitionTime)
        self.first_observed_ns: dict[EvictionThreshold, int] = {}
        self.thresholds_met: list[EvictionThreshold] = []
        self.last_observations: dict[str, Observation] = {}
        self.evictions: list[Eviction] = []  # every eviction so far, oldest first

    # -- the loop and the pass ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Kubelet's Start: a pass, then wait for an evicted pod to be cleaned up or the monitoring period."""
        while True:
            try:
                evicted = await self.synchronize_all()
            except Exception:
                log.exception("eviction manager: failed to synchronize")
                evicted = []
            if evicted:
                await self.wait_for_cleanup(*evicted)
            else:
                await self.clock.sleep(self.monitoring_period_s)

    async def wait_for_cleanup(self, *pods: Pod) -> bool:
        """Poll every second for up to 30 s until every one of ``pods`` is cleaned up (kubelet's
        waitForPodsCleanup)."""
        deadline = self.clock.now_ns() + seconds_to_ns(CLEANUP_TIMEOUT_S)
        while self.clock.now_ns() < deadline:
            await self.clock.sleep(CLEANUP_POLL_S)
            if all(self.cleaned_up(pod) for pod in pods):
                return True
        log.info("eviction manager: timed out waiting for pods %s to be cleaned up",
                 ", ".join(pod.full_name for pod in pods))
        return False

    async def synchronize(self) -> Pod | None:
        """One pass; the (first) pod evicted, or None."""
        evicted = await self.synchronize_all()
        return evicted[0] if evicted else None

    async def synchronize_all(self) -> list[Pod]:
        """One pass; every pod evicted (several only for local storage limits)."""
        if not self.thresholds and not self.local_storage_capacity_isolation:
            return []
        active = list(self.active_pods())
        try:
            summary = await self.summary()
        except Exception as err:  # kubelet: "failed to get summary stats", and nothing else this pass
            log.warning("eviction manager: failed to get summary stats: %s", err)
            return []
        if self.dedicated_image_fs is None:
            self.dedicated_image_fs = _dedicated_image_fs(summary)
        observations = signals.observe(summary)
        met = signals.thresholds_met(self.thresholds, observations)
        if self.thresholds_met:  # met before and minimum reclaim not yet satisfied
            met += [t for t in signals.thresholds_met(self.thresholds_met, observations, enforce_min_reclaim=True)
                    if t not in met]
        now = self.clock.now_ns()
        first_observed = {t: self.first_observed_ns.get(t, now) for t in met}
        for condition in {SIGNAL_TO_CONDITION[t.signal] for t in met if t.signal in SIGNAL_TO_CONDITION}:
            self.conditions_last_observed_ns[condition] = now
        conditions = [c for c in CONDITION_ORDER if c in self.conditions_last_observed_ns
                      and now - self.conditions_last_observed_ns[c] < self.transition_ns]
        for c in CONDITION_ORDER:
            if (c in conditions) != (c in self.node_conditions):
                self.conditions_since_ns[c] = now
        due = [t for t, at in first_observed.items() if now - at >= seconds_to_ns(t.grace_period_s)]
        self.node_conditions = conditions
        if self.on_conditions is not None:
            self.on_conditions(conditions)
        self.first_observed_ns = first_observed
        self.thresholds_met = due
        updated = [t for t in due if t.signal in observations and (
            t.signal not in self.last_observations or observations[t.signal].time_ns == 0
            or observations[t.signal].time_ns > self.last_observations[t.signal].time_ns)]
        self.last_observations = observations
        by_uid = {s.pod_ref.uid: s for s in summary.pods}
        if self.local_storage_capacity_isolation:
            evicted = self._local_storage_eviction(active, by_uid)
            if evicted:
                return evicted
        if not updated:
            return []
        updated.sort(key=lambda t: 0 if SIGNAL_TO_RESOURCE.get(t.signal) == MEMORY
                     else (1 if t.signal in SIGNAL_TO_RESOURCE else 2))
        to_reclaim = next((t for t in updated if t.signal in SIGNAL_TO_RESOURCE), None)
        if to_reclaim is None:
            return []
        resource = SIGNAL_TO_RESOURCE[to_reclaim.signal]
        log.info("eviction manager: attempting to reclaim %s", resource)
        if self.recorder is not None:  # kubelet's node event before any reclaim
            self.recorder.record_node(WARNING, THRESHOLD_MET, f"Attempting to reclaim {resource}")
        if await self._reclaim_node_level(to_reclaim.signal):
            log.info("eviction manager: able to reduce %s pressure without evicting pods", resource)
            return []
        if not active:
            log.error("eviction manager: eviction thresholds have been met, but no pods are active to evict")
            return []

        def stats(pod: Pod) -> PodStats | None:
            return by_uid.get(pod.uid)

        ranked = rank.rankers(self.dedicated_image_fs)[to_reclaim.signal](active, stats)
        for pod in ranked:
            if is_critical(pod):
                log.error("eviction manager: cannot evict a critical pod %s", pod.full_name)
                continue
            grace = IMMEDIATE_GRACE_S if not to_reclaim.grace_period_s else \
                min(pod.spec.termination_grace_period_seconds, self.max_pod_grace_period_s)
            message = eviction_message(resource, pod, stats(pod), updated, observations)
            self._evict(Eviction(pod, grace, message))
            return [pod]
        log.info("eviction manager: unable to evict any pods from the node")
        return []

    def _evict(self, eviction: Eviction) -> None:
        pod = eviction.pod
        if self.recorder is not None:
            self.recorder.record(pod.namespace, pod.name, pod.uid, "", WARNING, REASON, eviction.message)
        self.evictions.append(eviction)
        log.info("eviction manager: evicting pod %s: %s", pod.full_name, eviction.message)
        self.evict(eviction)

    def _local_storage_eviction(self, active: Sequence[Pod], by_uid: Mapping[str, PodStats]) -> list[Pod]:
        """Kubelet's localStorageEviction: every active pod over an ephemeral-storage limit, evicted at once."""
        evicted = []
        for pod in active:
            stats = by_uid.get(pod.uid)
            if stats is None:
                continue
            message = ephemeral_storage_violation(pod, stats, bool(self.dedicated_image_fs))
            if message is None:
                continue
            if is_critical(pod):
                log.error("eviction manager: cannot evict a critical pod %s", pod.full_name)
                continue
            self._evict(Eviction(pod, IMMEDIATE_GRACE_S, message, disruption_condition=False))
            evicted.append(pod)
        return evicted

    async def _reclaim_node_level(self, signal: str) -> bool:
        """Kubelet's reclaimNodeLevelResources: True when, after reclaiming, no threshold (with its minimum
        reclaim) is met any more and no pod need go."""
        if signal not in DISK_SIGNALS:
            return False
        if self.dedicated_image_fs and signal not in (IMAGEFS_AVAILABLE, IMAGEFS_INODES_FREE):
            return False  # with an image filesystem, nodefs holds logs and volumes: nothing to reclaim
        funcs = [f for f in (self.reclaim_containers, self.reclaim_images) if f is not None]
        if not funcs:
            return False
        for reclaim in funcs:
            try:
                await reclaim()
            except Exception as err:
                log.info("eviction manager: unexpected error when attempting to reduce disk pressure: %s", err)
        try:
            summary = await self.summary()
        except Exception as err:
            log.error("eviction manager: failed to get summary stats after resource reclaim: %s", err)
            return False
        return not signals.thresholds_met(self.thresholds, signals.observe(summary), enforce_min_reclaim=True)

    # -- what others read ------------------------------------------------------------------------------

    def under(self, condition: str) -> bool:
        return condition in self.node_conditions

    def admit(self, pod: Pod) -> tuple[str, str] | None:
        """Kubelet's eviction admit handler: None to admit, else (reason, message)."""
        if not self.node_conditions or is_critical(pod):
            return None
        if self.node_conditions == [MEMORY_PRESSURE] and (pod_qos(pod) != BEST_EFFORT
                                                          or tolerates_memory_pressure(pod)):
            return None
        return REASON, f"The node had condition: [{' '.join(self.node_conditions)}]. "

    def conditions(self, now_ns: int | None = None) -> list[dict[str, Any]]:
        """The node's MemoryPressure, DiskPressure and PIDPressure as v1 NodeConditions (kubelet's setters)."""
        from kubeharness.agent.status.podstatus import rfc3339

        now = rfc3339(self.clock.now_ns() if now_ns is None else now_ns)
        result = []
        for c in CONDITION_ORDER:
            pressure = c in self.node_conditions
            reason, message = PRESSURE_TEXTS[c][pressure]
            since = self.conditions_since_ns.get(c)
            result.append({"type": c, "status": "True" if pressure else "False", "lastHeartbeatTime": now,
                           "lastTransitionTime": rfc3339(since) if since is not None else now,
                           "reason": reason, "message": message})
        return result
