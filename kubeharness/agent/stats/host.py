"""A real node's stats: the host's memory, CPU, filesystems and PIDs, and the pods' figures from the runtime.

What each node figure is made of (the pods' part is :mod:`kubeharness.agent.stats.cri`'s):

- memory: capacity is ``MemTotal`` of ``/proc/meminfo``; ``workingSetBytes`` is kubelet's (cAdvisor's) figure
  for the root cgroup, usage minus inactive file pages: ``memory.current`` minus ``inactive_file`` of
  ``/sys/fs/cgroup/memory.stat`` where the top cgroup has them (cgroup v2 seen from inside a container),
  ``memory.usage_in_bytes`` minus ``total_inactive_file`` on cgroup v1, else (the v2 root has no
  ``memory.current``) ``MemTotal - MemFree - Inactive(file)`` from ``/proc/meminfo``, as runc reads the v2 root.
  ``availableBytes`` is capacity minus the working set, what kubelet's eviction manager compares, not
  ``MemAvailable``.
- cpu: ``usageCoreNanoSeconds`` from the first line of ``/proc/stat`` (user, nice, system, irq, softirq and
  steal ticks); ``usageNanoCores`` the rate since the previous summary.
- fs (nodefs): ``statvfs`` of the agent's root directory: capacity ``f_blocks``, available ``f_bavail``, used
  ``f_blocks - f_bfree`` (times ``f_frsize``), inodes ``f_files``, free ``f_ffree``.
- runtime.imageFs and containerFs: used bytes and inodes from ImageFsInfo; capacity, available and inodes
  from ``statvfs`` of its mountpoint (left out when that is not a directory here).
- rlimit: ``maxpid`` the smaller of ``/proc/sys/kernel/pid_max`` and ``threads-max``; ``curproc`` the
  scheduling entities of ``/proc/loadavg`` (the count after the slash), as kubelet's ``pidlimit``.
- startTime: the boot time (``btime`` of ``/proc/stat``).
"""

from __future__ import annotations

import os

from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.stats.cri import CpuRates, on_device, pod_stats, scrape
from kubeharness.agent.stats.types import CpuStats, FsStats, MemoryStats, NodeStats, RlimitStats, Summary
from kubeharness.clock import Clock

NS = 1_000_000_000


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _keyed(text: str | None, sep: str = " ") -> dict[str, int]:
    """``key value`` lines (memory.stat) or ``Key:   value kB`` lines (meminfo, values in bytes)."""
    result = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(sep)
        words = rest.split()
        if words and words[0].isdigit():
            result[key.strip()] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    return result


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    return _keyed(_read("/proc/meminfo"), ":")


def memory_working_set(info: dict[str, int], cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The root cgroup's working set (usage minus inactive file pages), as module docstring says."""
    current = _read(os.path.join(cgroup_root, "memory.current"))
    if current is not None and current.strip().isdigit():
        stat = _keyed(_read(os.path.join(cgroup_root, "memory.stat")))
        return max(0, int(current) - stat.get("inactive_file", 0))
    usage = _read(os.path.join(cgroup_root, "memory", "memory.usage_in_bytes"))
    if usage is not None and usage.strip().isdigit():
        stat = _keyed(_read(os.path.join(cgroup_root, "memory", "memory.stat")))
        return max(0, int(usage) - stat.get("total_inactive_file", 0))
    return max(0, info.get("MemTotal", 0) - info.get("MemFree", 0) - info.get("Inactive(file)", 0))


def cpu_usage_core_ns(stat: str | None) -> int | None:
    """Busy CPU time of the whole host from ``/proc/stat``."""
    for line in (stat or "").splitlines():
        if line.startswith("cpu "):
            ticks = [int(v) for v in line.split()[1:]]
            busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))
            return busy * NS // os.sysconf("SC_CLK_TCK")
    return None


def boot_time_ns(stat: str | None) -> int:
    for line in (stat or "").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * NS
    return 0


def fs_of(path: str, time_ns: int) -> FsStats | None:
    """A filesystem's figures from ``statvfs``; None when ``path`` is not there."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return FsStats(time_ns, available_bytes=st.f_bavail * st.f_frsize, capacity_bytes=st.f_blocks * st.f_frsize,
                   used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize, inodes_free=st.f_ffree, inodes=st.f_files,
                   inodes_used=st.f_files - st.f_ffree)


def rlimit(time_ns: int) -> RlimitStats:
    limits = [int(text) for text in (_read("/proc/sys/kernel/pid_max"), _read("/proc/sys/kernel/threads-max"))
              if text is not None and text.strip().isdigit()]
    loadavg = (_read("/proc/loadavg") or "").split()
    running = int(loadavg[3].split("/")[1]) if len(loadavg) > 3 and "/" in loadavg[3] else None
    return RlimitStats(time_ns, max_pid=min(limits) if limits else None, num_of_running_processes=running)


class HostStats:
    """The :class:`~kubeharness.agent.stats.types.StatsProvider` of a real node."""

    def __init__(self, node_name: str, root_dir: str, client: RuntimeClient, clock: Clock,
                 pod_logs_dir: str) -> None:
        self.node_name = node_name
        self.root_dir = root_dir
        self.client = client
        self.clock = clock
        self.pod_logs_dir = pod_logs_dir
        self._rates = CpuRates()

    def machine_capacity(self) -> dict[str, int]:
        """CPUs, memory, the root directory's filesystem and huge pages, as kubelet's machine info."""
        nodefs = fs_of(self.root_dir, 0)
        capacity = {"cpu": (os.cpu_count() or 1) * 1000, "memory": meminfo().get("MemTotal", 0),
                    "ephemeral-storage": (nodefs.capacity_bytes or 0) if nodefs else 0}
        for size_kib, name in ((1024 * 1024, "hugepages-1Gi"), (2048, "hugepages-2Mi")):
            pages = _read(f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB/nr_hugepages")
            if pages is not None and pages.strip().isdigit():
                capacity[name] = int(pages) * size_kib * 1024
        return capacity

    async def summary(self) -> Summary:
        found = await scrape(self.client, self.clock.now_ns())
        now = found.time_ns
        info = meminfo()
        total = info.get("MemTotal", 0)
        working = memory_working_set(info)
        memory = MemoryStats(now, available_bytes=max(0, total - working), usage_bytes=working,
                             working_set_bytes=working)
        stat = _read("/proc/stat")
        cpu_total = cpu_usage_core_ns(stat)
        cpu = None
        if cpu_total is not None:
            cpu = CpuStats(now, self._rates.rate("node", now, cpu_total), cpu_total)
        node_fs = fs_of(self.root_dir, now)
        mountpoint = found.image_mountpoint()
        device = fs_of(mountpoint, now) if mountpoint else None
        image_fs = on_device(now, device, found.image_bytes(), found.image_inodes())
        split = bool(found.image_fs.container_filesystems)  # writable layers reported apart (KEP 4191)
        container_fs = on_device(now, device, found.writable_bytes(), found.writable_inodes()) if split else image_fs
        pods = pod_stats(found, self.pod_logs_dir, self._rates, node_fs, container_fs)
        return Summary(NodeStats(self.node_name, boot_time_ns(stat), cpu=cpu, memory=memory, fs=node_fs,
                                 image_fs=image_fs, container_fs=container_fs, rlimit=rlimit(now)), pods)
