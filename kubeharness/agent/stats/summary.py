"""The Summary as kubelet serves it: ``/stats/summary`` (JSON, ``stats/v1alpha1`` field names) and
``/metrics/resource`` (Prometheus text, kubelet's resource metrics collector's names and labels).

JSON: fields in the order of kubelet's Go structs, a figure the provider does not know left out (kubelet's
nil pointers), times in RFC 3339 to the second (``metav1.Time``). Pods' volumes go under ``volume``
and ephemeral storage under ``ephemeral-storage``, as kubelet spells them.

Metrics: ``node_cpu_usage_seconds_total``, ``node_memory_working_set_bytes``, ``container_cpu_usage_seconds_total``,
``container_memory_working_set_bytes``, ``container_start_time_seconds`` (labels ``container``, ``namespace``,
``pod``), ``pod_cpu_usage_seconds_total``, ``pod_memory_working_set_bytes`` (``namespace``, ``pod``), and
``scrape_error`` / ``resource_scrape_error`` (1 when the summary could not be had). Families sorted by name,
label pairs by label name, usage samples stamped with their figure's time in milliseconds, help texts with the
stability level in brackets, as kubelet's registry writes them; rendered by prometheus_client from a custom
collector (:class:`ResourceCollector`), so numbers are written as it writes them (``1.0`` where Go writes ``1``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Timestamp

from kubeharness.agent.stats.types import (
    ContainerStats,
    CpuStats,
    FsStats,
    MemoryStats,
    NodeStats,
    PodStats,
    RlimitStats,
    Summary,
)

NS = 1_000_000_000


def rfc3339(time_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time_ns // NS))


def _put(out: dict[str, Any], key: str, value: int | None) -> None:
    if value is not None:
        out[key] = value


def cpu_json(s: CpuStats) -> dict[str, Any]:
    out: dict[str, Any] = {"time": rfc3339(s.time_ns)}
    _put(out, "usageNanoCores", s.usage_nano_cores)
    _put(out, "usageCoreNanoSeconds", s.usage_core_nano_seconds)
    return out


def memory_json(s: MemoryStats) -> dict[str, Any]:
    out: dict[str, Any] = {"time": rfc3339(s.time_ns)}
    for key, value in (("availableBytes", s.available_bytes), ("usageBytes", s.usage_bytes),
                       ("workingSetBytes", s.working_set_bytes), ("rssBytes", s.rss_bytes),
                       ("pageFaults", s.page_faults), ("majorPageFaults", s.major_page_faults)):
        _put(out, key, value)
    return out


def fs_json(s: FsStats) -> dict[str, Any]:
    out: dict[str, Any] = {"time": rfc3339(s.time_ns)}
    for key, value in (("availableBytes", s.available_bytes), ("capacityBytes", s.capacity_bytes),
                       ("usedBytes", s.used_bytes), ("inodesFree", s.inodes_free), ("inodes", s.inodes),
                       ("inodesUsed", s.inodes_used)):
        _put(out, key, value)
    return out


def rlimit_json(s: RlimitStats) -> dict[str, Any]:
    out: dict[str, Any] = {"time": rfc3339(s.time_ns)}
    _put(out, "maxpid", s.max_pid)
    _put(out, "curproc", s.num_of_running_processes)
    return out


def container_json(s: ContainerStats) -> dict[str, Any]:
    out: dict[str, Any] = {"name": s.name, "startTime": rfc3339(s.start_time_ns)}
    if s.cpu:
        out["cpu"] = cpu_json(s.cpu)
    if s.memory:
        out["memory"] = memory_json(s.memory)
    if s.rootfs:
        out["rootfs"] = fs_json(s.rootfs)
    if s.logs:
        out["logs"] = fs_json(s.logs)
    return out


def pod_json(s: PodStats) -> dict[str, Any]:
    out: dict[str, Any] = {
        "podRef": {"name": s.pod_ref.name, "namespace": s.pod_ref.namespace, "uid": s.pod_ref.uid},
        "startTime": rfc3339(s.start_time_ns), "containers": [container_json(c) for c in s.containers]}
    if s.cpu:
        out["cpu"] = cpu_json(s.cpu)
    if s.memory:
        out["memory"] = memory_json(s.memory)
    if s.volumes:
        out["volume"] = [{**fs_json(v.fs), "name": v.name} for v in s.volumes]
    if s.ephemeral_storage:
        out["ephemeral-storage"] = fs_json(s.ephemeral_storage)
    if s.process_stats and s.process_stats.process_count is not None:
        out["process_stats"] = {"process_count": s.process_stats.process_count}
    return out


def node_json(s: NodeStats) -> dict[str, Any]:
    out: dict[str, Any] = {"nodeName": s.node_name, "startTime": rfc3339(s.start_time_ns)}
    if s.cpu:
        out["cpu"] = cpu_json(s.cpu)
    if s.memory:
        out["memory"] = memory_json(s.memory)
    if s.fs:
        out["fs"] = fs_json(s.fs)
    runtime: dict[str, Any] = {}
    if s.image_fs:
        runtime["imageFs"] = fs_json(s.image_fs)
    if s.container_fs:
        runtime["containerFs"] = fs_json(s.container_fs)
    if runtime:
        out["runtime"] = runtime
    if s.rlimit:
        out["rlimit"] = rlimit_json(s.rlimit)
    return out


def summary_json(summary: Summary) -> dict[str, Any]:
    return {"node": node_json(summary.node), "pods": [pod_json(p) for p in summary.pods]}


# ---- /metrics/resource

Labelled = tuple[tuple[str, ...], float, int | None]  # label values, value, time in ns

# name -> (help, type, label names); help texts are kubelet's, with the stability level component-base prints
CONTAINER_LABELS = ("container", "namespace", "pod")
POD_LABELS = ("namespace", "pod")
RESOURCE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "container_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the container in core-seconds",
                                          "counter", CONTAINER_LABELS),
    "container_memory_working_set_bytes": ("[STABLE] Current working set of the container in bytes", "gauge",
                                           CONTAINER_LABELS),
    "container_start_time_seconds": ("[STABLE] Start time of the container since unix epoch in seconds", "gauge",
                                     CONTAINER_LABELS),
    "node_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the node in core-seconds", "counter",
                                     ()),
    "node_memory_working_set_bytes": ("[STABLE] Current working set of the node in bytes", "gauge", ()),
    "pod_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the pod in core-seconds", "counter",
                                    POD_LABELS),
    "pod_memory_working_set_bytes": ("[STABLE] Current working set of the pod in bytes", "gauge", POD_LABELS),
    "resource_scrape_error": ("[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
                              "gauge", ()),
    "scrape_error": ("[ALPHA] (Deprecated since 1.29.0) 1 if there was an error while getting container metrics, "
                     "0 otherwise", "gauge", ()),
}


def _stamp(time_ns: int | None) -> Timestamp | None:
    """``time_ns`` for prometheus_client, which writes ``int(float(stamp) * 1000)``: the whole milliseconds plus
    half a millisecond, so that the float's rounding cannot make it write the millisecond before."""
    if not time_ns:
        return None
    ms = time_ns // 1_000_000
    return Timestamp(ms // 1000, (ms % 1000) * 1_000_000 + 500_000)


class ResourceCollector(Collector):
    """kubelet's resource metrics collector over one summary (None: the summary failed; only the scrape errors,
    at 1). prometheus_client's way for values computed at scrape time: the endpoint gets the summary (a runtime
    call, async), then renders this with ``generate_latest``."""

    def __init__(self, summary: Summary | None) -> None:
        self.summary = summary

    def samples(self) -> dict[str, list[Labelled]]:
        samples: dict[str, list[Labelled]] = {name: [] for name in RESOURCE_METRICS}
        summary = self.summary
        error = 1.0 if summary is None else 0.0
        samples["scrape_error"].append(((), error, None))
        samples["resource_scrape_error"].append(((), error, None))
        if summary is None:
            return samples
        node = summary.node
        if node.cpu and node.cpu.usage_core_nano_seconds is not None:
            samples["node_cpu_usage_seconds_total"].append(
                ((), node.cpu.usage_core_nano_seconds / NS, node.cpu.time_ns))
        if node.memory and node.memory.working_set_bytes is not None:
            samples["node_memory_working_set_bytes"].append(((), node.memory.working_set_bytes, node.memory.time_ns))
        for pod in summary.pods:
            pod_labels = (pod.pod_ref.namespace, pod.pod_ref.name)
            for c in pod.containers:
                labels = (c.name, *pod_labels)
                if c.start_time_ns > 0:
                    samples["container_start_time_seconds"].append((labels, c.start_time_ns / NS, None))
                if c.cpu and c.cpu.usage_core_nano_seconds is not None:
                    samples["container_cpu_usage_seconds_total"].append(
                        (labels, c.cpu.usage_core_nano_seconds / NS, c.cpu.time_ns))
                if c.memory and c.memory.working_set_bytes is not None:
                    samples["container_memory_working_set_bytes"].append(
                        (labels, c.memory.working_set_bytes, c.memory.time_ns))
            if pod.cpu and pod.cpu.usage_core_nano_seconds is not None:
                samples["pod_cpu_usage_seconds_total"].append(
                    (pod_labels, pod.cpu.usage_core_nano_seconds / NS, pod.cpu.time_ns))
            if pod.memory and pod.memory.working_set_bytes is not None:
                samples["pod_memory_working_set_bytes"].append(
                    (pod_labels, pod.memory.working_set_bytes, pod.memory.time_ns))
        return samples

    def collect(self) -> Iterator[Metric]:
        for name, found in sorted(self.samples().items()):
            if not found:
                continue
            help_text, kind, label_names = RESOURCE_METRICS[name]
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=label_names)
            else:
                family = GaugeMetricFamily(name, help_text, labels=label_names)
            for labels, value, time_ns in sorted(found, key=lambda s: s[0]):
                family.add_metric(labels, value, timestamp=_stamp(time_ns))
            yield family


def resource_metrics(summary: Summary | None) -> bytes:
    """``/metrics/resource`` for ``summary``; None (the summary failed) gives only the scrape errors at 1."""
    return generate_latest(ResourceCollector(summary))
