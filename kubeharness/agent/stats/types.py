"""Kubelet's Summary API (``k8s.io/kubelet/pkg/apis/stats/v1alpha1``) as plain frozen values.

Times are nanoseconds since the epoch (the CRI's unit); a figure the provider does not know is ``None`` and is
left out of the JSON, as kubelet leaves out nil pointers. :class:`StatsProvider` is what the summary endpoint,
the eviction manager and image GC read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class CpuStats:
    time_ns: int
    usage_nano_cores: int | None = None
    usage_core_nano_seconds: int | None = None


@dataclass(frozen=True)
class MemoryStats:
    time_ns: int
    available_bytes: int | None = None
    usage_bytes: int | None = None
    working_set_bytes: int | None = None
    rss_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None


@dataclass(frozen=True)
class FsStats:
    time_ns: int
    available_bytes: int | None = None
    capacity_bytes: int | None = None
    used_bytes: int | None = None
    inodes_free: int | None = None
    inodes: int | None = None
    inodes_used: int | None = None


@dataclass(frozen=True)
class RlimitStats:
    time_ns: int
    max_pid: int | None = None
    num_of_running_processes: int | None = None


@dataclass(frozen=True)
class ProcessStats:
    process_count: int | None = None


@dataclass(frozen=True)
class ContainerStats:
    name: str
    start_time_ns: int
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    rootfs: FsStats | None = None  # the writable layer
    logs: FsStats | None = None


@dataclass(frozen=True)
class VolumeStats:
    name: str
    fs: FsStats


@dataclass(frozen=True)
class PodReference:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class PodStats:
    pod_ref: PodReference
    start_time_ns: int
    containers: tuple[ContainerStats, ...] = ()
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    volumes: tuple[VolumeStats, ...] = ()
    ephemeral_storage: FsStats | None = None  # rootfs + logs + local volumes of every container
    process_stats: ProcessStats | None = None


@dataclass(frozen=True)
class NodeStats:
    node_name: str
    start_time_ns: int
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    fs: FsStats | None = None  # nodefs: the filesystem of the agent's root directory
    image_fs: FsStats | None = None  # the runtime's image filesystem (ImageFsInfo)
    container_fs: FsStats | None = None  # the writable layers' filesystem (the image filesystem unless split)
    rlimit: RlimitStats | None = None


@dataclass(frozen=True)
class Summary:
    node: NodeStats
    pods: tuple[PodStats, ...] = field(default_factory=tuple)


class StatsProvider(Protocol):
    """What fills the Summary: one implementation reads the host, one an emulated node's configured capacity."""

    async def summary(self) -> Summary: ...
