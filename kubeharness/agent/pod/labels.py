"""The labels and annotations kubelet puts on CRI sandboxes and containers, written and read back.

Kubelet keeps no database of what it created: it finds its pods again by listing the runtime and reading
the labels it set (pod name, namespace, uid, container name) and the annotations it set (the container's
spec hash, its restart count, the pod's grace period, the ports...). This module builds those maps from a
:class:`~kubeharness.agent.pod.model.Pod` and turns them back into typed records. The keys are kubelet's
(``pkg/kubelet/kuberuntime/labels.go`` and ``pkg/kubelet/types/labels.go``), so a runtime that held
pods of a real kubelet shows them to the agent and the other way round.

Used by the sync loop when it creates sandboxes and containers, and by ``pleg.observed`` when it reads
the runtime's lists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from kubeharness.agent.pod.model import Container, ContainerPort, Pod

# labels (on sandboxes and containers)
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
# annotations (on containers)
CONTAINER_HASH = "io.kubernetes.container.hash"
CONTAINER_RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
CONTAINER_TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"
CONTAINER_PORTS = "io.kubernetes.container.ports"
CONTAINER_TYPE = "io.kubernetes.container.type"
POD_TERMINATION_GRACE_PERIOD = "io.kubernetes.pod.terminationGracePeriod"
POD_DELETION_GRACE_PERIOD = "io.kubernetes.pod.deletionGracePeriod"

# values of CONTAINER_TYPE
TYPE_INIT, TYPE_APP = "init", "container"
# kubelet's default terminationMessagePolicy
DEFAULT_TERMINATION_MESSAGE_POLICY = "File"

_IDENTITY = (POD_NAME, POD_NAMESPACE, POD_UID)


def sandbox_labels(pod: Pod) -> dict[str, str]:
    """The pod's own labels plus kubelet's three identity labels (which win on a clash)."""
    return {**pod.labels, POD_NAME: pod.name, POD_NAMESPACE: pod.namespace, POD_UID: pod.uid}


def sandbox_annotations(pod: Pod) -> dict[str, str]:
    """Kubelet passes the pod's annotations through unchanged."""
    return dict(pod.annotations)


def container_labels(pod: Pod, container: Container) -> dict[str, str]:
    """Only the identity labels: a container does not carry the pod's labels."""
    return {POD_NAME: pod.name, POD_NAMESPACE: pod.namespace, POD_UID: pod.uid, CONTAINER_NAME: container.name}


def _ports_json(ports: tuple[ContainerPort, ...]) -> str:
    # field names and omissions as v1.ContainerPort marshals them
    items: list[dict[str, object]] = []
    for p in ports:
        item: dict[str, object] = {}
        if p.name:
            item["name"] = p.name
        if p.host_port:
            item["hostPort"] = p.host_port
        item["containerPort"] = p.container_port
        if p.protocol:
            item["protocol"] = p.protocol
        items.append(item)
    return json.dumps(items, separators=(",", ":"))


def container_annotations(pod: Pod, container: Container, restart_count: int,
                          deletion_grace_period_s: int | None = None) -> dict[str, str]:
    """What kubelet records on a container it creates: hash, restart count, grace period, ports, type."""
    notes = {
        CONTAINER_HASH: container.spec_hash,
        CONTAINER_RESTART_COUNT: str(restart_count),
        CONTAINER_TERMINATION_MESSAGE_PATH: container.termination_message_path,
        CONTAINER_TERMINATION_MESSAGE_POLICY: container.termination_message_policy
        or DEFAULT_TERMINATION_MESSAGE_POLICY,
        POD_TERMINATION_GRACE_PERIOD: str(pod.spec.termination_grace_period_seconds),
    }
    if deletion_grace_period_s is not None:
        notes[POD_DELETION_GRACE_PERIOD] = str(deletion_grace_period_s)
    if container.ports:
        notes[CONTAINER_PORTS] = _ports_json(container.ports)
    if any(c.name == container.name for c in pod.spec.init_containers):
        notes[CONTAINER_TYPE] = TYPE_INIT
    elif any(c.name == container.name for c in pod.spec.containers):
        notes[CONTAINER_TYPE] = TYPE_APP
    return notes


@dataclass(frozen=True)
class PodIdentity:
    """Who a sandbox or container belongs to, read from its labels ("" where a label is missing)."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    container_name: str = ""


@dataclass(frozen=True)
class ContainerNotes:
    """A container's annotations as kubelet reads them back; bad or missing numbers read as 0 / None."""

    spec_hash: str = ""
    restart_count: int = 0
    termination_message_path: str = ""
    termination_message_policy: str = ""
    container_type: str = ""
    pod_termination_grace_period_s: int | None = None
    pod_deletion_grace_period_s: int | None = None
    ports: tuple[ContainerPort, ...] = ()


def identity_from_labels(labels: Mapping[str, str]) -> PodIdentity:
    return PodIdentity(labels.get(POD_NAME, ""), labels.get(POD_NAMESPACE, ""), labels.get(POD_UID, ""),
                       labels.get(CONTAINER_NAME, ""))


def user_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A sandbox's labels without kubelet's identity labels: the pod's own labels."""
    return {k: v for k, v in labels.items() if k not in _IDENTITY}


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _ports(value: str | None) -> tuple[ContainerPort, ...]:
    if not value:
        return ()
    try:
        items = json.loads(value)
        return tuple(ContainerPort(container_port=int(i["containerPort"]), protocol=str(i.get("protocol", "TCP")),
                                   name=str(i.get("name", "")), host_port=int(i.get("hostPort", 0)))
                     for i in items)
    except (ValueError, TypeError, KeyError):
        return ()


def notes_from_annotations(annotations: Mapping[str, str]) -> ContainerNotes:
    return ContainerNotes(
        spec_hash=annotations.get(CONTAINER_HASH, ""),
        restart_count=_int(annotations.get(CONTAINER_RESTART_COUNT)) or 0,
        termination_message_path=annotations.get(CONTAINER_TERMINATION_MESSAGE_PATH, ""),
        termination_message_policy=annotations.get(CONTAINER_TERMINATION_MESSAGE_POLICY, ""),
        container_type=annotations.get(CONTAINER_TYPE, ""),
        pod_termination_grace_period_s=_int(annotations.get(POD_TERMINATION_GRACE_PERIOD)),
        pod_deletion_grace_period_s=_int(annotations.get(POD_DELETION_GRACE_PERIOD)),
        ports=_ports(annotations.get(CONTAINER_PORTS)),
    )
