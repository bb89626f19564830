"""Rankers: which pod to evict first, as kubelet's ``eviction/helpers.go`` orders them.

Each comparison is a plain function ``cmp(a, b) -> int`` (negative: ``a`` goes first); :func:`ordered_by`
composes them, the first that tells two pods apart decides. Per resource (kubelet's ``rankMemoryPressure``,
``rankDiskPressureFunc``, ``rankPIDPressure``):

- memory: pods whose working set exceeds their memory request first, then lower priority first, then the
  larger working set above the request first;
- disk (bytes or inodes): likewise with the ephemeral-storage usage of what the filesystem under pressure
  holds (the containers' writable layers and logs and the pod's local volumes, or a subset with a dedicated
  image filesystem) and the ephemeral-storage request (kubelet subtracts that request for inodes too);
- PIDs: lower priority first, then the larger process count first.

A pod without stats goes first in every comparison (kubelet: "prioritize evicting the pod for which no stats
were found"). Sorting is stable, so pods that tie keep the order they came in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from kubeharness.agent.eviction.signals import (
    EPHEMERAL_STORAGE,
    IMAGEFS_AVAILABLE,
    IMAGEFS_INODES_FREE,
    INODES,
    MEMORY,
    MEMORY_AVAILABLE,
    NODEFS_AVAILABLE,
    NODEFS_INODES_FREE,
    PID_AVAILABLE,
)
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.pod.qos import pod_requests
from kubeharness.agent.stats.types import FsStats, PodStats

StatsFunc = Callable[[Pod], PodStats | None]
Cmp = Callable[[Pod, Pod], int]
Ranker = Callable[[Sequence[Pod], StatsFunc], list[Pod]]

# what a disk ranker measures (kubelet's fsStatsType)
ROOT, LOGS, LOCAL_VOLUMES, IMAGES = "root", "logs", "localVolumeSource", "images"


def _cmp_bool(a: bool, b: bool) -> int:
    """True before False."""
    return 0 if a == b else (-1 if a else 1)


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def ordered_by(*cmps: Cmp) -> Callable[[Sequence[Pod]], list[Pod]]:
    def compare(a: Pod, b: Pod) -> int:
        for cmp in cmps:
            result = cmp(a, b)
            if result:
                return result
        return 0

    return lambda pods: sorted(pods, key=functools.cmp_to_key(compare))


def priority(a: Pod, b: Pod) -> int:
    """Lower priority first."""
    return _sign(a.spec.priority - b.spec.priority)


def _by_stats(stats: StatsFunc, measure: Callable[[Pod, PodStats], int], order: Callable[[int, int], int]) -> Cmp:
    def cmp(a: Pod, b: Pod) -> int:
        sa, sb = stats(a), stats(b)
        if sa is None or sb is None:
            return _cmp_bool(sa is None, sb is None)
        return order(measure(a, sa), measure(b, sb))

    return cmp


def _true_first(a: int, b: int) -> int:
    return _cmp_bool(bool(a), bool(b))


def _larger_first(a: int, b: int) -> int:
    return _sign(b - a)


def memory_usage(s: PodStats) -> int:
    return (s.memory.working_set_bytes or 0) if s.memory is not None else 0


def exceed_memory_requests(stats: StatsFunc) -> Cmp:
    return _by_stats(stats, lambda pod, s: int(memory_usage(s) > pod_requests(pod).get(MEMORY, 0)), _true_first)


def memory(stats: StatsFunc) -> Cmp:
    return _by_stats(stats, lambda pod, s: memory_usage(s) - pod_requests(pod).get(MEMORY, 0), _larger_first)


def process_count(s: PodStats) -> int:
    return (s.process_stats.process_count or 0) if s.process_stats is not None else 0


def process(stats: StatsFunc) -> Cmp:
    return _by_stats(stats, lambda pod, s: process_count(s), _larger_first)


def local_volume_names(pod: Pod) -> list[str]:
    """Volumes that use the node's disk (kubelet's localVolumeNames: hostPath, emptyDir not in memory,
    gitRepo, configMap, downwardAPI)."""
    spec = pod.raw.get("spec") if isinstance(pod.raw, dict) else None
    names = []
    for volume in (spec.get("volumes") or []) if isinstance(spec, dict) else []:
        if not isinstance(volume, dict):
            continue
        empty = volume.get("emptyDir")
        if "hostPath" in volume or "gitRepo" in volume or "configMap" in volume or "downwardAPI" in volume or \
                (isinstance(empty, dict) and empty.get("medium") != "Memory"):
            names.append(str(volume.get("name", "")))
    return names


def _fs_amount(fs: FsStats | None, resource: str) -> int:
    if fs is None:
        return 0
    return (fs.inodes_used or 0) if resource == INODES else (fs.used_bytes or 0)


def disk_usage(pod: Pod, s: PodStats, measure: Sequence[str], resource: str) -> int:
    """Kubelet's podDiskUsage: bytes (``ephemeral-storage``) or ``inodes`` of what ``measure`` names."""
    total = 0
    for c in s.containers:
        if ROOT in measure:
            total += _fs_amount(c.rootfs, resource)
        if LOGS in measure:
            total += _fs_amount(c.logs, resource)
    if LOCAL_VOLUMES in measure:
        local = set(local_volume_names(pod))
        total += sum(_fs_amount(v.fs, resource) for v in s.volumes if v.name in local)
    return total


