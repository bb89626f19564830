"""Stats and metrics RPCs: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors and ListPodSandboxMetrics.

The numbers come from the behaviour (CPU millicores, memory allocated so far, writable-layer bytes)
judged at the clock's "now", so an eviction manager sees memory grow exactly as the scenario says.
A container that is not running reports its attributes and writable layer but no CPU or memory,
as containerd does for a container without a task.
"""

from __future__ import annotations

from kubeharness.emulators.cri.model import Container, Sandbox
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.validate import require_id
from kubeharness.errors import KubeharnessError
from kubeharness.wire.cri import api_pb2 as cri

PAUSE_MEMORY_BYTES = 300 * 1024

# (name, help, label keys, type) of the metrics ListPodSandboxMetrics reports, cAdvisor's names.
METRICS = (
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", cri.COUNTER),
    ("container_memory_working_set_bytes", "Current working set in bytes.", cri.GAUGE),
    ("container_fs_usage_bytes", "Number of bytes consumed by the container's writable layer.", cri.GAUGE),
)
METRIC_LABELS = ("container", "pod", "namespace")
UNLIMITED_MEMORY_BYTES = 9223372036854771712  # cgroup v1 memory.limit_in_bytes when no limit is set


def container_stats(rt: Runtime, c: Container, now_ns: int) -> cri.ContainerStats:
    cfg = c.config
    stats = cri.ContainerStats()
    attrs = stats.attributes
    attrs.id = c.id
    attrs.metadata.CopyFrom(cfg.metadata)
    attrs.labels.update(cfg.labels)
    attrs.annotations.update(cfg.annotations)
    stats.writable_layer.fs_id.mountpoint = str(rt.image_fs_dir)
    writable = rt.writable_bytes(c)
    stats.writable_layer.used_bytes.value = writable
    stats.writable_layer.inodes_used.value = 1 if writable else 0
    process = rt.processes.get(c.id)
    if process is None:
        return stats
    stats.cpu.timestamp = now_ns
    stats.cpu.usage_core_nano_seconds.value = process.cpu_usage_core_ns(now_ns)
    stats.cpu.usage_nano_cores.value = process.behaviour.cpu_millicores * 1_000_000
    memory = process.memory_bytes(now_ns)
    limit = c.resources.memory_limit_in_bytes
    stats.memory.timestamp = now_ns
    stats.memory.working_set_bytes.value = memory
    stats.memory.usage_bytes.value = memory
    stats.memory.rss_bytes.value = memory
    stats.memory.page_faults.value = memory // 4096
    stats.memory.major_page_faults.value = 0
    # without a limit the cgroup's is the kernel's page-counter maximum, as containerd reports it
    stats.memory.available_bytes.value = max(0, (limit if limit > 0 else UNLIMITED_MEMORY_BYTES) - memory)
    return stats


