"""What an evicted pod is told: kubelet's eviction messages (evictionMessage, and the local ephemeral storage
limit checks whose message is also their verdict), with quantities printed as the manifest wrote them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeharness.agent.config.kubelet import EvictionThreshold, quantity_format_of
from kubeharness.agent.eviction import signals
from kubeharness.agent.eviction.signals import EPHEMERAL_STORAGE, MEMORY, SIGNAL_TO_RESOURCE, Observation, go_quantity
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.pod.qos import pod_limits
from kubeharness.agent.stats.types import PodStats

CONTAINER_EPHEMERAL_STORAGE_MESSAGE = "Container {} exceeded its local ephemeral storage limit \"{}\". "
POD_EPHEMERAL_STORAGE_MESSAGE = "Pod ephemeral local storage usage exceeds the total limit of containers {}. "


def _raw_quantity(pod: Pod, container_name: str, kind: str, resource: str) -> Any:
    """The quantity as written in the manifest (``kind``: requests or limits), None when there is none."""
    spec = pod.raw.get("spec") if isinstance(pod.raw, dict) else None
    raw: Any = None
    for key in ("containers", "initContainers"):
        for c in (spec.get(key) or []) if isinstance(spec, dict) else []:
            if isinstance(c, dict) and c.get("name") == container_name:
                raw = ((c.get("resources") or {}).get(kind) or {}).get(resource)
    return raw


def _request_string(pod: Pod, container_name: str, resource: str, amount: int) -> str:
    """The container's request as Go prints the quantity it was written as (``0`` when there is none)."""
    raw = _raw_quantity(pod, container_name, "requests", resource)
    if raw is None or not amount:
        return "0"
    return go_quantity(amount, quantity_format_of(raw))


def _limit_string(pod: Pod, container_name: str, amount: int) -> str:
    """An ephemeral-storage limit as Go prints the quantity it was written as."""
    raw = _raw_quantity(pod, container_name, "limits", EPHEMERAL_STORAGE)
    return go_quantity(amount, quantity_format_of(raw)) if raw is not None else go_quantity(amount)


def _used(fs: Any) -> int:
    return (fs.used_bytes or 0) if fs is not None else 0


def ephemeral_storage_violation(pod: Pod, stats: PodStats, dedicated_image_fs: bool) -> str | None:
    """Kubelet's podEphemeralStorageLimitEviction then containerEphemeralStorageLimitEviction: the eviction
    message when ``pod`` is over the sum of its containers' ephemeral-storage limits or one container over
    its own, else None."""
    limit = pod_limits(pod).get(EPHEMERAL_STORAGE)
    if limit is not None:
        usage = _used(stats.ephemeral_storage)
        if usage > limit:
            first = next((c.name for c in (*pod.spec.containers, *pod.spec.init_containers)
                          if EPHEMERAL_STORAGE in c.resources.limits), "")
            return POD_EPHEMERAL_STORAGE_MESSAGE.format(_limit_string(pod, first, limit))
    limits = {c.name: c.resources.limits[EPHEMERAL_STORAGE] for c in pod.spec.containers
              if c.resources.limits.get(EPHEMERAL_STORAGE)}
    for cs in stats.containers:
        if cs.name not in limits:
            continue
        used = _used(cs.logs) + (0 if dedicated_image_fs else _used(cs.rootfs))
        if used > limits[cs.name]:
            return CONTAINER_EPHEMERAL_STORAGE_MESSAGE.format(cs.name, _limit_string(pod, cs.name, limits[cs.name]))
    return None


def eviction_message(resource: str, pod: Pod, stats: PodStats | None, thresholds: Sequence[EvictionThreshold],
                     observations: Mapping[str, Observation]) -> str:
    """Kubelet's evictionMessage: the starved resource, the threshold and what was available, and each container
    using more than it requested."""
    message = f"The node was low on resource: {resource}. "
    for t in thresholds:
        observed = observations.get(t.signal)
        if SIGNAL_TO_RESOURCE.get(t.signal) == resource and observed is not None:
            available = go_quantity(observed.available, observed.quantity_format)
            message += f"Threshold quantity: {signals.threshold_string(t, observed)}, available: {available}. "
            break
    if stats is None:
        return message
    containers = {c.name: c for c in (*pod.spec.containers, *pod.spec.init_containers)}
    for cs in stats.containers:
        container = containers.get(cs.name)
        if container is None:
            continue
        usage: int | None = None
        if resource == EPHEMERAL_STORAGE:
            if cs.rootfs is not None and cs.rootfs.used_bytes is not None and cs.logs is not None \
                    and cs.logs.used_bytes is not None:
                usage = cs.rootfs.used_bytes + cs.logs.used_bytes
        elif resource == MEMORY and cs.memory is not None:
            usage = cs.memory.working_set_bytes
        request = container.resources.requests.get(resource, 0)
        if usage is not None and usage > request:
            message += (f"Container {cs.name} was using {go_quantity(usage)}, request is "
                        f"{_request_string(pod, cs.name, resource, request)}, has larger consumption of {resource}. ")
    return message
