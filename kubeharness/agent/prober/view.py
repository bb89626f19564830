"""A probe worker's view of its pod, read from the status the agent reports (kubelet's workers read the
status manager's copy): the container's id, state and ``started``, the pod's phase, IP and deletion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeharness.agent.pleg.observed import ObservedPod
from kubeharness.agent.pod.model import NEVER, Pod
from kubeharness.agent.prober.worker import ContainerView, PodView
from kubeharness.agent.status.podstatus import FAILED, SUCCEEDED


def pod_view(pod: Pod, status: Mapping[str, Any], observed: ObservedPod | None, name: str, *,
             deleting: bool) -> PodView:
    """The view of container ``name``; its start time comes from the runtime (the status has whole seconds)."""
    container: ContainerView | None = None
    for c in (*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])):
        if c.get("name") != name:
            continue
        container_id = str(c.get("containerID", "")).partition("://")[2]
        instance = observed.latest(name) if observed is not None else None
        started_at = instance.started_ns if instance is not None and instance.id == container_id else 0
        state = c.get("state", {})
        container = ContainerView(container_id, "running" in state, started_at, "terminated" in state,
                                  bool(c.get("started")))
    return PodView(terminal=status.get("phase") in (SUCCEEDED, FAILED), deleting=deleting,
                   restart_never=pod.spec.restart_policy == NEVER, pod_ip=str(status.get("podIP", "")),
                   container=container)