async def stats_of_container(rt: Runtime, req: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.get(req.container_id)
    if c.id not in rt.processes:  # containerd 1.6: no task, no metrics (ListContainerStats still lists it)
        raise KubeharnessError("unexpected metrics response: []")
    return cri.ContainerStatsResponse(stats=container_stats(rt, c, rt.clock.now_ns()))


def _labels_match(labels: object, selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())  # type: ignore[attr-defined]


async def list_container_stats(rt: Runtime, req: cri.ListContainerStatsRequest) -> cri.ListContainerStatsResponse:
    flt = req.filter
    selector = dict(flt.label_selector)
    now = rt.clock.now_ns()
    resp = cri.ListContainerStatsResponse()
    sandbox_id = ""
    if flt.pod_sandbox_id:
        sb = rt.sandboxes.find(flt.pod_sandbox_id, strict=False)
        if sb is None:
            return resp  # an unknown or ambiguous sandbox id matches nothing
        sandbox_id = sb.id
    if flt.id:
        candidates = [rt.containers.find(flt.id, strict=False)]
    elif sandbox_id:
        candidates = list(rt.containers_of(sandbox_id))
    else:
        candidates = list(rt.containers)
    for c in candidates:
        if c is None:
            continue
        if sandbox_id and c.sandbox_id != sandbox_id:
            continue
        if not _labels_match(c.config.labels, selector):
            continue
        resp.stats.append(container_stats(rt, c, now))
    return resp


def sandbox_stats(rt: Runtime, sb: Sandbox, now_ns: int) -> cri.PodSandboxStats:
    cfg = sb.config
    stats = cri.PodSandboxStats()
    attrs = stats.attributes
    attrs.id = sb.id
    attrs.metadata.CopyFrom(cfg.metadata)
    attrs.labels.update(cfg.labels)
    attrs.annotations.update(cfg.annotations)
    linux = stats.linux
    containers = [container_stats(rt, c, now_ns) for c in rt.containers_of(sb.id)]
    linux.containers.extend(containers)
    linux.cpu.timestamp = now_ns
    linux.cpu.usage_core_nano_seconds.value = sum(s.cpu.usage_core_nano_seconds.value for s in containers)
    linux.cpu.usage_nano_cores.value = sum(s.cpu.usage_nano_cores.value for s in containers)
    linux.memory.timestamp = now_ns
    pause = PAUSE_MEMORY_BYTES if sb.ready else 0
    linux.memory.working_set_bytes.value = pause + sum(s.memory.working_set_bytes.value for s in containers)
    linux.memory.usage_bytes.value = linux.memory.working_set_bytes.value
    linux.process.timestamp = now_ns
    linux.process.process_count.value = (1 if sb.ready else 0) + sum(1 for s in containers if s.cpu.timestamp)
    linux.network.timestamp = now_ns
    if not sb.host_network:
        linux.network.default_interface.name = "eth0"
        linux.network.default_interface.rx_bytes.value = 0
        linux.network.default_interface.tx_bytes.value = 0
    return stats


async def stats_of_sandbox(rt: Runtime, req: cri.PodSandboxStatsRequest) -> cri.PodSandboxStatsResponse:
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.get(req.pod_sandbox_id)
    _require_cgroup(sb)
    return cri.PodSandboxStatsResponse(stats=sandbox_stats(rt, sb, rt.clock.now_ns()))


def _require_cgroup(sb: Sandbox) -> None:
    """containerd reads a sandbox's metrics from its cgroup: without ``cgroup_parent`` there is none."""
    if not sb.config.linux.cgroup_parent:
        raise KubeharnessError(
            f"failed getting metrics for sandbox {sb.id}: failed to get cgroup metrics for sandbox {sb.id} "
            "because cgroupPath is empty"
        )


async def list_sandbox_stats(rt: Runtime, req: cri.ListPodSandboxStatsRequest) -> cri.ListPodSandboxStatsResponse:
    flt = req.filter
    selector = dict(flt.label_selector)
    now = rt.clock.now_ns()
    resp = cri.ListPodSandboxStatsResponse()
    candidates = [rt.sandboxes.find(flt.id, strict=False)] if flt.id else list(rt.sandboxes)
    for sb in candidates:
        if sb is None or not _labels_match(sb.config.labels, selector):
            continue
        _require_cgroup(sb)  # as in containerd 1.6, one such sandbox fails the whole list
        resp.stats.append(sandbox_stats(rt, sb, now))
    return resp


async def list_metric_descriptors(
    rt: Runtime, req: cri.ListMetricDescriptorsRequest
) -> cri.ListMetricDescriptorsResponse:
    resp = cri.ListMetricDescriptorsResponse()
    for name, help_text, _ in METRICS:
        resp.descriptors.add(name=name, help=help_text, label_keys=METRIC_LABELS)
    return resp


async def list_sandbox_metrics(
    rt: Runtime, req: cri.ListPodSandboxMetricsRequest
) -> cri.ListPodSandboxMetricsResponse:
    now = rt.clock.now_ns()
    resp = cri.ListPodSandboxMetricsResponse()
    for sb in rt.sandboxes:
        meta = sb.config.metadata
        entry = resp.pod_metrics.add(pod_sandbox_id=sb.id)
        for c in rt.containers_of(sb.id):
            s = container_stats(rt, c, now)
            values = (
                s.cpu.usage_core_nano_seconds.value // 1_000_000_000,
                s.memory.working_set_bytes.value,
                s.writable_layer.used_bytes.value,
            )
            cm = entry.container_metrics.add(container_id=c.id)
            for (name, _, kind), value in zip(METRICS, values, strict=True):
                metric = cm.metrics.add(
                    name=name,
                    timestamp=now,
                    metric_type=kind,
                    label_values=(c.config.metadata.name, meta.name, meta.namespace),
                )
                metric.value.value = value
    return resp
