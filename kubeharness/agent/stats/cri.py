"""The pods' part of the Summary, from the runtime's stats, as kubelet's CRI stats provider builds it.

One :func:`scrape` asks the runtime five things (ListPodSandbox, ListContainers, ListContainerStats,
ListPodSandboxStats where the runtime has it, ImageFsInfo); :func:`pod_stats` turns that into
:class:`~kubeharness.agent.stats.types.PodStats`, whichever provider fills the node's part:

- Pods: one per pod UID, its ready sandbox (else its newest one), as kubelet's ``removeTerminatedPods``;
  ``startTime`` is the sandbox's creation. Containers: the running ones only (kubelet's
  ``removeTerminatedContainers``), ``startTime`` their creation.
- A container's cpu and memory are the runtime's ContainerStats; ``usageNanoCores`` the runtime's, or, where it
  gives none, the rate since the previous scrape (:class:`CpuRates`). Its ``rootfs`` is the writable layer
  (used bytes and inodes) on the container filesystem's capacity; its ``logs`` are the files under
  ``<podLogsDir>/<namespace>_<name>_<uid>/<container>/`` measured by the agent (kubelet measures them itself:
  the CRI has no log figures), blocks in use times 512 and one inode per entry, as ``du``.
- A pod's cpu, memory and process count come from its PodSandboxStats where the runtime reports them, else
  the sum of its containers' (no process count). ``ephemeral-storage`` is its running containers' writable
  layers plus its whole log directory (kubelet's ``calcEphemeralStorage`` without volumes: those arrive with
  the volumes issue).
- A figure's time is the runtime's timestamp, or the scrape's when the runtime gives none (containerd 1.6
  stamps no writable layer; kubelet then prints 1970).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.stats.types import (
    ContainerStats,
    CpuStats,
    FsStats,
    MemoryStats,
    PodReference,
    PodStats,
    ProcessStats,
)
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)

DU_BLOCK_BYTES = 512  # st_blocks' unit


@dataclass(frozen=True)
class RuntimeScrape:
    """What the runtime said, at ``time_ns``."""

    time_ns: int
    sandboxes: tuple[api.PodSandbox, ...]
    containers: tuple[api.Container, ...]
    container_stats: tuple[api.ContainerStats, ...]
    sandbox_stats: tuple[api.PodSandboxStats, ...] | None  # None: the runtime gives none
    image_fs: api.ImageFsInfoResponse

    def image_bytes(self) -> int:
        return sum(fs.used_bytes.value for fs in self.image_fs.image_filesystems)

    def image_inodes(self) -> int:
        return sum(fs.inodes_used.value for fs in self.image_fs.image_filesystems)

    def writable_bytes(self) -> int:
        """Every container's writable layer, running or not: the bytes stay on disk until it is removed."""
        if self.image_fs.container_filesystems:
            return sum(fs.used_bytes.value for fs in self.image_fs.container_filesystems)
        return sum(s.writable_layer.used_bytes.value for s in self.container_stats)

    def writable_inodes(self) -> int:
        if self.image_fs.container_filesystems:
            return sum(fs.inodes_used.value for fs in self.image_fs.container_filesystems)
        return sum(s.writable_layer.inodes_used.value for s in self.container_stats)

    def image_mountpoint(self) -> str:
        for fs in self.image_fs.image_filesystems:
            if fs.fs_id.mountpoint:
                return str(fs.fs_id.mountpoint)
        return ""


