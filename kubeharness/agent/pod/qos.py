"""A pod's QoS class, its cgroup parent and the Linux resources kubelet asks CRI for.

All pure functions of the pod (and of node facts passed in), with kubelet's rules:

- **QoS class** (``pkg/apis/core/v1/helper/qos``): over CPU and memory of all init and app containers,
  BestEffort when no container requests or limits anything, Guaranteed when every container limits both
  and the summed requests equal the summed limits, Burstable otherwise. Zero quantities count as unset.
- **cgroup parent** (``pkg/kubelet/cm``): with cgroupsPerQOS the pod lives in
  ``<root>/kubepods[/burstable|/besteffort]/pod<uid>`` (Guaranteed pods directly under kubepods). With the
  systemd driver each component is escaped (``-`` becomes ``_``) and the name expanded into the slice path
  kubelet hands to CRI, ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``;
  the runtime takes the last element. Without cgroupsPerQOS kubelet sends no parent at all ("").
- **container resources** (``kuberuntime_container_linux.go``, ``cm/helpers_linux.go``): CPU shares from
  the request (the limit when only a limit is set; 2 at least, 262144 at most), CFS quota from the limit
  over a 100 ms period (1 ms at least, 0 for no limit) when CFS quota is enforced, the memory limit, and
  ``oom_score_adj`` (``pkg/kubelet/qos/policy.go``): -997 for Guaranteed and node-critical pods, 1000 for
  BestEffort, for Burstable ``1000 - 1000 * request / capacity`` kept within 3..999.
- **sandbox resources**: the same conversion over the pod's effective requests and limits (the larger of
  the app containers' sum and any one init container), which kubelet puts in
  ``LinuxPodSandboxConfig.resources``. Pod overhead (from a RuntimeClass) is not modelled.

Quantities come from :class:`~kubeharness.agent.pod.model.Resources`: CPU in millicores, memory in bytes.
"""

from __future__ import annotations

from kubeharness.agent.pod.model import Container, Pod
from kubeharness.wire.cri import api_pb2 as api

GUARANTEED, BURSTABLE, BEST_EFFORT = "Guaranteed", "Burstable", "BestEffort"
CGROUPFS, SYSTEMD = "cgroupfs", "systemd"
CPU, MEMORY = "cpu", "memory"

MIN_SHARES, MAX_SHARES, SHARES_PER_CPU = 2, 262144, 1024
QUOTA_PERIOD_US, MIN_QUOTA_US = 100_000, 1000
GUARANTEED_OOM_SCORE_ADJ, BEST_EFFORT_OOM_SCORE_ADJ = -997, 1000
# priority of system-node-critical / system-cluster-critical classes and above
SYSTEM_CRITICAL_PRIORITY = 2_000_000_000
NODE_CRITICAL_CLASS = "system-node-critical"
STATIC_SOURCES = ("file", "http")  # kubelet's static pod sources (the model's Pod.source values)
_QOS_RESOURCES = (CPU, MEMORY)


def pod_qos(pod: Pod) -> str:
    """Kubelet's QoS class of ``pod``: Guaranteed, Burstable or BestEffort."""
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    guaranteed = True
    for c in (*pod.spec.containers, *pod.spec.init_containers):
        for name in _QOS_RESOURCES:
            if c.resources.requests.get(name, 0) > 0:
                requests[name] = requests.get(name, 0) + c.resources.requests[name]
            if c.resources.limits.get(name, 0) > 0:
                limits[name] = limits.get(name, 0) + c.resources.limits[name]
        if not all(c.resources.limits.get(name, 0) > 0 for name in _QOS_RESOURCES):
            guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed and all(limits.get(name) == value for name, value in requests.items()) \
            and len(requests) == len(limits):
        return GUARANTEED
    return BURSTABLE


def pod_cgroup_name(pod: Pod, cgroup_root: str = "/") -> tuple[str, ...]:
    """The pod cgroup's components under cgroupsPerQOS, e.g. ``("kubepods", "burstable", "pod<uid>")``."""
    root = tuple(part for part in cgroup_root.split("/") if part)
    qos = pod_qos(pod)
    tier = () if qos == GUARANTEED else (qos.lower(),)
    return (*root, "kubepods", *tier, f"pod{pod.uid}")


def systemd_slice_path(components: tuple[str, ...]) -> str:
    """Expand cgroup components into a systemd slice path (kubelet's ``CgroupName.ToSystemd``)."""
    if not components:
        return "/"
    escaped = [part.replace("-", "_") for part in components]
    return "/" + "/".join("-".join(escaped[: i + 1]) + ".slice" for i in range(len(escaped)))


