"""The Summary as kubelet serves it: ``/stats/summary`` (JSON, ``stats/v1alpha1`` field names) and
``/metrics/resource`` (Prometheus text, kubelet's resource metrics collector's names and labels).

JSON: fields in the order of kubelet's Go structs, a figure the provider does not know left out (kubelet's
nil pointers), times in RFC 3339 to the second (``metav1.Time``). Pods' volumes go under ``volume``
and ephemeral storage under ``ephemeral-storage``, as kubelet spells them.

Metrics: ``node_cpu_usage_seconds_total``, ``node_memory_working_set_bytes``, ``container_cpu_usage_seconds_total``,
``container_memory_working_set_bytes``, ``container_start_time_seconds`` (labels ``container``, ``namespace``,
``pod``), ``pod_cpu_usage_seconds_total``, ``pod_memory_working_set_bytes`` (``namespace``, ``pod``), and
``scrape_error`` / ``resource_scrape_error`` (1 when the summary could not be had). Families sorted by name,
label pairs by label name, usage samples stamped with their figure's time in milliseconds, values written as
Go's shortest ``%g``, help texts with the stability level in brackets, all as kubelet's registry writes them.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

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

def go_float(value: float) -> str:
    """``value`` as Go's ``strconv.FormatFloat(v, 'g', -1, 64)``: the shortest digits, an exponent from 1e6."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point goes among the digits
    x = point - 1
    if x < -4 or x >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        body = f"{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    elif point <= 0:
        body = "0." + "0" * -point + text
    elif point >= len(text):
        body = text + "0" * (point - len(text))
    else:
        body = text[:point] + "." + text[point:]
    return ("-" if sign else "") + body


Sample = tuple[tuple[tuple[str, str], ...], float, int | None]  # labels, value, time in ns

# name -> (help, type); help texts are kubelet's, with the stability level component-base prints
RESOURCE_METRICS = {
    "container_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the container in core-seconds",
                                          "counter"),
    "container_memory_working_set_bytes": ("[STABLE] Current working set of the container in bytes", "gauge"),
    "container_start_time_seconds": ("[STABLE] Start time of the container since unix epoch in seconds", "gauge"),
    "node_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the node in core-seconds", "counter"),
    "node_memory_working_set_bytes": ("[STABLE] Current working set of the node in bytes", "gauge"),
    "pod_cpu_usage_seconds_total": ("[STABLE] Cumulative cpu time consumed by the pod in core-seconds", "counter"),
    "pod_memory_working_set_bytes": ("[STABLE] Current working set of the pod in bytes", "gauge"),
    "resource_scrape_error": ("[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
                              "gauge"),
    "scrape_error": ("[ALPHA] (Deprecated since 1.29.0) 1 if there was an error while getting container metrics, "
                     "0 otherwise", "gauge"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def resource_metrics(summary: Summary | None) -> str:
    """``/metrics/resource`` for ``summary``; None (the summary failed) gives only the scrape errors at 1."""
    samples: dict[str, list[Sample]] = {name: [] for name in RESOURCE_METRICS}
    error = 1.0 if summary is None else 0.0
    samples["scrape_error"].append(((), error, None))
    samples["resource_scrape_error"].append(((), error, None))
    if summary is not None:
        node = summary.node
        if node.cpu and node.cpu.usage_core_nano_seconds is not None:
            samples["node_cpu_usage_seconds_total"].append(
                ((), node.cpu.usage_core_nano_seconds / NS, node.cpu.time_ns))
        if node.memory and node.memory.working_set_bytes is not None:
            samples["node_memory_working_set_bytes"].append(((), node.memory.working_set_bytes, node.memory.time_ns))
        for pod in summary.pods:
            pod_labels: tuple[tuple[str, str], ...] = (("namespace", pod.pod_ref.namespace), ("pod", pod.pod_ref.name))
            for c in pod.containers:
                labels = (("container", c.name), *pod_labels)
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
    lines = []
    for name in sorted(samples):
        if not samples[name]:
            continue
        help_text, kind = RESOURCE_METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value, time_ns in sorted(samples[name], key=lambda s: s[0]):
            rendered = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""
            stamp = f" {time_ns // 1_000_000}" if time_ns else ""
            lines.append(f"{name}{rendered} {go_float(value)}{stamp}")
    return "\n".join(lines) + "\n"