async def scrape(client: RuntimeClient, now_ns: int) -> RuntimeScrape:
    """Ask the runtime for everything a Summary needs. ListPodSandboxStats is optional: a runtime without it
    (UNIMPLEMENTED), or one that refuses a sandbox without a cgroup (containerd 1.6), leaves the pods' own
    figures to the sum of their containers'."""
    sandboxes = await client.list_sandboxes()
    containers = await client.list_containers()
    container_stats = await client.list_container_stats()
    sandbox_stats: tuple[api.PodSandboxStats, ...] | None
    try:
        sandbox_stats = tuple(await client.list_sandbox_stats())
    except grpc.aio.AioRpcError as err:
        if err.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN):
            raise
        log.debug("no sandbox stats from the runtime (%s: %s)", err.code().name, err.details())
        sandbox_stats = None
    image_fs = await client.image_fs_info()
    return RuntimeScrape(now_ns, tuple(sandboxes), tuple(containers), tuple(container_stats), sandbox_stats,
                         image_fs)


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) under ``path`` as ``du`` counts them: allocated blocks, every entry once (the directory
    itself too); (0, 0) when it does not exist. Files that vanish meanwhile (a rotation) are skipped."""
    total_bytes = total_inodes = 0
    stack = [path]
    while stack:
        here = stack.pop()
        try:
            st = os.lstat(here)
        except OSError:
            continue
        total_bytes += st.st_blocks * DU_BLOCK_BYTES
        total_inodes += 1
        if os.path.isdir(here) and not os.path.islink(here):
            with contextlib.suppress(OSError), os.scandir(here) as entries:
                stack.extend(entry.path for entry in entries)
    return total_bytes, total_inodes


class CpuRates:
    """``usageNanoCores`` from two cumulative readings, for figures the source gives only as a total."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}  # key -> (time_ns, usage_core_ns)

    def rate(self, key: str, time_ns: int, usage_core_ns: int) -> int | None:
        previous = self._last.get(key)
        self._last[key] = (time_ns, usage_core_ns)
        if previous is None or time_ns <= previous[0] or usage_core_ns < previous[1]:
            return None
        return (usage_core_ns - previous[1]) * 1_000_000_000 // (time_ns - previous[0])

    def forget_except(self, keys: Iterable[str]) -> None:
        keep = set(keys)
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


def _value(message: api.UInt64Value, present: bool) -> int | None:
    return int(message.value) if present else None


def cpu_of(usage: api.CpuUsage, fallback_ns: int, rates: CpuRates, key: str) -> CpuStats | None:
    if not usage.HasField("usage_core_nano_seconds"):
        return None
    time_ns = usage.timestamp or fallback_ns
    total = int(usage.usage_core_nano_seconds.value)
    nano_cores = int(usage.usage_nano_cores.value) if usage.HasField("usage_nano_cores") else None
    measured = rates.rate(key, time_ns, total)
    return CpuStats(time_ns, nano_cores if nano_cores is not None else measured, total)


def memory_of(usage: api.MemoryUsage, fallback_ns: int) -> MemoryStats | None:
    if not usage.HasField("working_set_bytes"):
        return None
    return MemoryStats(
        usage.timestamp or fallback_ns,
        available_bytes=_value(usage.available_bytes, usage.HasField("available_bytes")),
        usage_bytes=_value(usage.usage_bytes, usage.HasField("usage_bytes")),
        working_set_bytes=int(usage.working_set_bytes.value),
        rss_bytes=_value(usage.rss_bytes, usage.HasField("rss_bytes")),
        page_faults=_value(usage.page_faults, usage.HasField("page_faults")),
        major_page_faults=_value(usage.major_page_faults, usage.HasField("major_page_faults")))


def on_device(time_ns: int, device: FsStats | None, used_bytes: int, inodes_used: int) -> FsStats:
    """Usage on a filesystem: what is used from the caller, capacity and what is free from the device."""
    return FsStats(time_ns, available_bytes=device.available_bytes if device else None,
                   capacity_bytes=device.capacity_bytes if device else None, used_bytes=used_bytes,
                   inodes_free=device.inodes_free if device else None, inodes=device.inodes if device else None,
                   inodes_used=inodes_used)


def pod_log_dir(pod_logs_dir: str, meta: api.PodSandboxMetadata) -> str:
    return os.path.join(pod_logs_dir, f"{meta.namespace}_{meta.name}_{meta.uid}")