def pod_cgroup_parent(pod: Pod, *, cgroups_per_qos: bool = True, cgroup_root: str = "/",
                      cgroup_driver: str = CGROUPFS) -> str:
    """What kubelet puts in ``PodSandboxConfig.linux.cgroup_parent`` for ``pod``."""
    if not cgroups_per_qos:
        return ""
    components = pod_cgroup_name(pod, cgroup_root)
    if cgroup_driver == SYSTEMD:
        return systemd_slice_path(components)
    if cgroup_driver != CGROUPFS:
        raise ValueError(f"unknown cgroup driver {cgroup_driver!r} (want {CGROUPFS} or {SYSTEMD})")
    return "/" + "/".join(components)


def milli_cpu_to_shares(milli_cpu: int) -> int:
    if milli_cpu == 0:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli_cpu * SHARES_PER_CPU // 1000))


def milli_cpu_to_quota(milli_cpu: int, period_us: int = QUOTA_PERIOD_US) -> int:
    """CFS quota in microseconds for a CPU limit; 0 (no quota) for no limit."""
    if milli_cpu == 0:
        return 0
    return max(MIN_QUOTA_US, milli_cpu * period_us // 1000)


def is_node_critical(pod: Pod) -> bool:
    """Kubelet's IsNodeCriticalPod: critical (static or priority >= 2e9) and in system-node-critical.

    Every pod the agent runs today is a static pod (from a file or a URL), hence critical; the class name
    is read from the pod object because the model does not carry it.
    """
    spec = pod.raw.get("spec") if isinstance(pod.raw, dict) else None
    class_name = spec.get("priorityClassName", "") if isinstance(spec, dict) else ""
    critical = pod.source in STATIC_SOURCES or pod.spec.priority >= SYSTEM_CRITICAL_PRIORITY
    return critical and class_name == NODE_CRITICAL_CLASS


def oom_score_adj(pod: Pod, container: Container, memory_capacity: int) -> int:
    """The ``oom_score_adj`` kubelet gives ``container``'s processes on a node with ``memory_capacity`` bytes."""
    if is_node_critical(pod):
        return GUARANTEED_OOM_SCORE_ADJ
    qos = pod_qos(pod)
    if qos == GUARANTEED:
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == BEST_EFFORT:
        return BEST_EFFORT_OOM_SCORE_ADJ
    request = container.resources.requests.get(MEMORY, 0)
    adj = 1000 - (1000 * request) // memory_capacity if memory_capacity > 0 else 1000
    floor = 1000 + GUARANTEED_OOM_SCORE_ADJ
    if adj < floor:
        return floor
    if adj == BEST_EFFORT_OOM_SCORE_ADJ:
        return adj - 1
    return adj


def linux_resources(cpu_request: int | None, cpu_limit: int, memory_limit: int, *, cpu_cfs_quota: bool = True,
                    cpu_period_us: int = QUOTA_PERIOD_US) -> api.LinuxContainerResources:
    """Kubelet's conversion of requests and limits to cgroup values (``calculateLinuxResources``)."""
    shares = milli_cpu_to_shares(cpu_limit if cpu_request is None and cpu_limit else (cpu_request or 0))
    res = api.LinuxContainerResources(cpu_shares=shares, memory_limit_in_bytes=memory_limit)
    if cpu_cfs_quota:
        res.cpu_period = cpu_period_us
        res.cpu_quota = milli_cpu_to_quota(cpu_limit, cpu_period_us)
    return res


def container_resources(pod: Pod, container: Container, *, memory_capacity: int, cpu_cfs_quota: bool = True,
                        cpu_period_us: int = QUOTA_PERIOD_US) -> api.LinuxContainerResources:
    """``ContainerConfig.linux.resources`` for ``container`` of ``pod``."""
    r = container.resources
    res = linux_resources(r.requests.get(CPU), r.limits.get(CPU, 0), r.limits.get(MEMORY, 0),
                          cpu_cfs_quota=cpu_cfs_quota, cpu_period_us=cpu_period_us)
    res.oom_score_adj = oom_score_adj(pod, container, memory_capacity)
    return res


def _effective(pod: Pod, kind: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in pod.spec.containers:
        for name, value in getattr(c.resources, kind).items():
            total[name] = total.get(name, 0) + value
    for c in pod.spec.init_containers:
        for name, value in getattr(c.resources, kind).items():
            total[name] = max(total.get(name, 0), value)
    return total


def pod_requests(pod: Pod) -> dict[str, int]:
    """The pod's effective requests: max(sum of app containers, each init container), per resource."""
    return _effective(pod, "requests")


def pod_limits(pod: Pod) -> dict[str, int]:
    """The pod's effective limits, computed like :func:`pod_requests`."""
    return _effective(pod, "limits")


def sandbox_resources(pod: Pod, *, cpu_cfs_quota: bool = True,
                      cpu_period_us: int = QUOTA_PERIOD_US) -> api.LinuxContainerResources:
    """``LinuxPodSandboxConfig.resources``: the pod-level view of the same conversion."""
    requests, limits = pod_requests(pod), pod_limits(pod)
    return linux_resources(requests.get(CPU), limits.get(CPU, 0), limits.get(MEMORY, 0),
                           cpu_cfs_quota=cpu_cfs_quota, cpu_period_us=cpu_period_us)
