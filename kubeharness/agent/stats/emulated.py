"""An emulated node's stats: the configured capacity (``kubeharnessNodeCapacity``, our extension) minus what the
runtime's stats say the pods use, so a container that allocates memory on the emulator's clock drives
``memory.available`` down exactly as its behaviour says.

What each node figure is made of (the pods' part is :mod:`kubeharness.agent.stats.cri`'s):

- memory: ``workingSetBytes`` (and ``usageBytes``) is the sum of the sandboxes' working sets from
  ListPodSandboxStats (their containers plus the pause process), or of the running containers' where the runtime
  gives no sandbox stats; ``availableBytes`` is the configured memory minus that, never below 0.
- cpu: ``usageNanoCores`` is the pods' sum; ``usageCoreNanoSeconds`` the running containers' totals plus
  what containers gone since the provider started had used (so the node's counter never goes back).
- fs (nodefs): capacity ``ephemeralStorage`` and ``inodes``; used is the pod log directory (``podLogsDir``, as
  ``du``) plus, when the image filesystem is the same disk (no ``imageFs`` configured), the images and the
  writable layers of every container, running or not.
- runtime.imageFs and containerFs: used is ImageFsInfo's image bytes and inodes plus the writable layers
  (the emulator's ImageFsInfo counts images only); capacity and what is free are those of the nodefs disk,
  or of ``imageFs``/``imageFsInodes`` when configured (a disk of its own).
- rlimit: ``maxpid`` the configured ``pids``; ``curproc`` the sandboxes' process counts (pause and the
  container processes), or the ready sandboxes plus the running containers without sandbox stats.
- startTime: when the provider was made, on the agent's clock.
"""

from __future__ import annotations

from kubeharness.agent.config.kubelet import NodeCapacity
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.stats.cri import CpuRates, RuntimeScrape, disk_usage, on_device, pod_stats, scrape
from kubeharness.agent.stats.types import CpuStats, FsStats, MemoryStats, NodeStats, PodStats, RlimitStats, Summary
from kubeharness.clock import Clock
from kubeharness.wire.cri import api_pb2 as api


def _fs(time_ns: int, capacity: int, used: int, inodes: int, inodes_used: int) -> FsStats:
    return FsStats(time_ns, available_bytes=max(0, capacity - used), capacity_bytes=capacity, used_bytes=used,
                   inodes_free=max(0, inodes - inodes_used), inodes=inodes, inodes_used=inodes_used)


class EmulatedStats:
    """The :class:`~kubeharness.agent.stats.types.StatsProvider` of an emulated node."""

    def __init__(self, node_name: str, capacity: NodeCapacity, client: RuntimeClient, clock: Clock,
                 pod_logs_dir: str) -> None:
        self.node_name = node_name
        self.capacity = capacity
        self.client = client
        self.clock = clock
        self.pod_logs_dir = pod_logs_dir
        self.start_ns = clock.now_ns()
        self._rates = CpuRates()
        self._cpu_last: dict[str, int] = {}  # running container id -> its last usageCoreNanoSeconds
        self._cpu_gone_ns = 0  # what containers no longer running had used

    def machine_capacity(self) -> dict[str, int]:
        """The node's capacity as resource -> amount (CPU in millicores), for the Node object."""
        c = self.capacity
        return {"cpu": c.cpu_millicores, "memory": c.memory_bytes, "ephemeral-storage": c.ephemeral_storage_bytes,
                "hugepages-1Gi": 0, "hugepages-2Mi": 0}

    async def summary(self) -> Summary:
        found = await scrape(self.client, self.clock.now_ns())
        return self.from_scrape(found)

    def from_scrape(self, found: RuntimeScrape) -> Summary:
        """The Summary from one scrape of the runtime (a step apart from the I/O, for tests)."""
        now, cap = found.time_ns, self.capacity
        logs_bytes, logs_inodes = disk_usage(self.pod_logs_dir)
        runtime_bytes = found.image_bytes() + found.writable_bytes()
        runtime_inodes = found.image_inodes() + found.writable_inodes()
        shared = cap.image_fs_bytes is None
        node_fs = _fs(now, cap.ephemeral_storage_bytes, logs_bytes + (runtime_bytes if shared else 0),
                      cap.inodes, logs_inodes + (runtime_inodes if shared else 0))
        if shared:
            image_fs = on_device(now, node_fs, runtime_bytes, runtime_inodes)
        else:
            image_fs = _fs(now, cap.image_fs_bytes or 0, runtime_bytes, cap.image_fs_inodes or cap.inodes,
                           runtime_inodes)
        pods = pod_stats(found, self.pod_logs_dir, self._rates, node_fs, image_fs)
        running = [c for pod in pods for c in pod.containers]
        if found.sandbox_stats is not None:
            working = sum(s.linux.memory.working_set_bytes.value for s in found.sandbox_stats)
            processes = sum(s.linux.process.process_count.value for s in found.sandbox_stats)
        else:
            working = sum(c.memory.working_set_bytes or 0 for c in running if c.memory)
            processes = len(running) + sum(1 for sb in found.sandboxes if sb.state == api.SANDBOX_READY)
        memory = MemoryStats(now, available_bytes=max(0, cap.memory_bytes - working), usage_bytes=working,
                             working_set_bytes=working)
        return Summary(NodeStats(self.node_name, self.start_ns, cpu=self._node_cpu(now, pods), memory=memory,
                                 fs=node_fs, image_fs=image_fs, container_fs=image_fs,
                                 rlimit=RlimitStats(now, max_pid=cap.pids, num_of_running_processes=processes)),
                       pods)

    def _node_cpu(self, now_ns: int, pods: tuple[PodStats, ...]) -> CpuStats:
        current: dict[str, int] = {}
        nano_cores = 0
        for pod in pods:
            for c in pod.containers:
                if c.cpu is not None and c.cpu.usage_core_nano_seconds is not None:
                    current[f"{pod.pod_ref.uid}/{c.name}/{c.start_time_ns}"] = c.cpu.usage_core_nano_seconds
                    nano_cores += c.cpu.usage_nano_cores or 0
        for key, used in self._cpu_last.items():
            if key not in current:
                self._cpu_gone_ns += used
        self._cpu_last = current
        return CpuStats(now_ns, usage_nano_cores=nano_cores,
                        usage_core_nano_seconds=self._cpu_gone_ns + sum(current.values()))