def _sum_or_none(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def pod_stats(found: RuntimeScrape, pod_logs_dir: str, rates: CpuRates, node_fs: FsStats | None,
              container_fs: FsStats | None) -> tuple[PodStats, ...]:
    """The pods' stats from one scrape; ``node_fs`` and ``container_fs`` give the logs' and the writable
    layers' filesystems their capacity."""
    now = found.time_ns
    chosen: dict[str, api.PodSandbox] = {}
    for sb in found.sandboxes:
        held = chosen.get(sb.metadata.uid)
        ready = sb.state == api.SANDBOX_READY
        if held is None or (ready, sb.created_at) > (held.state == api.SANDBOX_READY, held.created_at):
            chosen[sb.metadata.uid] = sb
    running = {c.id: c for c in found.containers if c.state == api.CONTAINER_RUNNING}
    by_sandbox: dict[str, list[tuple[api.Container, api.ContainerStats]]] = {}
    for stats in found.container_stats:
        c = running.get(stats.attributes.id)
        if c is not None:
            by_sandbox.setdefault(c.pod_sandbox_id, []).append((c, stats))
    sandbox_stats = {s.attributes.id: s for s in found.sandbox_stats or ()}
    pods = []
    for sb in sorted(chosen.values(), key=lambda s: (s.metadata.namespace, s.metadata.name)):
        log_dir = pod_log_dir(pod_logs_dir, sb.metadata)
        containers = []
        for c, stats in sorted(by_sandbox.get(sb.id, []), key=lambda pair: pair[0].metadata.name):
            logs_bytes, logs_inodes = disk_usage(os.path.join(log_dir, c.metadata.name))
            layer = stats.writable_layer
            containers.append(ContainerStats(
                name=c.metadata.name, start_time_ns=c.created_at,
                cpu=cpu_of(stats.cpu, now, rates, c.id), memory=memory_of(stats.memory, now),
                rootfs=on_device(layer.timestamp or now, container_fs, int(layer.used_bytes.value),
                                 int(layer.inodes_used.value)),
                logs=on_device(now, node_fs, logs_bytes, logs_inodes)))
        own = sandbox_stats.get(sb.id)
        cpu: CpuStats | None
        memory: MemoryStats | None
        process: ProcessStats | None = None
        if own is not None and own.HasField("linux"):
            cpu = cpu_of(own.linux.cpu, now, rates, sb.id)
            memory = memory_of(own.linux.memory, now)
            if own.linux.HasField("process") and own.linux.process.HasField("process_count"):
                process = ProcessStats(int(own.linux.process.process_count.value))
        else:
            total = _sum_or_none([s.cpu.usage_core_nano_seconds for s in containers if s.cpu])
            cpu = CpuStats(now, _sum_or_none([s.cpu.usage_nano_cores for s in containers if s.cpu]),
                           total) if total is not None else None
            working = _sum_or_none([s.memory.working_set_bytes for s in containers if s.memory])
            memory = MemoryStats(now, working_set_bytes=working,
                                 usage_bytes=_sum_or_none([s.memory.usage_bytes for s in containers if s.memory]),
                                 rss_bytes=_sum_or_none([s.memory.rss_bytes for s in containers if s.memory])
                                 ) if working is not None else None
        pod_logs_bytes, pod_logs_inodes = disk_usage(log_dir)
        ephemeral = on_device(now, node_fs,
                              sum(s.rootfs.used_bytes or 0 for s in containers if s.rootfs) + pod_logs_bytes,
                              sum(s.rootfs.inodes_used or 0 for s in containers if s.rootfs) + pod_logs_inodes)
        meta = sb.metadata
        pods.append(PodStats(PodReference(meta.name, meta.namespace, meta.uid), sb.created_at,
                             containers=tuple(containers), cpu=cpu, memory=memory, ephemeral_storage=ephemeral,
                             process_stats=process))
    rates.forget_except([*(c.id for c in running.values()), *(sb.id for sb in chosen.values()), "node"])
    return tuple(pods)
