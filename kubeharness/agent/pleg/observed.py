"""The pods as the agent sees them in the runtime: sandboxes and containers grouped by pod uid.

Kubelet's ``kubecontainer.PodStatus``, reduced to what the agent uses and made of plain frozen values. It is
built from what CRI answers (:func:`from_cri`): ``ListPodSandbox`` and ``ListContainers`` items, plus the
``ContainerStatus`` and ``PodSandboxStatus`` replies where the caller fetched them (the list items lack
exit codes, start and finish times, IPs). Sandboxes are grouped by their metadata uid and containers by
the pod uid label (``pod.labels``), as kubelet does; both are kept newest first, so the first container of
a name is its current instance and the second its previous one.

Read by ``pleg.pleg`` (which builds them), ``runtime.actions`` and ``status.podstatus``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from kubeharness.agent.pod import labels
from kubeharness.wire.cri import api_pb2 as api

# sandbox states
READY, NOTREADY = "ready", "notready"
# container states
CREATED, RUNNING, EXITED, UNKNOWN = "created", "running", "exited", "unknown"

_CONTAINER_STATES = {api.CONTAINER_CREATED: CREATED, api.CONTAINER_RUNNING: RUNNING,
                     api.CONTAINER_EXITED: EXITED, api.CONTAINER_UNKNOWN: UNKNOWN}
_NETWORK_MODES = {api.POD: "pod", api.CONTAINER: "container", api.NODE: "node", api.TARGET: "target"}


@dataclass(frozen=True)
class ObservedSandbox:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str  # READY or NOTREADY
    created_ns: int
    # from PodSandboxStatus; None when no status was fetched (or it had no network part)
    ips: tuple[str, ...] | None = None
    network_mode: str | None = None  # "pod" or "node" (host network)

    @property
    def ready(self) -> bool:
        return self.state == READY


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    sandbox_id: str
    state: str  # CREATED, RUNNING, EXITED or UNKNOWN
    attempt: int
    restart_count: int
    created_ns: int
    started_ns: int = 0
    finished_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    image: str = ""
    image_ref: str = ""
    spec_hash: str = ""
    container_type: str = ""  # labels.TYPE_INIT or TYPE_APP ("" if the annotation is missing)


@dataclass(frozen=True)
class ObservedPod:
    uid: str
    name: str
    namespace: str
    sandboxes: tuple[ObservedSandbox, ...] = ()  # newest first
    containers: tuple[ObservedContainer, ...] = ()  # newest first

    def latest(self, name: str) -> ObservedContainer | None:
        """The newest instance of the container ``name`` (kubelet's FindContainerStatusByName)."""
        return next((c for c in self.containers if c.name == name), None)

    def instances(self, name: str) -> tuple[ObservedContainer, ...]:
        """Every instance of ``name``, newest first."""
        return tuple(c for c in self.containers if c.name == name)

    def latest_exited(self, name: str) -> ObservedContainer | None:
        return next((c for c in self.containers if c.name == name and c.state == EXITED), None)

    @property
    def ips(self) -> tuple[str, ...]:
        """The pod's IPs: those of the newest sandbox, if it is ready (as kubelet's GetPodStatus)."""
        if self.sandboxes and self.sandboxes[0].ready:
            return self.sandboxes[0].ips or ()
        return ()


def _sandbox(item: api.PodSandbox, status: api.PodSandboxStatus | None) -> ObservedSandbox:
    ips: tuple[str, ...] | None = None
    mode: str | None = None
    if status is not None:
        if status.HasField("network"):
            ips = tuple(ip for ip in (status.network.ip, *(p.ip for p in status.network.additional_ips)) if ip)
        if status.HasField("linux"):
            mode = _NETWORK_MODES.get(status.linux.namespaces.options.network)
    state = READY if (status.state if status is not None else item.state) == api.SANDBOX_READY else NOTREADY
    return ObservedSandbox(id=item.id, name=item.metadata.name, namespace=item.metadata.namespace,
                           uid=item.metadata.uid, attempt=item.metadata.attempt, state=state,
                           created_ns=item.created_at, ips=ips, network_mode=mode)


def _container(item: api.Container, status: api.ContainerStatus | None) -> ObservedContainer:
    notes = labels.notes_from_annotations(status.annotations if status is not None else item.annotations)
    listed = ObservedContainer(
        id=item.id, name=labels.identity_from_labels(item.labels).container_name or item.metadata.name,
        sandbox_id=item.pod_sandbox_id, state=_CONTAINER_STATES.get(item.state, UNKNOWN),
        attempt=item.metadata.attempt, restart_count=notes.restart_count, created_ns=item.created_at,
        image=item.image.image, image_ref=item.image_ref, spec_hash=notes.spec_hash,
        container_type=notes.container_type)
    if status is None:
        return listed
    return replace(listed, state=_CONTAINER_STATES.get(status.state, UNKNOWN), started_ns=status.started_at,
                   finished_ns=status.finished_at, exit_code=status.exit_code, reason=status.reason,
                   message=status.message, image=status.image.image or listed.image,
                   image_ref=status.image_ref or listed.image_ref)


def group_by_uid(sandboxes: Iterable[api.PodSandbox], containers: Iterable[api.Container],
                 ) -> dict[str, tuple[list[api.PodSandbox], list[api.Container]]]:
    """The raw list items per pod uid (sandboxes by metadata uid, containers by the pod uid label)."""
    groups: dict[str, tuple[list[api.PodSandbox], list[api.Container]]] = {}
    for s in sandboxes:
        groups.setdefault(s.metadata.uid, ([], []))[0].append(s)
    for c in containers:
        uid = labels.identity_from_labels(c.labels).pod_uid
        groups.setdefault(uid, ([], []))[1].append(c)
    return groups


def from_cri(sandboxes: Iterable[api.PodSandbox], containers: Iterable[api.Container],
             statuses: Mapping[str, api.ContainerStatus] | None = None,
             sandbox_statuses: Mapping[str, api.PodSandboxStatus] | None = None) -> dict[str, ObservedPod]:
    """Group the runtime's objects into pods by uid; statuses (by object id) fill in what the lists lack."""
    statuses = statuses or {}
    sandbox_statuses = sandbox_statuses or {}
    pods: dict[str, ObservedPod] = {}
    for uid, (sbs, ctrs) in group_by_uid(sandboxes, containers).items():
        observed_sbs = sorted((_sandbox(s, sandbox_statuses.get(s.id)) for s in sbs),
                              key=lambda s: s.created_ns, reverse=True)
        observed_cs = sorted((_container(c, statuses.get(c.id)) for c in ctrs),
                             key=lambda c: c.created_ns, reverse=True)
        if sbs:
            name, namespace = sbs[0].metadata.name, sbs[0].metadata.namespace
        else:
            ident = labels.identity_from_labels(ctrs[0].labels)
            name, namespace = ident.pod_name, ident.pod_namespace
        pods[uid] = ObservedPod(uid=uid, name=name, namespace=namespace, sandboxes=tuple(observed_sbs),
                                containers=tuple(observed_cs))
    return pods