def exceed_disk_requests(stats: StatsFunc, measure: Sequence[str], resource: str) -> Cmp:
    return _by_stats(stats, lambda pod, s: int(disk_usage(pod, s, measure, resource)
                                               > pod_requests(pod).get(resource, 0)), _true_first)


def disk(stats: StatsFunc, measure: Sequence[str], resource: str) -> Cmp:
    return _by_stats(stats, lambda pod, s: disk_usage(pod, s, measure, resource)
                     - pod_requests(pod).get(EPHEMERAL_STORAGE, 0), _larger_first)


def rank_memory_pressure(pods: Sequence[Pod], stats: StatsFunc) -> list[Pod]:
    return ordered_by(exceed_memory_requests(stats), priority, memory(stats))(pods)


def rank_pid_pressure(pods: Sequence[Pod], stats: StatsFunc) -> list[Pod]:
    return ordered_by(priority, process(stats))(pods)


def rank_disk_pressure(measure: Sequence[str], resource: str) -> Ranker:
    def rank(pods: Sequence[Pod], stats: StatsFunc) -> list[Pod]:
        return ordered_by(exceed_disk_requests(stats, measure, resource), priority,
                          disk(stats, measure, resource))(pods)

    return rank


def rankers(dedicated_image_fs: bool) -> dict[str, Ranker]:
    """Kubelet's buildSignalToRankFunc (no split container filesystem): with a dedicated image filesystem,
    nodefs ranks by logs and local volumes and imagefs by writable layers; else both by everything."""
    result: dict[str, Ranker] = {MEMORY_AVAILABLE: rank_memory_pressure, PID_AVAILABLE: rank_pid_pressure}
    node: tuple[str, ...]
    image: tuple[str, ...]
    if dedicated_image_fs:
        node, image = (LOGS, LOCAL_VOLUMES), (ROOT, IMAGES)
    else:
        node = image = (IMAGES, ROOT, LOGS, LOCAL_VOLUMES)
    result[NODEFS_AVAILABLE] = rank_disk_pressure(node, EPHEMERAL_STORAGE)
    result[NODEFS_INODES_FREE] = rank_disk_pressure(node, INODES)
    result[IMAGEFS_AVAILABLE] = rank_disk_pressure(image, EPHEMERAL_STORAGE)
    result[IMAGEFS_INODES_FREE] = rank_disk_pressure(image, INODES)
    return result
