"""Node allocatable admission, as kubelet's ``lifecycle/predicate.go`` with the scheduler's ``noderesources`` fit.

A new pod is admitted when its requests fit what the node's allocatable leaves after the requests of the pods
already admitted (kubelet's active pods), resource by resource in the scheduler's order: the pod count first
(``maxPods``), then ``cpu`` (millicores), ``memory``, ``ephemeral-storage`` (bytes), then huge pages and
extended resources (sorted by name). A resource the pod does not request (zero) is never checked; an extended
resource (a name with a domain outside ``kubernetes.io``) the node does not have at all is dropped from the
pod's requests first (kubelet's ``removeMissingExtendedResources``). A pod's requests are its effective ones
(the larger of the app containers' sum and any one init container).

Of the resources that do not fit only the first is reported, with kubelet's reason ``OutOf<resource>`` and the
``InsufficientResourceError`` message ``Node didn't have enough resource: cpu, requested: 500, used: 1800,
capacity: 2000`` (capacity is the allocatable amount).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kubeharness.agent.pod.model import Pod
from kubeharness.agent.pod.qos import pod_requests

PODS, CPU, MEMORY, EPHEMERAL_STORAGE = "pods", "cpu", "memory", "ephemeral-storage"
_NATIVE_ORDER = (CPU, MEMORY, EPHEMERAL_STORAGE)


def is_extended(name: str) -> bool:
    """Kubelet's IsExtendedResourceName: a domain-prefixed name outside ``kubernetes.io``, not ``requests.``."""
    if "/" not in name or name.startswith("requests."):
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def is_scalar(name: str) -> bool:
    """The resources the scheduler counts beyond cpu, memory and ephemeral-storage: huge pages, extended ones
    and ``kubernetes.io/``-prefixed native ones (attachable volumes and the like)."""
    return name.startswith("hugepages-") or "/" in name


def requests_of(pod: Pod, allocatable: Mapping[str, int]) -> dict[str, int]:
    """The pod's effective requests that admission looks at (extended resources the node lacks dropped)."""
    return {name: amount for name, amount in pod_requests(pod).items()
            if (name in _NATIVE_ORDER or is_scalar(name)) and not (is_extended(name) and name not in allocatable)}


def insufficient(pod: Pod, allocatable: Mapping[str, int], admitted: Iterable[Pod]) -> tuple[str, str] | None:
    """None when ``pod`` fits beside ``admitted`` on a node with ``allocatable`` (``pods`` is ``maxPods``),
    else kubelet's (reason, message) for the first resource that does not fit."""
    others = list(admitted)
    capacity = allocatable.get(PODS)
    if capacity is not None and len(others) + 1 > capacity:
        return _refusal(PODS, 1, len(others), capacity)
    wanted = requests_of(pod, allocatable)
    used: dict[str, int] = {}
    for other in others:
        for name, amount in pod_requests(other).items():
            used[name] = used.get(name, 0) + amount
    names = [*_NATIVE_ORDER, *sorted(n for n in wanted if n not in _NATIVE_ORDER)]
    for name in names:
        requested = wanted.get(name, 0)
        if requested > 0 and requested > allocatable.get(name, 0) - used.get(name, 0):
            return _refusal(name, requested, used.get(name, 0), allocatable.get(name, 0))
    return None


def _refusal(name: str, requested: int, used: int, capacity: int) -> tuple[str, str]:
    return (f"OutOf{name}",
            f"Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}")
